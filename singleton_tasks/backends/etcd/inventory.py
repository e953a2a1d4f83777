"""Listing the leases kept in an etcd cluster, for operators (``celery singleton status``).

Guarantees: the lease keys under the prefix (the format of ``keys.lease_key``, its one home)
are read in one linearizable range through the cluster's endpoints in turn, so every lease
held at that revision is listed, with its holder as ``EtcdLease.holder`` shows it. Each
endpoint is then asked alone for the same range, so an operator sees which members answer and
what each returns. Nothing read is trusted or run (owners go through ``parse_owner``), and no
key is written.

Not guaranteed: that the endpoints' answers come from one revision (they are read one after
another); time left is asked once per etcd lease, in whole seconds as etcd counts it.
"""

from __future__ import annotations

from typing import Sequence

from ... import keys
from ...backend import LeaseState, NodeLease, parse_owner
from ...errors import MalformedLeaseValue, foreign_value
from .client import EtcdClient
from .config import EtcdConfig
from .lease import holder_of
from .wire import KV

_MARK = "\0"  # stands for the name in a key built by keys.lease_key; never in a prefix


def _lease_keys(client: EtcdClient, prefix: str) -> dict[str, KV]:
    """Lease name -> its key, for every lease key ``client`` finds under ``prefix``."""
    head, tail = keys.lease_key(prefix, _MARK).split(_MARK)
    found = {}
    for kv in client.range_prefix(head):
        name = kv.key[len(head):len(kv.key) - len(tail)]
        if kv.key.endswith(tail) and name and not any(c in name for c in "{}"):
            found[name] = kv
    return found


def list_leases(client: EtcdClient, config: EtcdConfig, timeout: float, prefix: str,
                names: Sequence[str] | None = None) -> list[LeaseState]:
    """``Backend.leases`` on one cluster; raises ``LeaseError`` when no endpoint answers."""
    cluster = _lease_keys(client, prefix)
    chosen = sorted(cluster) if names is None else list(names)
    per_endpoint: dict[str, dict[str, KV] | str] = {}
    for index, label in enumerate(config.labels):
        single = EtcdClient(config.only(index), timeout)
        try:
            per_endpoint[label] = _lease_keys(single, prefix)
        except Exception as exc:  # an endpoint's failure is its answer, shown, never raised
            per_endpoint[label] = str(exc)
        finally:
            single.close()
    states = []
    for name in chosen:
        kv = cluster.get(name)
        holder, error = None, None
        try:
            holder = holder_of(client, kv)
        except MalformedLeaseValue as exc:
            error = str(exc)
        ttl = holder["ttl"] if holder is not None else None
        nodes = {label: _answer(answer, name, kv, ttl) for label, answer in per_endpoint.items()}
        states.append(LeaseState(name, holder, nodes, error))
    return states


def _answer(answer: dict[str, KV] | str, name: str, cluster_kv: KV | None, ttl: float | None) -> NodeLease:
    if isinstance(answer, str):
        return NodeLease(error=answer)
    kv = answer.get(name)
    if kv is None:
        return NodeLease()
    info = parse_owner(kv.value)
    if info is None:
        return NodeLease(error=f"key {kv.key!r} {foreign_value(kv.key, kv.value)}")
    # The time left is the etcd lease's, one per cluster: known when this endpoint saw the same key.
    same = cluster_kv is not None and cluster_kv.lease == kv.lease
    return NodeLease(owner=str(info["id"]), token=kv.create_revision, ttl=ttl if same else None)
