"""What an operator sees of a beat schedule: each entry's source, last run, next due and token.

One home for the rows that ``celery singleton schedule list`` and ``celery singleton status``
print, and for the plain-text table both draw.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery.schedules import crontab, maybe_schedule, schedule as every_schedule
from celery.utils.time import maybe_make_aware

from .backend import Backend
from .entries import EntrySpec, format_duration


def entry_rows(app: Any, backend: Backend, schedule_name: str, stored: dict[str, EntrySpec],
               stored_only: bool = False, include_orphans: bool = False) -> list[dict[str, Any]]:
    """One dict per entry, static ones (``beat_schedule``) first, then ``stored``; with
    ``include_orphans`` also the records of entries in neither."""
    records = backend.records(schedule_name).read_all()
    now = app.now()
    rows = []
    if not stored_only:
        for name, conf in dict(app.conf.beat_schedule or {}).items():
            sched = maybe_schedule(conf.get("schedule"), conf.get("relative", False), app)
            rows.append(_row(name, "static", True, describe(sched), str(conf.get("task")), sched,
                             records.get(name), now, list(conf.get("args", ())), dict(conf.get("kwargs") or {}),
                             dict(conf.get("options") or {})))
    for name, spec in sorted(stored.items()):
        rows.append(_row(name, "stored", spec.enabled, spec.schedule_text, spec.task, spec.schedule(app),
                         records.get(name), now, list(spec.args), spec.kwargs, spec.options))
    if include_orphans:
        known = {row["name"] for row in rows}
        for name, record in sorted(records.items()):
            if name not in known:  # run once, in no schedule now (removed, or a database host's row)
                rows.append({"name": name, "source": "record only", "enabled": None, "schedule": None,
                             "task": None, "last_run_at": iso(_last_run(record)), "next_due": None,
                             "token": record.get("token"), "total_run_count": record.get("total_run_count", 0),
                             "args": None, "kwargs": None, "options": None})
    return rows


def _row(name: str, source: str, enabled: bool, text: str, task: str, sched: Any, record: dict[str, Any] | None,
         now: datetime, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    last = _last_run(record)
    try:
        # Never run: counted from now, as beat counts a new entry from when it first sees it.
        due = now + sched.remaining_estimate(last or now) if enabled else None
    except Exception:  # a schedule class of the user's that cannot say
        due = None
    return {
        "name": name, "source": source, "enabled": enabled, "schedule": text, "task": task,
        "last_run_at": iso(last), "next_due": iso(due),
        "token": record.get("token") if record else None,
        "total_run_count": record.get("total_run_count", 0) if record else 0,
        "args": args, "kwargs": kwargs, "options": options,
    }


def _last_run(record: dict[str, Any] | None) -> datetime | None:
    try:
        return maybe_make_aware(datetime.fromisoformat(record["last_run_at"])) if record else None
    except (KeyError, TypeError, ValueError):  # a record the beat side would ignore too
        return None


def describe(sched: Any) -> str:
    if isinstance(sched, every_schedule):
        return f"every {format_duration(sched.run_every.total_seconds())}"
    if isinstance(sched, crontab):
        parts = ("_orig_minute", "_orig_hour", "_orig_day_of_month", "_orig_month_of_year", "_orig_day_of_week")
        if all(hasattr(sched, p) for p in parts):  # what celery's own repr shows
            return "crontab " + " ".join(str(getattr(sched, p)) for p in parts)
    return str(sched)


def iso(moment: datetime | None) -> str | None:
    # Rounded, not truncated: a crontab due at 03:00:00 is computed a few microseconds early.
    return (moment + timedelta(microseconds=500_000)).isoformat(timespec="seconds") if moment else None


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as lines of left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
