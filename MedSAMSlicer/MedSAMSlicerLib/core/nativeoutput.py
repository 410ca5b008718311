"""Keep what native libraries (ITK, HDF5, VTK) print on file descriptor 2 out of a command line's output."""

import contextlib
import os
import sys


@contextlib.contextmanager
def quietNativeStderr(enabled: bool = True):
    """Silence stderr written by native libraries (ITK, HDF5, VTK) inside the block.

    ITK's image probing and VTK's error window print to file descriptor 2
    directly; a command line must show one clear line instead. Python-level
    writes to sys.stderr are flushed before and are not affected afterwards.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    savedFd = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(savedFd, 2)
    finally:
        os.close(savedFd)
