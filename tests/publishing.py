"""What an in-process LeaderScheduler publishes: the headers of every message, as Celery sends them."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from celery.signals import before_task_publish


@contextlib.contextmanager
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published while the block runs, in order."""
    sent: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        sent.append(headers or {})

    before_task_publish.connect(record, weak=False)
    try:
        yield sent
    finally:
        before_task_publish.disconnect(record)


def tick_until(scheduler: Any, done: Callable[[], object], timeout: float, what: str) -> None:
    """Run the scheduler's ticks until ``done()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        scheduler.tick()


def lead_with_last_run(scheduler: Any, entry: str, last_run_at: Any, timeout: float = 10) -> None:
    """Tick ``scheduler`` until it leads (a standby has no schedule), then set ``entry``'s last run."""
    tick_until(scheduler, lambda: scheduler._led_token is not None, timeout, "the scheduler to lead")
    scheduler.schedule[entry].last_run_at = last_run_at
    scheduler._heap = None  # rebuilt from the new last run on the next tick
