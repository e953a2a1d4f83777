"""The scheduler classes beat leadership is composed with, and what it needs to know of them.

``LeaderScheduler`` runs the class named by ``singleton_beat_scheduler`` (default Celery's own
``celery.beat:Scheduler``) as a mixin over it, so the host's own methods, and the calls Celery and
the host make on themselves (``sync``, ``reserve``, a ``Finalize(self.sync)`` at exit), go through
the leadership checks. This module is the one place that knows the hosts' internals:

* a *persistent* host keeps run state of its own in its rows (django-celery-beat's and
  sqlalchemy-celery-beat's ``ModelEntry``: an entry carrying its row as ``.model``, with the
  row's last change as ``.model.date_changed``);
* entries stored at run time (``entries``) go in a host's schedule as ``StoredEntry``, beside its own;
* a host's snapshot is its ``_dirty`` set of unsynced entries and its loaded ``_schedule``
  (django-celery-beat, sqlalchemy-celery-beat), or ``data`` (Celery's ``Scheduler``).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery.beat import ScheduleEntry, Scheduler
from celery.utils.time import maybe_make_aware
from celery.utils.imports import load_extension_class_names, symbol_by_name

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .entries import EntrySpec

log = logging.getLogger("singleton_tasks.beat")

SETTING = "singleton_beat_scheduler"
DEFAULT = "celery.beat:Scheduler"


def host_class(value: Any) -> type:
    """The scheduler class a setting names, checked: ``module:Class``, ``module.Class``, a class,
    or an alias that ``celery beat -S`` knows (``django``: django-celery-beat's DatabaseScheduler)."""
    try:
        aliases = dict(load_extension_class_names("celery.beat_schedulers"))
        cls = symbol_by_name(value, aliases=aliases) if isinstance(value, str) else value
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(SETTING, value, f"an importable scheduler class ({exc})") from None
    if not isinstance(cls, type) or not issubclass(cls, Scheduler):
        raise ConfigurationError(SETTING, value, "a subclass of celery.beat.Scheduler")
    if getattr(cls, "_singleton_leader", False):
        raise ConfigurationError(SETTING, value, "the scheduler class to lead, not singleton-tasks' own")
    return cls


@functools.lru_cache(maxsize=None)
def compose(mixin: type, host: type) -> type:
    """``class Leader<Host>(mixin, host)``: one class per host, so isinstance checks stay stable."""
    return type(f"Leader{host.__name__}", (mixin, host), {"__module__": mixin.__module__,
                                                          "__qualname__": f"Leader{host.__name__}"})


class StoredEntry(ScheduleEntry):  # type: ignore[misc]
    """An entry stored in the backend (``entries``), placed in any host's schedule.

    Its run state lives in the fenced records alone, so a database host's sync, which calls
    ``save()`` on every entry it ran, has nothing to write for it.
    """

    def save(self) -> None:
        pass


def place_stored(current: dict[str, Any], specs: "dict[str, EntrySpec]", app: Any, shadowed: set[str]) -> None:
    """Put the enabled stored entries ``specs`` in a host's schedule ``current``, as
    ``StoredEntry``; drop those no longer stored. A host's own entry of the same name wins
    (warned once per name, remembered in ``shadowed``); an edit keeps the entry's last run."""
    for name in [n for n, e in current.items() if isinstance(e, StoredEntry) and n not in specs]:
        del current[name]  # removed or disabled in the store
    for name, spec in specs.items():
        old = current.get(name)
        if old is not None and not isinstance(old, StoredEntry):
            if name not in shadowed:
                log.warning("beat: stored entry %s is not run: the schedule has an entry of that name", name)
                shadowed.add(name)
            continue
        entry = spec.to_entry(app, cls=StoredEntry)
        if old is not None:  # an edit keeps the entry's place in its schedule
            set_run_state(entry, old.last_run_at, old.total_run_count)
        current[name] = entry


def row_is_later(entry: Any, recorded_run: datetime) -> bool:
    """True if ``entry``'s own row says more than the fenced record of its last run: the row was
    changed (re-enabled, re-created: its last run reset) after that run.

    Entries without a row (Celery's, stored ones) have no say: the record wins. A row whose
    last run is later only because the host filled a missing one in with "now" (never synced,
    as sqlalchemy-celery-beat does) is not later when it has not changed since the recorded run.
    """
    model = getattr(entry, "model", None)
    if model is None or maybe_make_aware(entry.last_run_at) <= recorded_run:
        return False
    changed = getattr(model, "date_changed", None)
    return changed is None or maybe_make_aware(changed) > recorded_run


def set_run_state(entry: Any, last_run_at: datetime | None = None, total_run_count: int | None = None) -> None:
    """Set an entry's run state, in its row object too, so the host's own save writes it."""
    model = getattr(entry, "model", None)
    for field, value in (("last_run_at", last_run_at), ("total_run_count", total_run_count)):
        if value is not None:
            setattr(entry, field, value)
            if model is not None:
                setattr(model, field, value)


def forget_snapshot(scheduler: Any) -> None:
    """Drop what the host loaded or has not synced, so it reloads from its source on next use."""
    dirty = getattr(scheduler, "_dirty", None)
    if isinstance(dirty, set):
        dirty.clear()
    if hasattr(scheduler, "_initial_read"):  # a database host: reload every row on next access
        scheduler._initial_read = True
        scheduler._schedule = None
    else:
        scheduler.data = {}
    scheduler._heap = None
