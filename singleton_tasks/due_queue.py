"""The beat leader's queue of entries by the time each is next due.

Replaces what Celery's ``Scheduler.tick`` does per call (compare the whole schedule with a copy,
then look at one entry, and wake early): entries are ordered once, on a heap keyed by the
monotonic time at which each is next due; a call takes every entry due by then, and the leader
sleeps exactly until the next. Whether an entry is due is still the entry's own answer
(``is_due``: Celery's ``schedstate(is_due, next)``), asked when its time comes, so every schedule
type and every host's entry class (a database row that was disabled, a one-off that ran) decides
for itself. Time comes from an injectable monotonic clock.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

from .clock import Clock, monotonic

#: The longest an entry is left unasked, whatever it said: a schedule's ``next`` is an estimate
#: (a crontab across a DST change, a database row edited meanwhile), so it is asked again.
MAX_WAIT = 300.0
#: An entry that says it is not due, with no time or less than this, is asked again after this.
MIN_WAIT = 0.001

IsDue = Callable[[Any], tuple[bool, float]]


class DueQueue:
    """Entries ordered by when they are next due; ``is_due(entry)`` -> ``(due now, seconds to next)``."""

    def __init__(self, entries: dict[str, Any], is_due: IsDue, clock: Clock = monotonic,
                 max_wait: float = MAX_WAIT) -> None:
        self._is_due = is_due
        self._clock = clock
        self._max_wait = max_wait
        self._order = itertools.count()  # ties are broken by insertion, never by comparing entries
        now = clock()
        self._heap: list[tuple[float, int, Any]] = [(now, next(self._order), e) for e in entries.values()]
        heapq.heapify(self._heap)  # every entry is asked on the first take: a new leader checks them all

    def __len__(self) -> int:
        return len(self._heap)

    def take_due(self, limit: int) -> list[Any]:
        """Up to ``limit`` entries due now, the longest-waiting first. An entry asked and found not
        due goes back at the time it gave."""
        now = self._clock()
        due: list[Any] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(due) < limit:
            _, _, entry = heapq.heappop(heap)
            is_due, wait = self._is_due(entry)
            if is_due:
                due.append(entry)
            else:  # never at once: an entry asked again at the same instant would loop here
                self.push(entry, max(wait or 0.0, MIN_WAIT), now)
        return due

    def push(self, entry: Any, wait: float | None, now: float | None = None) -> None:
        """Queue ``entry`` to be asked again ``wait`` seconds from ``now`` (default: the clock); 0:
        at the next ``take_due``."""
        wait = min(max(float(wait or 0.0), 0.0), self._max_wait)
        heapq.heappush(self._heap, ((self._clock() if now is None else now) + wait, next(self._order), entry))

    def next_in(self) -> float | None:
        """Seconds until the first queued entry is to be asked (0 if now); None when empty."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._clock())
