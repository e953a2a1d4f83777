"""``celery singleton ...``: look at and check the leases of a Celery app.

``celery -A proj singleton status`` shows who holds the beat lease (or ``--name`` another);
``celery -A proj singleton check`` validates the settings and reaches every node.
"""

from __future__ import annotations

import json
from typing import Any

import click
from kombu.utils.url import maybe_sanitize_url

from .conf import settings_for
from .errors import SingletonError
from .lease import Lease


@click.group(name="singleton")
def singleton() -> None:
    """singleton-tasks: inspect leader leases."""


def _settings(ctx: click.Context) -> Any:
    try:
        return settings_for(ctx.obj.app)
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None


@singleton.command()
@click.option("--name", default=None, help="Lease name (default: the beat lease).")
@click.pass_context
def status(ctx: click.Context, name: str | None) -> None:
    """Print who holds a lease, as JSON (null when nobody does)."""
    s = _settings(ctx)
    lease = Lease(name or s.beat_lease_name, list(s.redis_urls), ttl=s.lease_ttl, prefix=s.key_prefix)
    try:
        click.echo(json.dumps({"lease": lease.key, "holder": lease.holder()}, indent=2))
    except SingletonError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lease.nodes.close()


@singleton.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the singleton_* settings and reach every Redis node."""
    s = _settings(ctx)
    lease = Lease(s.beat_lease_name, list(s.redis_urls), ttl=s.lease_ttl, prefix=s.key_prefix)
    failures = 0
    for label, client in zip(lease.nodes.labels, lease.nodes.clients):
        try:
            client.ping()
            click.echo(f"ok    {maybe_sanitize_url(label)}")
        except Exception as exc:
            failures += 1
            click.echo(f"FAIL  {maybe_sanitize_url(label)}: {exc}")
    lease.nodes.close()
    click.echo(f"beat lease ttl={s.lease_ttl:g}s renew={s.renew_interval:.3g}s missed_runs={s.missed_runs}")
    if failures * 2 >= len(s.redis_urls):
        raise click.ClickException(f"{failures} of {len(s.redis_urls)} nodes unreachable: no majority")
