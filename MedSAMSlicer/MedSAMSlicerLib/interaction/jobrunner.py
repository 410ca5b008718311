"""One background job at a time, polled on the main thread, without starving the worker of the GIL. No Qt.

In Slicer the main thread holds Python's GIL while it idles in the Qt event
loop: PythonQt runs without thread support, so nothing releases the GIL between
events (CTK's ctkAbstractPythonManager::initPythonQt, Slicer 5.10). A worker
thread then runs Python only while the main thread executes Python code, and a
torch-heavy job crawls. Each poll therefore waits for the job with the GIL
released (``BackgroundJob.wait`` is a thread join with a timeout) for YIELD_MS,
returning at once when the job ends, as SimpleITK's SlicerSimpleFilters yields
the GIL from its poll. Between polls the event loop runs for POLL_INTERVAL_MS,
so the application stays responsive (it is busy at most YIELD_MS at a time).
docs/benchmarks.md measures the result against the same job on a bare thread.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..core.backgroundjob import BackgroundJob, Work
from ..core.errors import CancelledError, MedSAMError
from ..core.progress import Signal
from .scheduler import ScheduledCall, Scheduler

#: Milliseconds the event loop runs between two polls of a running job.
POLL_INTERVAL_MS = 10
#: Milliseconds each poll hands the GIL to the worker (less when the job ends sooner).
YIELD_MS = 40


@dataclass
class Task:
    """A job for the runner: ``work(progress, cancel)`` runs in the worker, ``finish(result)`` on the main thread.

    interactive: errors are shown as a dialog too (a live preview only sets
    the status line). sceneBound: the job works on the scene's nodes and is
    cancelled when the scene closes (downloads and installs are not).
    """

    title: str
    work: Work
    finish: Callable[[Any], None]
    interactive: bool = True
    sceneBound: bool = True


class JobRunner:
    """Run Tasks one at a time in a BackgroundJob and hand their results back on the main thread.

    Signals: progress(fraction, text), status(text), error(text) for errors
    to show as a dialog, busyChanged().
    """

    def __init__(self, scheduler: Scheduler, pollIntervalMs: int = POLL_INTERVAL_MS, yieldMs: int = YIELD_MS):
        self.scheduler = scheduler
        self.pollIntervalMs = pollIntervalMs
        self.yieldMs = yieldMs
        self.progress = Signal()
        self.status = Signal()
        self.error = Signal()
        self.busyChanged = Signal()
        self.task: Optional[Task] = None
        self._job: Optional[BackgroundJob] = None
        self._poll: Optional[ScheduledCall] = None

    @property
    def busy(self) -> bool:
        """True while a task runs (its finish not yet called)."""
        return self._job is not None

    def start(self, task: Task) -> bool:
        """Start ``task`` in the background; False (and a status line) when another task is still running."""
        if self.busy:
            self.status.emit(f"Busy with '{self.task.title}': wait for it or cancel it.")
            return False
        self.task = task
        self._job = BackgroundJob(task.work).start()
        self.status.emit(f"{task.title}...")
        self.progress.emit(0.0, "")
        self._poll = self.scheduler.callLater(0, self._pollJob)
        self.busyChanged.emit()
        return True

    def cancel(self, sceneBoundOnly: bool = False) -> bool:
        """Ask the running task to stop (it raises CancelledError; nothing is shown or written).

        sceneBoundOnly: cancel only a task that works on the scene's nodes (a
        closing scene never cancels a download). Returns True when a task was asked.
        """
        if not self.busy or (sceneBoundOnly and not self.task.sceneBound):
            return False
        self._job.cancel()
        self.status.emit("Cancelling...")
        return True

    def stop(self) -> None:
        """Cancel the running task and stop polling it: its result is never handed back (cleanup, Reload)."""
        if self._job is not None:
            self._job.cancel()
        if self._poll is not None:
            self._poll.cancel()
        self._job = self._poll = self.task = None

    def _pollJob(self) -> None:
        """Main thread: hand the GIL to the worker for a while, report progress, finish the task when done."""
        self._poll = None
        job = self._job
        if job is None:
            return
        job.wait(self.yieldMs / 1000.0)  # a join with a timeout: the GIL is released meanwhile
        fraction, text = job.progress
        self.progress.emit(fraction, text)
        if text:
            self.status.emit(text)
        if not job.done:
            self._poll = self.scheduler.callLater(self.pollIntervalMs, self._pollJob)
            return
        task = self.task
        self._job = self.task = None
        self.busyChanged.emit()
        self._finish(task, job)

    def _finish(self, task: Task, job: BackgroundJob) -> None:
        try:
            task.finish(job.result())
        except MedSAMError as error:  # CancelledError included: its message says nothing was written
            self.status.emit(str(error))
            if task.interactive and not isinstance(error, CancelledError):
                self.error.emit(str(error))
        except Exception as error:  # a bug, not a user error: keep the traceback in the log
            logging.exception("MedSAMSlicer: %s failed", task.title)
            self.status.emit(f"{task.title} failed: {error}")
