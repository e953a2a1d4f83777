"""Listing the leases kept on a set of Redis nodes, for operators (``celery singleton status``).

Guarantees: every lease whose key a majority of nodes holds is listed, since its name is
looked for (``SCAN``, with a pattern built from ``keys.lease_key``, the one home of the format)
on every node and a majority of them must answer; a lease held on a minority only is listed
when one of those nodes answers. Each lease is then read in one round on every node
(``Lease.inspect``): nothing read is trusted, unpickled or run, and no key is written.

Not guaranteed: a consistent snapshot. Leases are read one after another, so a lease granted
or released meanwhile may show either way. Listing needs the ``SCAN`` command (``+scan`` in an
ACL); a node that refuses it counts as not answering.
"""

from __future__ import annotations

import re
from typing import Sequence

from redis.exceptions import RedisError

from ... import keys
from ...backend import LeaseState
from ...errors import LeaseError
from .lease import Lease
from .nodes import NodeSet
from .quorum import describe

#: Characters that mean something in a Redis glob pattern: matched literally when a prefix has them.
_GLOB = re.compile(r"([*?\[\]\\^])")
_MARK = "\0"  # stands for the name in a key built by keys.lease_key; never in a prefix


def lease_names(nodes: NodeSet, prefix: str) -> list[str]:
    """The names of the leases whose key any answering node holds, sorted.

    Raises ``LeaseError`` naming each failed node when fewer than a majority answered: a lease
    held by a majority might then be missing from the list.
    """
    head, tail = keys.lease_key(prefix, _MARK).split(_MARK)
    pattern = _GLOB.sub(r"\\\1", head) + "*" + _GLOB.sub(r"\\\1", tail)
    found: set[str] = set()
    failed: list[str] = []
    for label, client in zip(nodes.labels, nodes.clients):
        try:
            for raw in client.scan_iter(match=pattern, count=1000):
                key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                name = key[len(head):len(key) - len(tail)]
                if key.startswith(head) and key.endswith(tail) and name and not any(c in name for c in "{}"):
                    found.add(name)
        except (RedisError, OSError) as exc:
            failed.append(f"{label}: {describe(exc)}")
    if len(nodes) - len(failed) < nodes.quorum:
        raise LeaseError(f"cannot list the leases: fewer than {nodes.quorum} nodes answered ({'; '.join(failed)})")
    return sorted(found)


def list_leases(nodes: NodeSet, prefix: str, names: Sequence[str] | None = None) -> list[LeaseState]:
    """``Backend.leases``: the leases named, or every lease found by ``lease_names``."""
    chosen = lease_names(nodes, prefix) if names is None else list(names)
    # The TTL is never used by a read; any valid one will do.
    return [Lease(name, nodes, ttl=1.0, prefix=prefix).inspect() for name in chosen]
