"""Beat entries changed at run time: ``EntrySpec`` (one entry, validated) and ``StoredEntries``.

Guarantees:

* An ``EntrySpec`` exists only valid: a name the keys can carry, a task name, exactly one of
  ``every`` (seconds > 0) or ``crontab`` (5 fields Celery parses), JSON arguments, and only
  the whitelisted ``apply_async`` options, each checked. Otherwise ``InvalidEntry`` names the
  entry, the field and the bad value.
* It is stored as JSON (``to_json``), never pickled; ``from_json`` is strict (unknown keys,
  wrong types, NaN, a name that is not the key's are refused) and never evaluates anything.
* ``StoredEntries.poll()`` costs one round trip to the store when nothing changed, and
  returns every entry (disabled ones too: the caller schedules only ``spec.enabled``) after
  any change. A stored value that does not parse is skipped with a WARNING, never trusted.
* An edit is a new spec under the same name: the run state (``last_run_at``) is kept by name
  in the schedule's fenced records, so ``to_entry(app, last_run_at=...)`` keeps its place.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable

from celery.beat import ScheduleEntry
from celery.schedules import crontab as Crontab
from celery.schedules import schedule as Every

from .backend import Backend
from .errors import InvalidEntry

log = logging.getLogger("singleton_tasks.entries")

#: Entry names: they end up in keys, slot ids and Redis hash tags, so no braces, ':', '/' or '@'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"

#: A stored value longer than this is not ours (an entry is a few hundred bytes).
MAX_TEXT = 65536

MIN_EVERY = 0.001  #: the shortest ``every`` (s)

FORMAT = 1  #: the ``format`` of the JSON written by ``to_json``; another one is refused

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# Cron's field order (minute hour day-of-month month day-of-week) in Celery's argument names.
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

#: Message headers Celery's protocol itself sets (a custom header would override them, e.g. the
#: task name or id), and the prefix of ours that carry the slot and the fencing token.
RESERVED_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
    "stamped_headers", "stamps", "celery_beat_task",
})
OUR_HEADERS = "singleton_"


def _number(low: float, high: float = math.inf, integer: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        kinds = (int,) if integer else (int, float)
        return (isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
                and low <= value <= high)
    return check


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _headers(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and k not in RESERVED_HEADERS and not k.startswith(OUR_HEADERS) for k in value)


#: ``apply_async`` options an entry may set, with what each must be. Left out on purpose:
#: ``serializer``/``compression`` (the app decides what its workers accept: a stored entry
#: must not switch a message to pickle), ``task_id`` (beat derives it from the slot), ``eta``
#: (a schedule's job), ``link``/``link_error`` (signatures, not data).
OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "queue": ("a queue name (a non-empty string)", _text),
    "exchange": ("an exchange name (a non-empty string)", _text),
    "routing_key": ("a routing key (a non-empty string)", _text),
    "priority": ("an integer from 0 to 255", _number(0, 255, integer=True)),
    "expires": ("a number of seconds > 0", _number(1e-3)),
    "countdown": ("a number of seconds >= 0", _number(0)),
    "time_limit": ("a number of seconds > 0", _number(1e-3)),
    "soft_time_limit": ("a number of seconds > 0", _number(1e-3)),
    "ignore_result": ("true or false", lambda v: isinstance(v, bool)),
    "headers": (f"an object of string keys, none of Celery's own ({', '.join(sorted(RESERVED_HEADERS))}) "
                f"and none starting with {OUR_HEADERS!r}", _headers),
}


def parse_duration(text: str, entry: str | None = None) -> float:
    """Seconds in ``text``: ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"250ms"`` or ``"1.5"`` (s), >= ``MIN_EVERY``."""
    found = _DURATION.fullmatch(text) if isinstance(text, str) else None
    seconds = float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
    if not seconds >= MIN_EVERY:
        raise InvalidEntry("every", text, f"a duration of at least {MIN_EVERY * 1000:g}ms such as 10s, 5m, 1h, 1d,"
                           " 250ms or 1.5 (seconds)", entry)
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` as ``parse_duration`` reads it, in the largest unit that divides it: ``5m``, ``1.5s``."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def parse_crontab(text: str, app: Any = None, entry: str | None = None) -> Crontab:
    """The Celery ``crontab`` of 5 cron fields (minute hour day-of-month month day-of-week)."""
    fields = text.split() if isinstance(text, str) else []
    if len(fields) != 5:
        raise InvalidEntry("crontab", text, "5 fields: minute hour day-of-month month day-of-week, "
                           "e.g. '*/5 * * * *'", entry)
    for name, value in zip(CRON_FIELDS, fields):  # one at a time, to name the field that is wrong
        try:
            Crontab(**{name: value})
        except Exception as exc:  # celery raises ValueError or its ParseException
            raise InvalidEntry("crontab", text, f"its {name.replace('_', '-')} field {value!r}: {exc}", entry) from None
    return Crontab(**dict(zip(CRON_FIELDS, fields)), app=app)


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class EntrySpec:
    """One beat entry as stored: checked when made (``InvalidEntry``), so every instance is valid.

    ``every`` (seconds) or ``crontab`` (5 cron fields), exactly one. ``options`` are passed to
    ``apply_async`` (``queue`` among them); only the keys of ``OPTIONS`` are allowed.
    """

    name: str
    task: str
    every: float | None = None
    crontab: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidEntry("name", name, NAME_RULE)
        if not _text(self.task) or self.task != self.task.strip():
            raise InvalidEntry("task", self.task, "a task name (a non-empty string)", name)
        if (self.every is None) == (self.crontab is None):
            raise InvalidEntry("schedule", {"every": self.every, "crontab": self.crontab},
                               "exactly one of every (seconds) or crontab", name)
        if self.every is not None:
            if not _number(MIN_EVERY)(self.every):
                raise InvalidEntry("every", self.every, f"a number of seconds >= {MIN_EVERY:g}", name)
            object.__setattr__(self, "every", float(self.every))
        else:
            parse_crontab(self.crontab or "", entry=name)
            object.__setattr__(self, "crontab", " ".join((self.crontab or "").split()))
        if not isinstance(self.args, (list, tuple)) or not _json_value(list(self.args)):
            raise InvalidEntry("args", self.args, "a list of JSON values", name)
        object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs) \
                or not _json_value(self.kwargs):
            raise InvalidEntry("kwargs", self.kwargs, "an object of JSON values with string keys", name)
        if not isinstance(self.options, dict):
            raise InvalidEntry("options", self.options, "an object of apply_async options", name)
        for key, value in self.options.items():
            if key not in OPTIONS:
                raise InvalidEntry("options", key, f"one of the options allowed: {', '.join(OPTIONS)}", name)
            allowed, check = OPTIONS[key]
            if not check(value) or not _json_value(value):
                raise InvalidEntry(f"options.{key}", value, allowed, name)
        if not isinstance(self.enabled, bool):
            raise InvalidEntry("enabled", self.enabled, "true or false", name)

    @property
    def schedule_text(self) -> str:
        """How the schedule reads to an operator: ``every 10s`` or ``crontab */5 * * * *``."""
        return f"every {format_duration(self.every)}" if self.every is not None else f"crontab {self.crontab}"

    def schedule(self, app: Any = None) -> Every | Crontab:
        """The Celery schedule object (in ``app``'s timezone when given)."""
        if self.every is not None:
            return Every(timedelta(seconds=self.every), app=app)
        return parse_crontab(self.crontab or "", app, self.name)

    def to_entry(self, app: Any, last_run_at: datetime | None = None, total_run_count: int = 0,
                 cls: type[ScheduleEntry] = ScheduleEntry) -> ScheduleEntry:
        """A ``celery.beat.ScheduleEntry`` (or ``cls``) for ``app``'s beat; its own copies of args and options.

        ``last_run_at`` None means never run: Celery counts from now, as for a static entry.
        """
        options = json.loads(json.dumps(self.options))  # beat adds headers to it: never to ours
        return cls(name=self.name, task=self.task, last_run_at=last_run_at, total_run_count=total_run_count,
                             schedule=self.schedule(app), args=self.args, kwargs=dict(self.kwargs), options=options,
                             app=app)

    def with_enabled(self, enabled: bool) -> "EntrySpec":
        return replace(self, enabled=enabled)

    def to_json(self) -> str:
        body = asdict(self)
        body["args"] = list(self.args)
        body = {k: v for k, v in body.items() if v is not None}
        return json.dumps({"format": FORMAT, **body}, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, name: str | None = None) -> "EntrySpec":
        """The spec in ``text``, checked as strictly as a new one; ``name``: the key it was stored under.

        Raises ``InvalidEntry`` for anything ``to_json`` would not have written.
        """
        where = name
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise InvalidEntry("stored value", text, f"an entry's JSON of at most {MAX_TEXT} characters", where)
        try:
            body = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise InvalidEntry("stored value", text, f"JSON ({exc})", where) from None
        known = {"format", "name", "task", "every", "crontab", "args", "kwargs", "options", "enabled"}
        if not isinstance(body, dict) or body.get("format") != FORMAT or not body.keys() <= known \
                or not {"name", "task"} <= body.keys():
            raise InvalidEntry("stored value", text, f"an entry written by singleton-tasks (format {FORMAT})", where)
        if name is not None and body["name"] != name:
            raise InvalidEntry("name", body["name"], f"the name it is stored under, {name!r}", where)
        if not isinstance(body.get("args", []), list):
            raise InvalidEntry("args", body["args"], "a list of JSON values", where)
        try:
            return cls(**{k: v for k, v in body.items() if k != "format"})
        except TypeError as exc:  # pragma: no cover - the keys were checked above
            raise InvalidEntry("stored value", text, str(exc), where) from None


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


class StoredEntries:
    """The entries of beat schedule ``schedule`` (``Settings.beat_lease_name``) stored in ``backend``.

    Store errors (``LeaseError``) propagate; ``InvalidEntry`` is raised only by ``get`` of a
    value that does not parse (``all`` and ``poll`` skip such values, see ``skipped``).
    """

    def __init__(self, backend: Backend, schedule: str) -> None:
        self.store = backend.entries(schedule)
        self.schedule = schedule
        #: The values the last ``all`` or ``poll`` skipped: entry name -> why.
        self.skipped: dict[str, str] = {}
        self._seen: int | None = None

    def add(self, spec: EntrySpec) -> int:
        """Store ``spec``, replacing an entry of the same name (an edit); the new version."""
        return self.store.put(spec.name, spec.to_json())

    def remove(self, name: str) -> bool:
        """Delete entry ``name``; False when there was none."""
        return self.store.remove(name)

    def get(self, name: str) -> EntrySpec | None:
        text = self.store.get(name)
        return None if text is None else EntrySpec.from_json(text, name)

    def all(self) -> dict[str, EntrySpec]:
        """Every entry that parses, disabled ones too, by name."""
        return self._parse(self.store.all()[1])

    def enable(self, name: str) -> EntrySpec | None:
        """Schedule entry ``name`` again; its new spec, or None when there is no such entry."""
        return self._set_enabled(name, True)

    def disable(self, name: str) -> EntrySpec | None:
        """Keep entry ``name`` stored but do not run it; its new spec, or None when there is none."""
        return self._set_enabled(name, False)

    def version(self) -> int:
        return self.store.version()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from a background thread soon after any process changes the entries
        (a hint to ``poll``; see ``backend.EntriesProtocol.on_change``); returns the function
        that stops it, which the caller must call."""
        return self.store.on_change(callback)

    def poll(self) -> dict[str, EntrySpec] | None:
        """Every entry (as ``all``) when the store changed since the last poll, else None.

        Unchanged costs one round trip (the version); the first call always loads.
        """
        if self._seen is not None and self.store.version() == self._seen:
            return None
        version, texts = self.store.all()
        self._seen = version  # the version read with the entries, so no change slips between
        return self._parse(texts)

    def _set_enabled(self, name: str, enabled: bool) -> EntrySpec | None:
        # Read, then write: an edit made in between is overwritten (last writer wins).
        spec = self.get(name)
        if spec is None:
            return None
        spec = spec.with_enabled(enabled)
        self.add(spec)
        return spec

    def _parse(self, texts: dict[str, str]) -> dict[str, EntrySpec]:
        specs: dict[str, EntrySpec] = {}
        self.skipped = {}
        for name, text in texts.items():
            try:
                specs[name] = EntrySpec.from_json(text, name)
            except InvalidEntry as exc:
                self.skipped[name] = str(exc)
                log.warning("stored beat entry %r of schedule %r ignored: %s", name, self.schedule, exc)
        return specs
