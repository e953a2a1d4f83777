"""``celery singleton ...``: look at and check the leases of a Celery app.

``celery -A proj singleton status`` shows who holds the beat lease (or ``--name`` another);
``celery -A proj singleton check`` validates the settings and runs every operation the library
needs on every node (exit status 1 when one fails).
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import keys
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
