"""Deferred calls on the main thread, injected into the interaction controller. No Qt here.

The controller never sleeps and never starts a timer itself: it asks a
scheduler to call something later on the main thread. In Slicer the module
passes a scheduler built on QTimer; headless front ends and the tests pass a
ManualScheduler and advance its clock (by the real time elapsed, or by a given
amount), so debouncing and polling are deterministic and need no event loop.
"""

import heapq
import itertools
from typing import Callable, List, Optional, Protocol, Tuple


class ScheduledCall(Protocol):
    """A handle to a call made later: cancel() drops it if it has not run yet."""

    def cancel(self) -> None:
        """Do not run the call (no effect once it ran)."""


class Scheduler(Protocol):
    """Runs callables later on the main thread."""

    def callLater(self, delayMs: int, callback: Callable[[], None]) -> ScheduledCall:
        """Call ``callback()`` on the main thread after ``delayMs`` milliseconds (0: as soon as the event loop is idle)."""


class _ManualCall:
    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A Scheduler whose clock moves only when told: ``advance(ms)`` runs every call that falls due, in order.

    Calls scheduled while advancing run in the same advance when they fall due
    within it (a poll that reschedules itself runs every interval).
    """

    def __init__(self):
        self.nowMs = 0.0
        self._queue: List[Tuple[float, int, _ManualCall]] = []
        self._order = itertools.count()

    def callLater(self, delayMs: int, callback: Callable[[], None]) -> _ManualCall:
        """Queue ``callback`` to run once the clock reaches now + ``delayMs``; returns its handle."""
        call = _ManualCall(callback)
        heapq.heappush(self._queue, (self.nowMs + max(0.0, float(delayMs)), next(self._order), call))
        return call

    @property
    def pending(self) -> int:
        """Number of calls queued and not cancelled."""
        return sum(1 for _, _, call in self._queue if not call.cancelled)

    def advance(self, ms: float = 0.0) -> int:
        """Move the clock forward by ``ms`` and run every call due by then; returns how many ran."""
        target = self.nowMs + max(0.0, float(ms))
        ran = 0
        while self._queue and self._queue[0][0] <= target:
            when, _, call = heapq.heappop(self._queue)
            self.nowMs = max(self.nowMs, when)
            if not call.cancelled:
                call.cancelled = True
                call.callback()
                ran += 1
        self.nowMs = target
        return ran


class Debouncer:
    """Coalesce bursts of triggers into one call ``delayMs`` after the last trigger (a drag: one job when it pauses)."""

    def __init__(self, scheduler: Scheduler, delayMs: int, callback: Callable[[], None]):
        self.scheduler = scheduler
        self.delayMs = delayMs
        self.callback = callback
        self._call: Optional[ScheduledCall] = None

    def trigger(self) -> None:
        """(Re)start the delay: the callback runs once, ``delayMs`` after the last trigger."""
        self.cancel()
        self._call = self.scheduler.callLater(self.delayMs, self._fire)

    def cancel(self) -> None:
        """Drop a pending call."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    @property
    def pending(self) -> bool:
        """True while a call waits to run."""
        return self._call is not None

    def _fire(self) -> None:
        self._call = None
        self.callback()
