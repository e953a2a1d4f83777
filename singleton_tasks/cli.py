"""``celery singleton ...``: look at and check the leases of a Celery app.

``celery -A proj singleton status`` shows who holds the beat lease (or ``--name`` another);
``celery -A proj singleton check`` validates the settings and runs every operation the library
needs on every node (exit status 1 when one fails).
"""

from __future__ import annotations

import json
from typing import Any

import click
from kombu.utils.url import maybe_sanitize_url

from . import keys
from .conf import settings_for
from .errors import SingletonError
from .lease import Lease
from .timing import default_op_timeout
from .nodes import NodeSet
from .probes import eviction_warnings, exercise_node


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
    lease = Lease(name or keys.beat_lease_name(s.beat_lease_name), list(s.redis_urls), ttl=s.lease_ttl,
                  prefix=s.key_prefix)
    try:
        click.echo(json.dumps({"lease": lease.key, "holder": lease.holder()}, indent=2))
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lease.nodes.close()


@singleton.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the settings and run every lease operation on every node; exit 1 if one fails."""
    s = _settings(ctx)
    timeout = default_op_timeout(s.lease_ttl) * 5  # an operator waits longer than a renewal may
    nodes = NodeSet(list(s.redis_urls), timeout)
    failures = 0
    try:
        for index, label in enumerate(nodes.labels):
            shown = maybe_sanitize_url(label)
            problem = exercise_node(nodes, index, s.key_prefix, timeout)
            if problem is None:
                click.echo(f"ok    {shown}: lease, renew, holder, fenced records, slot claim, release notification")
            else:
                failures += 1
                click.echo(f"FAIL  {shown}: {problem}")
        for warning in eviction_warnings(nodes):
            click.echo(f"WARN  {warning}")
    finally:
        nodes.close()
    click.echo(f"beat lease ttl={s.lease_ttl:g}s renew={s.renew_interval:.3g}s missed_runs={s.missed_runs}")
    if failures:
        majority = "no majority" if failures * 2 >= len(nodes) else "a majority still works"
        raise click.ClickException(f"{failures} of {len(nodes)} nodes failed ({majority})")
