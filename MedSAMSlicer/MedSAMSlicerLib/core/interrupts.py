"""Stop requests (SIGINT, SIGTERM, SIGHUP) as an exception, so that cleanup code runs; short sections that defer them.

Python turns only SIGINT into an exception by default; SIGTERM (what `kill`, a
job scheduler or a closing terminal send) ends the process at once, leaving
whatever was being written. A command line calls installStopHandlers() once:
every stop request then raises Interrupted (a KeyboardInterrupt) in the main
thread, and `finally:` blocks remove temporary files. Code that must not be cut
in two -- renaming a finished file into place, removing leftovers -- runs inside
``stopsDeferred()``: a request arriving meanwhile is raised when the block ends.

Nothing here is installed on import: inside the Slicer application the
application owns its signals. Handlers run in the main thread (Python's rule),
so deferral is meant for code that runs there (the command line's writes).
"""

import contextlib
import signal

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_deferDepth = 0
_pendingSignal = None


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by signal ``signum``; exit status 128 + signum by convention."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def installStopHandlers(signals=STOP_SIGNALS) -> None:
    """Make each of ``signals`` raise Interrupted in the main thread (call from the main thread, once)."""
    for signum in signals:
        signal.signal(signum, _onStopSignal)


def _onStopSignal(signum, frame):
    """Raise Interrupted now, or remember it when inside stopsDeferred()."""
    global _pendingSignal
    if _deferDepth:
        _pendingSignal = _pendingSignal or signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stopsDeferred():
    """Run the block to its end even if a stop request arrives; raise Interrupted for it afterwards."""
    global _deferDepth, _pendingSignal
    _deferDepth += 1
    try:
        yield
    finally:
        _deferDepth -= 1
        if _deferDepth == 0 and _pendingSignal is not None:
            signum, _pendingSignal = _pendingSignal, None
            raise Interrupted(signum)
