"""Qt-free progress reporting and cancellation shared by every long operation."""

import threading
from typing import Callable, Optional

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]
"""Signature of progress callbacks: (fraction done in [0, 1], short status text)."""


class Signal:
    """A minimal Qt-free signal: connect callables, emit arguments to all of them."""

    def __init__(self):
        self._slots = []

    def connect(self, slot: Callable) -> None:
        """Call ``slot(*args)`` on every future emit."""
        self._slots.append(slot)

    def disconnect(self, slot: Callable) -> None:
        """Stop calling ``slot``; unknown slots are ignored."""
        if slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args) -> None:
        """Call every connected slot with ``args``, in connection order."""
        for slot in list(self._slots):
            slot(*args)


class CancelToken:
    """A thread-safe flag a caller sets to stop a long operation at its next check."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the operation to stop as soon as it next checks."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._event.is_set()

    def raiseIfCancelled(self) -> None:
        """Raise CancelledError if cancel() was called."""
        if self._event.is_set():
            raise CancelledError("Cancelled by the user; nothing was written.")


def reportProgress(callback: Optional[ProgressCallback], fraction: float, text: str = "") -> None:
    """Call ``callback(fraction, text)`` if a callback was given; clamp fraction to [0, 1]."""
    if callback is not None:
        callback(min(1.0, max(0.0, float(fraction))), text)
