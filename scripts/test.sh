#!/usr/bin/env bash
# Set up .venv (once) with the project and its test dependencies, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=77"
# sam2 (extra "sam2") builds from source: no CUDA extension, and against this venv's torch, not a downloaded one.
SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test]"
exec .venv/bin/python -m pytest Testing "$@"
