"""``celery singleton schedule ...``: beat entries changed at run time, without a deploy.

``add NAME --task T (--every 10s | --crontab "*/5 * * * *") [--args JSON] [--kwargs JSON]
[--queue Q] [--options JSON] [--disabled]`` stores an entry, replacing one of that name (an
edit, which keeps the entry's place in its schedule); ``remove``, ``enable``, ``disable`` and
``show NAME``; ``list [--json]`` shows the static entries (``beat_schedule``) and the stored
ones side by side, each with its last run, next due time and the fencing token of its last run.

Every problem exits with status 1 and a message naming the field or entry (usage errors: 2).
A task this app does not know is a warning only: the workers may know it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from .cli import _settings
from .entries import EntrySpec, StoredEntries, format_duration, parse_duration
from .schedule_view import cell, columns, entry_rows
from .errors import InvalidEntry, SingletonError

COLUMNS = ("name", "source", "enabled", "schedule", "task", "last_run_at", "next_due", "token")
HEADINGS = ("NAME", "SOURCE", "ENABLED", "SCHEDULE", "TASK", "LAST RUN", "NEXT DUE", "TOKEN")


@click.group(name="schedule")
def schedule() -> None:
    """Beat entries stored in the backend, beside beat_schedule (the leader picks changes up within 1 s)."""


class _Session:
    """One command's app, settings, backend and stored entries."""

    def __init__(self, ctx: click.Context) -> None:
        self.app = ctx.obj.app
        self.settings = _settings(ctx)
        self.backend = self.settings.open_backend()
        self.entries = StoredEntries(self.backend, self.settings.beat_lease_name)

    @property
    def static(self) -> dict[str, Any]:
        return dict(self.app.conf.beat_schedule or {})

    def no_stored_entry(self, name: str) -> click.ClickException:
        if name in self.static:
            return click.ClickException(f"{name!r} is a static entry (beat_schedule in the app's configuration): "
                                        "change it there")
        return click.ClickException(f"no stored entry {name!r} in schedule {self.settings.beat_lease_name!r}")


@contextmanager
def _session(ctx: click.Context) -> Iterator[_Session]:
    session = _Session(ctx)
    try:
        yield session
    except SingletonError as exc:  # InvalidEntry, or the store could not answer (LeaseError)
        raise click.ClickException(str(exc)) from None
    finally:
        session.backend.close()


def _json_option(option: str, text: str, kind: type, what: str, entry: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidEntry(option, text, f"{what} ({exc})", entry) from None
    if not isinstance(value, kind):
        raise InvalidEntry(option, text, what, entry)
    return value


def _known_tasks(app: Any) -> set[str]:
    try:
        app.loader.import_default_modules()  # imports and autodiscovery, as a worker does
    except Exception:  # the user's modules fail to import: then the task is only warned about
        pass
    return set(app.tasks)


@schedule.command()
@click.argument("name")
@click.option("--task", required=True, help="The task's registered name.")
@click.option("--every", default=None, help="Run every DURATION: 10s, 5m, 1h, 1d, 250ms, or seconds (1.5).")
@click.option("--crontab", "cron", default=None, help='Run on a cron schedule: "*/5 * * * *" (5 fields).')
@click.option("--args", "args_json", default="[]", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments, a JSON object.")
@click.option("--queue", default=None, help="The queue to send it to.")
@click.option("--options", "options_json", default="{}", help="apply_async options, a JSON object.")
@click.option("--disabled", is_flag=True, help="Store it without running it (enable it later).")
@click.pass_context
def add(ctx: click.Context, name: str, task: str, every: str | None, cron: str | None, args_json: str,
        kwargs_json: str, queue: str | None, options_json: str, disabled: bool) -> None:
    """Store entry NAME, replacing a stored entry of that name (an edit keeps its place in the schedule)."""
    if (every is None) == (cron is None):
        raise click.UsageError("give exactly one of --every or --crontab")
    with _session(ctx) as s:
        options = _json_option("options", options_json, dict, "a JSON object of apply_async options", name)
        if queue is not None:
            if options.get("queue", queue) != queue:
                raise InvalidEntry("queue", queue, f"the queue --options names too ({options['queue']!r})", name)
            options["queue"] = queue
        spec = EntrySpec(
            name=name, task=task, every=parse_duration(every, name) if every is not None else None, crontab=cron,
            args=_json_option("args", args_json, list, "a JSON array", name),
            kwargs=_json_option("kwargs", kwargs_json, dict, "a JSON object", name),
            options=options, enabled=not disabled,
        )
        if name in s.static:
            raise s.no_stored_entry(name)
        if task not in _known_tasks(s.app):
            click.echo(f"warning: task {task!r} is not registered in this app (a typo?); stored anyway, "
                       "for workers that know it", err=True)
        replaced = s.entries.store.get(name) is not None
        version = s.entries.add(spec)
        click.echo(f"{'replaced' if replaced else 'added'} {name}: {spec.schedule_text} -> {task}"
                   f"{'' if spec.enabled else ' (disabled)'} (version {version})")


@schedule.command()
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete stored entry NAME."""
    _edit_stored(ctx, name, StoredEntries.remove, "removed")


@schedule.command()
@click.argument("name")
@click.pass_context
def enable(ctx: click.Context, name: str) -> None:
    """Run stored entry NAME again."""
    _edit_stored(ctx, name, lambda entries, n: entries.enable(n) is not None, "enabled")


@schedule.command()
@click.argument("name")
@click.pass_context
def disable(ctx: click.Context, name: str) -> None:
    """Keep stored entry NAME but do not run it."""
    _edit_stored(ctx, name, lambda entries, n: entries.disable(n) is not None, "disabled")


def _edit_stored(ctx: click.Context, name: str, edit: Callable[[StoredEntries, str], bool], done: str) -> None:
    """``edit`` stored entry NAME (False: there is none, an error) and print ``{done} NAME``."""
    with _session(ctx) as s:
        if not edit(s.entries, name):
            raise s.no_stored_entry(name)
        click.echo(f"{done} {name}")


@schedule.command()
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """Print entry NAME (stored or static) as JSON, with its last run, next due time and token."""
    with _session(ctx) as s:
        spec = s.entries.get(name)
        rows = [row for row in _rows(s, {name: spec} if spec else {}, stored_only=spec is not None)
                if row["name"] == name]
        if not rows:
            raise s.no_stored_entry(name)
        click.echo(json.dumps(rows[0], indent=2))


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_context
def list_entries(ctx: click.Context, as_json: bool) -> None:
    """Show static and stored entries: source, schedule, last run, next due time, last token."""
    with _session(ctx) as s:
        rows = _rows(s, s.entries.all())
        for name, why in s.entries.skipped.items():
            click.echo(f"warning: stored entry {name!r} ignored: {why}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for line in columns([HEADINGS] + [tuple(cell(row[c]) for c in COLUMNS) for row in rows]):
        click.echo(line)


def _rows(s: _Session, stored: dict[str, EntrySpec], stored_only: bool = False) -> list[dict[str, Any]]:
    return entry_rows(s.app, s.backend, s.settings.beat_lease_name, stored, stored_only)
