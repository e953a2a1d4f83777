"""Time sources. Every timing decision reads a ``Clock`` so tests can inject one."""

from __future__ import annotations

import threading
import time
from typing import Callable

#: A clock is any callable returning seconds from an arbitrary, never-decreasing origin.
Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to, for tests of timing arithmetic."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._now += seconds
