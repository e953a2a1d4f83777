"""``celery singleton ...``: look at and check the leases of a Celery app.

``celery -A proj singleton status [--json]`` shows every lease under the key prefix (holder,
token, time left, each node's answer) and the beat schedule's run state (or ``--name`` one lease);
``celery -A proj singleton check`` validates the settings and runs every operation the library
needs on every node (exit status 1 when one fails); ``health [--leader] [--max-age S]`` is a
probe with named exit codes; ``release NAME`` force-releases a stuck lease.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from . import keys
from .backend import HOSTNAME, Backend, LeaseState
from .conf import settings_for
from .entries import StoredEntries
from .errors import SingletonError
from .schedule_view import cell, columns, entry_rows
from .timing import default_op_timeout


@click.group(name="singleton")
def singleton() -> None:
    """singleton-tasks: inspect leader leases."""


def _settings(ctx: click.Context) -> Any:
    try:
        return settings_for(ctx.obj.app)
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None


@singleton.command()
@click.option("--name", default=None, help="Show only this lease, as in the logs: beat:NAME, task:TASK[:KEY].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show every lease under the key prefix, and the beat schedule's run state.

    Each lease (beat:NAME, task:TASK[:KEY]; the beat lease always, held or not): its holder
    (host, pid, id), fencing token and time left, then what each node answered: the owner id
    and token it holds, or its error. Then each beat entry's last run, next due time and the
    token of the leader that ran it last (as ``schedule list``). With --name: that lease only.
    Exit 1 when the store cannot be read.
    """
    s = _settings(ctx)
    backend = s.open_backend()
    beat = keys.beat_lease_name(s.beat_lease_name)
    report: dict[str, Any] = {"prefix": s.key_prefix, "nodes": list(backend.labels)}
    try:
        states = backend.leases([name] if name is not None else None)
        if name is None and beat not in {state.name for state in states}:
            states = sorted(states + backend.leases([beat]), key=lambda state: state.name)
        report["leases"] = [_lease_report(s.key_prefix, state) for state in states]
        if name is None:
            report["schedule"] = _schedule_report(ctx.obj.app, backend, s.beat_lease_name)
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(_status_lines(report)))


def _lease_report(prefix: str, state: LeaseState) -> dict[str, Any]:
    tokens = [answer.token for answer in state.nodes.values() if answer.token is not None]
    return {
        "name": state.name, "key": keys.lease_key(prefix, state.name), "holder": state.holder,
        "last_token": max(tokens, default=None), "error": state.error,
        "nodes": {label: {"owner": a.owner, "token": a.token, "ttl": a.ttl, "error": a.error}
                  for label, a in state.nodes.items()},
    }


def _schedule_report(app: Any, backend: Backend, schedule_name: str) -> dict[str, Any]:
    """The beat schedule's entries as ``celery singleton schedule list --json`` shows them, with
    the records of entries in no schedule now."""
    try:
        stored = StoredEntries(backend, schedule_name).all()
        entries = entry_rows(app, backend, schedule_name, stored, include_orphans=True)
    except SingletonError as exc:  # the leases are shown; the schedule's own failure is said, not raised
        return {"name": schedule_name, "entries": [], "error": str(exc)}
    return {"name": schedule_name, "entries": entries, "error": None}


def _status_lines(report: dict[str, Any]) -> list[str]:
    """``status``'s human table: one line per lease, one indented line per node, then the schedule."""
    rows: list[tuple[str, ...]] = [("LEASE", "HOLDER", "TOKEN", "LEFT", "NODES")]
    for lease in report["leases"]:
        holder, answers = lease["holder"], lease["nodes"]
        failed = sum(1 for a in answers.values() if a["error"])
        if holder is not None:
            agree = sum(1 for a in answers.values() if a["owner"] == holder["id"])
            who, token, left = f"{holder['host']} pid {holder['pid']} id {holder['id']}", holder["token"], holder["ttl"]
            nodes = f"{agree} of {len(answers)} hold it"
        else:
            who = f"unknown: {lease['error']}" if lease["error"] else "not held"
            token, left = (f"last {lease['last_token']}" if lease["last_token"] is not None else None), None
            nodes = f"{len(answers) - failed} of {len(answers)} answered"
        rows.append((lease["name"], who, cell(token), _seconds(left),
                     nodes + (f", {failed} did not answer" if failed and holder is not None else "")))
        for label, a in answers.items():
            seen = (f"error: {a['error']}" if a["error"] else "free" if a["owner"] is None else f"holds {a['owner']}")
            rows.append((f"  {label}", seen, cell(a["token"]), _seconds(a["ttl"]), ""))
    lines = [f"store: {', '.join(report['nodes'])} (prefix {report['prefix']})", "", *columns(rows)]
    schedule = report.get("schedule")
    if schedule is not None:
        lines += ["", f"beat schedule {schedule['name']!r}" + (f": cannot be read: {schedule['error']}"
                                                                if schedule["error"] else "")]
        entries = [("ENTRY", "LAST RUN", "NEXT DUE", "TOKEN", "RUNS")] + [
            (e["name"], cell(e["last_run_at"]), cell(e["next_due"]), cell(e["token"]), cell(e["total_run_count"]))
            for e in schedule["entries"]]
        if not schedule["error"]:
            lines += columns(entries) if schedule["entries"] else ["(no entries)"]
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


