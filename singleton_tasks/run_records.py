"""A beat entry's shared run record: what it holds, how one read back is checked, and the
nominal due time that names a slot the same way on every leader.

A record is JSON: ``last_run_at`` (ISO 8601, aware), ``total_run_count``, and ``pending`` (the
slot reserved and not yet noted as sent, or None); the store adds the writer's ``token``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule
from celery.utils.time import maybe_make_aware

from . import keys

log = logging.getLogger("singleton_tasks.beat")

#: A shared record whose last run is later than now by more than this (clock skew between
#: beat hosts aside) cannot be right, and would stop its entry: it is ignored, with a warning.
FUTURE_TOLERANCE = timedelta(seconds=60)


def record_of(entry: Any, pending: str | None) -> dict[str, Any]:
    """The record of ``entry``'s run state, with ``pending`` the slot reserved (None: none)."""
    return {
        "last_run_at": maybe_make_aware(entry.last_run_at).isoformat(),
        "total_run_count": entry.total_run_count,
        "pending": pending,
    }


def usable(name: str, record: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The shared record of entry ``name``, checked and parsed; None (with a warning) if it cannot be right."""
    try:
        last = maybe_make_aware(datetime.fromisoformat(record["last_run_at"]))
        count = int(record["total_run_count"])
        pending = record.get("pending")
        if count < 0 or not (pending is None or (isinstance(pending, str) and keys.parse_slot(pending))):
            raise ValueError("a negative run count, or a pending value that is not a slot id")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("beat: ignoring the shared record of %s, which does not parse (%s): %.200r", name, exc, record)
        return None
    if last > now + FUTURE_TOLERANCE:
        log.warning("beat: ignoring the shared record of %s: its last run %s is in the future (now %s)",
                    name, last.isoformat(), now.isoformat())
        return None
    return {"last_run_at": last, "total_run_count": count, "pending": pending}


def due_time(entry: Any, now: datetime) -> datetime:
    """The nominal time of the slot being run: what makes its id the same on every leader.

    Computed from ``last_run_at`` alone where the schedule allows it. ``now +
    remaining_estimate()`` reads the clock a second time inside Celery and lands a few
    microseconds early: a crontab slot then sits just before its boundary, and under
    ``catch_up`` (last_run_at = due) the same occurrence is due again at once.
    """
    sched = entry.schedule
    try:
        if isinstance(sched, crontab):
            start, delta, _ = sched.remaining_delta(entry.last_run_at)
            return start + delta  # type: ignore[no-any-return]
        if isinstance(sched, schedule) and not sched.relative:
            return sched.maybe_make_aware(entry.last_run_at) + sched.run_every  # type: ignore[no-any-return]
        remaining: timedelta = sched.remaining_estimate(entry.last_run_at)
    except (AttributeError, NotImplementedError, TypeError):
        return now
    return now + remaining
