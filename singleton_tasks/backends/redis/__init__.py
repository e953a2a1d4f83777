"""The Redis backend: a quorum lease over 1, 3 or 5 independent Redis masters, with fencing tokens.

A master may be managed by Sentinel (a ``redis+sentinel://`` URL: ``sentinel.py``); the node
then follows its master through failovers.

See ``lease.py`` for the guarantees and what they assume (node clocks within 1 % in rate, no
majority of nodes forgetting its data at once), ``records.py`` for fenced writes and slot
claims, ``probes.py`` for the checks behind ``celery singleton check`` and start-up warnings.
"""

from __future__ import annotations

from typing import Any, Sequence

from ... import keys
from ...backend import ClaimResult, LeaseProtocol, LeaseState
from ...clock import Clock, monotonic
from ...errors import ConfigurationError, LeaseError
from . import scripts, sentinel
from .entries import RedisEntries
from .inventory import list_leases
from .lease import Lease
from .nodes import NodeSet, NodeSpec, check_independent
from .probes import cluster_refusals, eviction_warnings, exercise_node
from .quorum import tally
from .records import FencedRecords, claim_slot

SCHEMES = ("redis://", "rediss://", "unix://", sentinel.SCHEME)

__all__ = ["RedisBackend", "Lease", "NodeSet", "FencedRecords", "claim_slot", "SCHEMES", "parse_urls"]


def parse_urls(setting: str, value: Any) -> tuple[str, ...]:
    """The node URLs of ``value`` (a URL, a list of them, or one string of them joined with commas).

    An odd number, each a redis://, rediss:// or unix:// URL or a ``redis+sentinel://`` URL (one
    sentinel-managed master: ``sentinel.py``), no node twice however spelled; otherwise
    ``ConfigurationError`` naming ``setting`` and ``value``.
    """
    urls = _split(setting, value) if isinstance(value, str) else value
    if isinstance(urls, (list, tuple)) and any(isinstance(u, str) and u.startswith(sentinel.KOMBU_SCHEME) for u in urls):
        raise ConfigurationError(setting, value, sentinel.KOMBU_HINT)
    if not isinstance(urls, (list, tuple)) or not urls or not all(
        isinstance(u, str) and u.startswith(SCHEMES) for u in urls
    ):
        raise ConfigurationError(setting, value, "a redis:// URL or a non-empty list of them")
    for url in urls:
        if url.startswith(sentinel.SCHEME):
            try:
                sentinel.parse_sentinel_url(url)
            except ValueError as exc:
                raise ConfigurationError(setting, value, f"{sentinel.FORM} ({url}: {exc})") from None
    if len(urls) % 2 == 0:
        raise ConfigurationError(setting, value, "an odd number of independent Redis nodes (1, 3, 5)")
    check_independent(setting, value, urls)
    return tuple(urls)


def _split(setting: str, value: str) -> list[str]:
    if "," not in value:
        return [value]
    parts: list[str] = []
    for part in (part.strip() for part in value.split(",")):
        if parts and parts[-1].startswith(sentinel.SCHEME) and "/" not in parts[-1][len(sentinel.SCHEME):]:
            parts[-1] += "," + part  # a Sentinel URL's own list of sentinels, before its /SERVICE
        else:
            parts.append(part)
    if not all(part.startswith(SCHEMES) for part in parts):
        raise ConfigurationError(
            setting, value,
            "a Redis URL or a list of them; a comma separates node URLs, but not every part between commas"
            " is a redis://, rediss:// or unix:// URL (write a comma inside a URL, e.g. in a password, as %2C)",
        )
    return parts


class RedisBackend:
    """``backend.Backend`` over independent Redis nodes, all leases sharing one ``NodeSet``."""

    def __init__(self, nodes: NodeSet | NodeSpec | Sequence[NodeSpec], *, prefix: str = "singleton:",
                 timeout: float = 1.0) -> None:
        self.nodes = nodes if isinstance(nodes, NodeSet) else NodeSet(nodes, timeout)
        self.prefix = prefix
        self.timeout = timeout
        self.labels = self.nodes.labels

    def lease(self, name: str, ttl: float, *, retry_interval: float | None = None,
              clock: Clock | None = None) -> LeaseProtocol:
        return Lease(name, self.nodes, ttl, prefix=self.prefix, retry_interval=retry_interval,
                     op_timeout=self.timeout, clock=clock or monotonic)

    def records(self, schedule: str) -> FencedRecords:
        return FencedRecords(self.nodes, keys.schedule_key(self.prefix, schedule))

    def entries(self, schedule: str) -> RedisEntries:
        return RedisEntries(self.nodes, keys.entries_key(self.prefix, schedule),
                            keys.entries_version_key(self.prefix, schedule),
                            keys.entries_channel(self.prefix, schedule))

    def claim_slot(self, lease: LeaseProtocol, entry: str, due_ms: int, attempt: int,
                   memory: float) -> ClaimResult:
        # Not guarded by the lease on the nodes (the caller holds it): Redis cannot compare
        # another key's owner inside a script without touching a second hash slot.
        return claim_slot(self.nodes, keys.slots_key(self.prefix, entry), due_ms, attempt, memory)

    def startup_warnings(self) -> list[str]:
        # A cluster node fails every operation (nodes.ClusterNodeRefused): that is all to say.
        return cluster_refusals(self.nodes) or eviction_warnings(self.nodes)

    def check(self) -> list[tuple[str, str | None]]:
        return [(label, exercise_node(self.nodes, i, self.prefix, self.timeout)) for i, label in enumerate(self.labels)]

    def force_release(self, name: str) -> bool:
        replies = self.nodes.run_script(scripts.FORCE_RELEASE, [keys.lease_key(self.prefix, name)],
                                        [keys.release_channel(self.prefix, name)])
        counted = tally(replies, lambda r: r == 1)
        if counted.failed and len(counted.failed) >= self.nodes.quorum:
            raise LeaseError(f"lease {name}: not released: {counted.summary(self.labels)}")
        return bool(counted.accepted)

    def leases(self, names: Sequence[str] | None = None) -> list[LeaseState]:
        return list_leases(self.nodes, self.prefix, names)

    def close(self) -> None:
        self.nodes.close()
