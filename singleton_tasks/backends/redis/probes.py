"""Checks of the Redis nodes a lease lives on: what would silently break its guarantees.

``exercise_node`` (for ``celery singleton check``) runs the library's real operations on one
node; ``eviction_warnings`` (at start-up) reports a memory policy that can delete our keys;
``cluster_refusals`` (both) names the nodes that are part of a Redis Cluster, which is not
supported as a lease node.

An evicting memory policy lets Redis delete a lease, a fence or a slot record when memory runs
short: leases end early (needless elections), a fence forgets its history, a slot runs twice.
Only ``noeviction`` keeps every key; a full node then refuses writes with an OOM error instead,
which the lease reports as a failing node.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from redis.exceptions import RedisError

from ... import keys
from ...backend import Claim
from .lease import Lease
from .records import FencedRecords, claim_slot
from .nodes import ClusterNodeRefused, NodeSet, cluster_refusal, is_cluster_info
from .quorum import describe

SAFE_POLICY = "noeviction"


def cluster_problem(label: str, client: Any) -> str | None:
    """Why node ``label`` is refused as a Redis Cluster node, or None (also when it cannot tell)."""
    try:
        info = client.info("cluster")
    except ClusterNodeRefused as exc:  # a client made from a URL refuses the node as it connects
        return str(exc)
    except (RedisError, OSError):  # unreachable or INFO not allowed: other checks report it
        return None
    return cluster_refusal(label) if is_cluster_info(info) else None


def cluster_refusals(nodes: NodeSet) -> list[str]:
    """One line per node that is part of a Redis Cluster."""
    found = (cluster_problem(label, client) for label, client in zip(nodes.labels, nodes.clients))
    return [problem for problem in found if problem is not None]


def eviction_warnings(nodes: NodeSet) -> list[str]:
    """One line per node whose memory policy can evict our keys, or that will not tell."""
    warnings = []
    for label, client in zip(nodes.labels, nodes.clients):
        try:
            reply = client.config_get("maxmemory*")
        except (RedisError, OSError) as exc:
            warnings.append(f"{label}: cannot read maxmemory-policy ({describe(exc)}); make sure it is "
                            f"{SAFE_POLICY!r}, or allow this user 'config|get'")
            continue
        found = {_text(k): _text(v) for k, v in reply.items()}
        policy = found.get("maxmemory-policy", "")
        if policy != SAFE_POLICY:
            limit = found.get("maxmemory", "?")
            warnings.append(f"{label}: maxmemory-policy is {policy!r} (maxmemory {limit}): Redis may evict lease, "
                            f"fence and slot keys when memory is full; set maxmemory-policy {SAFE_POLICY}")
    return warnings


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def exercise_node(nodes: NodeSet, index: int, prefix: str, timeout: float = 1.0) -> str | None:
    """Run every operation the library needs on node ``index`` alone; the first failure, or None.

    A check lease (acquire, renew, holder, a fenced write and read, a slot claim, release with its notice to
    standbys, a second grant whose token must be one more) under ``prefix``, on keys of its
    own that are deleted afterwards. A PING proves
    little: a user allowed only PING, or a Sentinel port, answers it.
    """
    client = nodes.clients[index]
    refused = cluster_problem(nodes.labels[index], client)
    if refused is not None:
        return f"cluster: {refused}"
    single = NodeSet([client], timeout)
    name = f"check:{os.getpid()}:{secrets.token_hex(4)}"
    lease = Lease(name, single, ttl=10.0, prefix=prefix)
    step = "acquire"
    try:
        if not lease.acquire(blocking=False):
            return f"acquire: {lease.unreachable or 'refused'}"
        first = lease.token
        assert first is not None
        step = "renew"
        if not lease.renew():
            return "renew: refused"
        step = "holder"
        if lease.holder() is None:
            return "holder: the lease is not shown as held"
        step = "fenced write"
        records = FencedRecords(single, f"{prefix}{{{name}}}:records")
        records.write(first, {"check": {"ok": True}})
        step = "fenced read"
        if "check" not in records.read_all():
            return "fenced read: the record just written is missing"
        step = "slot claim"
        claim = claim_slot(single, keys.slots_key(prefix, name), 1, 0, 10.0, keep=0)  # keep=0: trims at once
        if claim.outcome is not Claim.CLAIMED:
            return f"slot claim: {claim.detail}"
        step = "release notification"
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(lease.channel)
            reply = pubsub.get_message(timeout=timeout)
            if not reply or reply.get("type") != "subscribe":
                return f"release notification: no subscription confirmed ({reply!r})"
        finally:
            pubsub.close()
        step = "release notification (publish)"
        client.publish(lease.channel, "check")
        step = "release"
        lease.release()
        if client.get(lease.key) is not None:
            return "release: the lease key is still there"
        step = "second grant"
        if not lease.acquire(blocking=False):
            return f"second grant: {lease.unreachable or 'refused'}"
        if lease.token != first + 1:
            return f"second grant: token {lease.token} after {first}, not one more (is INCR allowed?)"
        lease.release()
        step = "clean-up"
        client.delete(lease.key, lease.fence_key, f"{prefix}{{{name}}}:records", keys.slots_key(prefix, name))
        return None
    except Exception as exc:  # every failure is the node's answer, reported, never raised
        return f"{step}: {describe(exc)}"
    finally:
        lease.release()
