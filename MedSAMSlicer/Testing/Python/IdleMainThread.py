"""Idle the main thread the way Slicer's does: without releasing Python's GIL.

Slicer's main thread holds the GIL while it waits in the Qt event loop
(PythonQt runs without thread support), so a worker thread gets the GIL only
when the main thread gives it up. A test that waited with time.sleep would
release the GIL and hide a poller that never yields it; these waits keep it.
"""

import ctypes
import sys

if sys.platform == "win32":
    _SLEEP = ctypes.PyDLL("kernel32").Sleep  # PyDLL: the foreign call keeps the GIL
    _SCALE = 1.0  # milliseconds
else:
    _SLEEP = ctypes.PyDLL(None).usleep
    _SCALE = 1000.0  # microseconds


def idleHoldingGil(ms: float) -> None:
    """Block the calling thread for ``ms`` milliseconds without releasing the GIL."""
    _SLEEP(int(ms * _SCALE))
