"""``celery singleton ...``: look at and check the leases of a Celery app.

``celery -A proj singleton status`` shows who holds the beat lease (or ``--name`` another);
``celery -A proj singleton check`` validates the settings and runs every operation the library
needs on every node (exit status 1 when one fails); ``health [--leader]`` is a probe with named
exit codes; ``release NAME`` force-releases a stuck lease.
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import keys
from .backend import HOSTNAME
from .conf import settings_for
from .errors import SingletonError
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
@click.option("--name", default=None, help="Lease name, as in the logs (default: the beat lease, beat:NAME).")
@click.pass_context
def status(ctx: click.Context, name: str | None) -> None:
    """Print who holds a lease, as JSON (null when nobody does)."""
    s = _settings(ctx)
    backend = s.open_backend()
    lease_name = name or keys.beat_lease_name(s.beat_lease_name)
    try:
        holder = backend.lease(lease_name, s.lease_ttl).holder()
        click.echo(json.dumps({"lease": keys.lease_key(s.key_prefix, lease_name), "holder": holder}, indent=2))
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()


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


@singleton.command()
@click.option("--leader", is_flag=True, help="Exit 0 only on the host whose replica holds the beat lease.")
@click.pass_context
def health(ctx: click.Context, leader: bool) -> None:
    """Probe: exit 0 if this host reaches the store (1 if not); with --leader, 2 unless it leads beat.

    For a liveness probe (``celery -A proj singleton health``) and a readiness probe that routes
    to the leader (``... health --leader``). The leader is recognised by the host name in the
    lease's owner value.
    """
    s = _settings(ctx)
    backend = s.open_backend()
    name = keys.beat_lease_name(s.beat_lease_name)
    try:
        holder = backend.lease(name, s.lease_ttl).holder()
    except SingletonError as exc:
        click.echo(f"unhealthy: the store cannot be read: {exc}", err=True)
        ctx.exit(STORE_UNREACHABLE)
    finally:
        backend.close()
    if not leader:
        click.echo(f"ok: the store answers; {name} is {_who(holder)}")
        return
    if holder is not None and holder["host"] == HOSTNAME:
        click.echo(f"ok: this host leads {name} (pid {holder['pid']}, token {holder['token']})")
        return
    click.echo(f"not the leader: {name} is {_who(holder)}", err=True)
    ctx.exit(NOT_LEADER)


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
