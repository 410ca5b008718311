"""A Qt-free background job: ``work(progress, cancel)`` runs in a thread, the caller polls it.

The widget polls from a QTimer on the main thread, so everything it does with
the progress, the result or the error (widgets, MRML) happens there; the
worker itself only computes and stores. No Qt, no slicer.
"""

import threading
from typing import Any, Callable, Tuple

from .progress import CancelToken

Work = Callable[[Callable[[float, str], None], CancelToken], Any]


class BackgroundJob:
    """Run ``work(progress, cancel)`` in a daemon thread; poll ``done``, ``progress``, then ``result()``.

    work: called with a progress callback (fraction in [0, 1], text) and a
    CancelToken it should check; its return value is the result, an exception
    it raises is re-raised by result() in the polling thread.
    """

    def __init__(self, work: Work, name: str = "MedSAMSlicer worker"):
        self.cancelToken = CancelToken()
        self._work = work
        self._progress: Tuple[float, str] = (0.0, "")
        self._result = None
        self._error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "BackgroundJob":
        """Start the worker thread; returns self."""
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop at its next check (it then raises CancelledError)."""
        self.cancelToken.cancel()

    @property
    def done(self) -> bool:
        """True once the worker has returned or raised."""
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def progress(self) -> Tuple[float, str]:
        """The latest (fraction, text) the work reported."""
        return self._progress

    def wait(self, timeout: float = None) -> bool:
        """Block until the worker finishes or ``timeout`` seconds pass; True when done (console and tests only)."""
        self._thread.join(timeout)
        return self.done

    def result(self):
        """The work's return value; re-raises the work's exception. RuntimeError while still running."""
        if not self.done:
            raise RuntimeError("The background job is still running: poll `done` first.")
        if self._error is not None:
            raise self._error
        return self._result

    def _report(self, fraction: float, text: str = "") -> None:
        self._progress = (float(fraction), text)

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self.cancelToken)
        except BaseException as error:  # handed to the polling thread by result()
            self._error = error
