#!/usr/bin/env bash
# Set up the virtual environments (once) and run the whole test suite twice: against the newest
# slicer-core (.venv) and against the oldest release line matching Slicer 5.10, the oldest Slicer the
# extension supports (.venv-slicer510). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# slicer-core 5.11.0.x is Slicer 5.10's code. 5.11.0.6 is the first patch of that line whose wheel reads
# DICOM through Slicer's volumes logic (5.11.0.2 fails on the shared CT series), so it is the oldest used.
OLDEST_SLICER_CORE=5.11.0.6

setupVenv() {  # setupVenv FOLDER [EXTRA REQUIREMENT ...]
  local venv=$1
  shift
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip "setuptools>=77"
  # sam2 (extra "sam2") builds from source: no CUDA extension, and against this venv's torch, not a downloaded one.
  SAM2_BUILD_CUDA=0 "$venv/bin/python" -m pip install --quiet --no-build-isolation -e ".[test]" "$@"
}

# The real slice views (Testing/test_realviews.py) render offscreen through Mesa's EGL: no display,
# no Xvfb. Debian images usually have it; install it where they do not and we may.
if ! ldconfig -p | grep -q 'libEGL_mesa.so.0' && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q libegl1 libegl-mesa0 >/dev/null || echo "could not install libegl1/libegl-mesa0: the real-view tests may fail" >&2
fi

setupVenv .venv
echo "== tests with slicer-core $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("slicer-core"))')"
.venv/bin/python -m pytest Testing "$@"

setupVenv .venv-slicer510 "slicer-core==$OLDEST_SLICER_CORE"
echo "== tests with slicer-core $OLDEST_SLICER_CORE (Slicer 5.10)"
.venv-slicer510/bin/python -m pytest Testing "$@"
