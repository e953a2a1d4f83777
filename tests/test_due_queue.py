"""The beat leader's due queue on a manual clock (the fast tier; beat itself is tested with real
processes in test_beat_*.py, test_django_beat.py and the scale benchmark)."""

from __future__ import annotations

from singleton_tasks.clock import ManualClock
from singleton_tasks.due_queue import MIN_WAIT, DueQueue


class Entry:
    """Due every ``period`` s from ``start``, by the clock; not comparable, like Celery's entries."""

    __lt__ = None  # type: ignore[assignment]

    def __init__(self, name: str, clock: ManualClock, period: float, start: float) -> None:
        self.name, self.clock, self.period, self.next_at = name, clock, period, start
        self.asked = 0

    def is_due(self) -> tuple[bool, float]:
        self.asked += 1
        left = self.next_at - self.clock()
        return (True, self.period) if left <= 0 else (False, left)


def test_takes_what_is_due_and_sleeps_exactly_until_the_next() -> None:
    clock = ManualClock()
    a, b = Entry("a", clock, 10, clock() + 5), Entry("b", clock, 10, clock() + 2)
    queue = DueQueue({"a": a, "b": b}, lambda e: e.is_due(), clock)
    assert queue.take_due(10) == [] and (a.asked, b.asked) == (1, 1), "a new queue asks every entry once"
    assert queue.next_in() == 2.0, "then sleeps until the first one's time, not early"
    clock.advance(2)
    assert queue.take_due(10) == [b] and a.asked == 1, "an entry not yet due is not asked again"
    queue.push(b, 10)
    assert queue.next_in() == 3.0


def test_a_burst_is_taken_in_batches_and_an_entry_due_again_at_once_is_taken_next() -> None:
    clock = ManualClock()
    entries = {f"e{i}": Entry(f"e{i}", clock, 60, clock()) for i in range(1200)}
    queue = DueQueue(entries, lambda e: e.is_due(), clock)
    first, second, third = queue.take_due(500), queue.take_due(500), queue.take_due(500)
    assert (len(first), len(second), len(third)) == (500, 500, 200)
    assert {e.name for e in first + second + third} == set(entries), "each once, ties never compare entries"
    queue.push(first[0], 0.0)  # catch_up: the next missed slot is due at once
    assert queue.take_due(10) == [first[0]]


def test_an_entry_that_is_not_due_with_no_time_left_is_not_asked_in_a_loop() -> None:
    clock = ManualClock()
    calls = []

    def never_due(entry: object) -> tuple[bool, float]:
        calls.append(entry)
        return False, 0.0

    queue = DueQueue({"x": object()}, never_due, clock)
    assert queue.take_due(10) == [] and len(calls) == 1
    assert abs((queue.next_in() or 0) - MIN_WAIT) < 1e-9


def test_a_long_estimate_is_asked_again_after_max_wait() -> None:
    clock = ManualClock()
    e = Entry("rare", clock, 86400, clock() + 86400)
    queue = DueQueue({"rare": e}, lambda x: x.is_due(), clock, max_wait=300)
    queue.take_due(1)
    assert queue.next_in() == 300