@singleton.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the settings and run every lease operation on every node; exit 1 if one fails."""
    s = _settings(ctx)
    backend = s.open_backend(default_op_timeout(s.lease_ttl) * 5)  # an operator waits longer than a renewal may
    try:
        results = backend.check()
        for label, problem in results:
            if problem is None:
                click.echo(f"ok    {label}: lease, renew, holder, fenced records, slot claim, release notification")
            else:
                click.echo(f"FAIL  {label}: {problem}")
        for warning in backend.startup_warnings():
            click.echo(f"WARN  {warning}")
    finally:
        backend.close()
    click.echo(f"beat lease ttl={s.lease_ttl:g}s renew={s.renew_interval:.3g}s missed_runs={s.missed_runs}")
    failures = sum(1 for _, problem in results if problem is not None)
    if failures:
        majority = "no majority" if failures * 2 >= len(results) else "a majority still works"
        raise click.ClickException(f"{failures} of {len(results)} nodes failed ({majority})")


#: ``celery singleton health`` exit codes, for probes.
HEALTHY = 0
STORE_UNREACHABLE = 1
NOT_LEADER = 2
STALE = 3

#: How often ``health --max-age`` asks again while it waits for a holder (s).
HEALTH_POLL = 0.1


@singleton.command()
@click.option("--leader", is_flag=True, help="Exit 0 only on the host whose replica holds the beat lease.")
@click.option("--max-age", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="With --leader: exit 3 if this host holds the beat lease but has not renewed it for longer"
                   " (set it above singleton_renew_interval). Without: exit 1 if the store takes longer to"
                   " answer, 3 if nobody holds the beat lease for this long (set it above the lease TTL).")
@click.pass_context
def health(ctx: click.Context, leader: bool, max_age: float | None) -> None:
    """Probe the beat lease; exit codes: 0 healthy, 1 store unreachable, 2 not the leader, 3 stale.

    \b
    health               0 if the store answers (the beat lease held or not), else 1.
    health --leader      0 if a replica on this host holds the beat lease, 2 if not, 1 as above.
    health --max-age S   also 1 if the store's answer took longer than S s, and 3 if nobody
                         held the beat lease during S s (it waits up to S s for a holder):
                         no replica is leading. A liveness probe of beat replicas.
    health --leader --max-age S
                         also 3 if this host holds the lease but its last renewal is older
                         than S s (lease TTL minus time left; on etcd to within a second):
                         the leader is stuck (paused, deadlocked) while its lease runs out.

    The leader is recognised by the host name in the lease's owner value.
    """
    s = _settings(ctx)
    backend = s.open_backend()
    name = keys.beat_lease_name(s.beat_lease_name)
    started = time.monotonic()
    try:
        lease = backend.lease(name, s.lease_ttl)
        holder = lease.holder()
        answered = time.monotonic() - started
        # A takeover in progress is healthy: without --leader, wait (at most S) for a holder.
        while max_age is not None and not leader and holder is None and time.monotonic() - started < max_age:
            time.sleep(HEALTH_POLL)
            holder = lease.holder()
    except SingletonError as exc:
        click.echo(f"unhealthy: the store cannot be read: {exc}", err=True)
        ctx.exit(STORE_UNREACHABLE)
    finally:
        backend.close()
    if max_age is not None and answered > max_age:
        click.echo(f"unhealthy: the store answered after {answered:.2f}s (--max-age {max_age:g})", err=True)
        ctx.exit(STORE_UNREACHABLE)
    if not leader:
        if max_age is not None and holder is None:
            click.echo(f"stale: nobody held {name} for {max_age:g}s: no replica is leading", err=True)
            ctx.exit(STALE)
        click.echo(f"ok: the store answers; {name} is {_who(holder)}")
        return
    if holder is None or holder["host"] != HOSTNAME:
        click.echo(f"not the leader: {name} is {_who(holder)}", err=True)
        ctx.exit(NOT_LEADER)
    age = max(0.0, s.lease_ttl - holder["ttl"])  # each renewal sets the key's time left back to the TTL
    if max_age is not None and age > max_age:
        click.echo(f"stale: this host holds {name} (pid {holder['pid']}, token {holder['token']}) but last renewed it"
                   f" {age:.1f}s ago (--max-age {max_age:g}); it ends in {holder['ttl']:.1f}s", err=True)
        ctx.exit(STALE)
    click.echo(f"ok: this host leads {name} (pid {holder['pid']}, token {holder['token']}, renewed {age:.1f}s ago)")


@singleton.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def release(ctx: click.Context, name: str, yes: bool) -> None:
    """Force-release lease NAME (as in the logs: beat:NAME, task:TASK[:KEY]), whoever holds it.

    A running holder loses the lease: its next renewal or checkpoint raises LeaseLost, and a
    standby takes over at once.
    """
    s = _settings(ctx)
    backend = s.open_backend()
    try:
        holder = backend.lease(name, s.lease_ttl).holder()
        if holder is None:
            click.echo(f"{name} is not held; nothing to release")
            return
        if not yes:
            click.confirm(f"{name} is {_who(holder)}. Release it? The holder will lose it (LeaseLost)",
                          abort=True)
        released = backend.force_release(name)
        click.echo(f"released {name} (was {_who(holder)})" if released else f"{name} was released meanwhile")
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()


def _who(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "not held"
    return f"held by {holder['host']} pid {holder['pid']} (token {holder['token']}, {holder['ttl']:.1f}s left)"


# Last: ``schedule_cli`` uses this module's helpers (``celery singleton schedule ...``).
from .schedule_cli import schedule  # noqa: E402

singleton.add_command(schedule)
