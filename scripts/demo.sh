#!/usr/bin/env bash
# Set up .venv (once) with the project, then run the headless end-to-end demo into out/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[headless]"
exec .venv/bin/medsam-slicer demo --out out "$@"
