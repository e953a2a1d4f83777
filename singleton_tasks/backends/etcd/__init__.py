"""The etcd backend: one etcd cluster (Raft), etcd lease keys as leases, create revisions as tokens.

``EtcdBackend("etcd://host1:2379,host2:2379,host3:2379")`` keeps every guarantee of
``singleton_tasks.backend`` without any clock assumption for safety: etcd is linearizable,
a lease key's create revision strictly increases cluster-wide, and fenced writes are Txns
that land only while their writer still holds the lease (see ``lease`` and ``records``).

Not guaranteed: progress without a majority of the cluster's members (an acquire or renewal
fails, a holder is dropped at its deadline); that a cluster restored from an older snapshot
keeps its revisions (tokens would go back: see ``EtcdLease.exceed``). Advice for operators:
a current etcd 3.5 or 3.6, three or five members, and auto-compaction (every renewal writes a
revision). ``startup_warnings`` names the known-bad versions.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from typing import Sequence

from ...backend import Claim, ClaimResult, LeaseProtocol, LeaseState
from ...clock import Clock, monotonic
from ...errors import ConfigurationError, LeaseError
from ...keys import beat_lease_name, lease_key, slots_key
from .client import EtcdClient
from .wire import b64
from .config import EtcdConfig, parse_etcd_url
from .entries import EtcdEntries
from .inventory import list_leases
from .lease import EtcdLease
from .records import EtcdRecords, claim_slot

__all__ = ["EtcdBackend", "EtcdClient", "EtcdConfig", "EtcdLease", "EtcdRecords", "parse_etcd_url"]


class EtcdBackend:
    """One etcd cluster shared by the leases of a process (``backend.Backend``).

    ``url_or_config``: an ``etcd://`` or ``etcds://`` URL (``parse_etcd_url``) or an
    ``EtcdConfig``. ``timeout`` bounds each request to one endpoint (s).
    """

    def __init__(self, url_or_config: str | EtcdConfig, *, prefix: str = "singleton:", timeout: float = 1.0) -> None:
        config = url_or_config if isinstance(url_or_config, EtcdConfig) else parse_etcd_url("url", url_or_config)
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", prefix, "a string")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError("timeout", timeout, "a positive number of seconds")
        self.config = config
        self.prefix = prefix
        self.timeout = float(timeout)
        self.client = EtcdClient(config, self.timeout)
        self.labels: Sequence[str] = config.labels

    def lease(self, name: str, ttl: float, *, retry_interval: float | None = None,
              clock: Clock | None = None) -> EtcdLease:
        return EtcdLease(self.client, name, ttl, prefix=self.prefix, retry_interval=retry_interval,
                         clock=clock or monotonic)

    def records(self, schedule: str) -> EtcdRecords:
        return EtcdRecords(self.client, self.prefix, schedule)

    def entries(self, schedule: str) -> EtcdEntries:
        return EtcdEntries(self.client, self.prefix, schedule)

    def claim_slot(self, lease: LeaseProtocol, entry: str, due_ms: int, attempt: int, memory: float) -> ClaimResult:
        return claim_slot(self.client, self.prefix, lease, entry, due_ms, attempt, memory)

    def startup_warnings(self) -> list[str]:
        """Endpoints that do not answer, or answer for another cluster; known-bad etcd versions."""
        warnings: list[str] = []
        clusters: dict[str, list[str]] = {}
        versions: dict[str, str] = {}
        for index, label in enumerate(self.labels):
            single = EtcdClient(self.config.only(index), self.timeout)
            try:
                status = single.status()
                clusters.setdefault(str(status["header"]["cluster_id"]), []).append(label)
                versions[label] = str(status.get("version", "?"))
                for alarm in status.get("errors", []):
                    warnings.append(f"{label}: the member reports {alarm}")
                if status.get("isLearner"):
                    warnings.append(f"{label}: a learner, which serves no requests; list voting members")
            except Exception as exc:  # a check never raises
                warnings.append(f"{label}: not reachable ({exc})")
            finally:
                single.close()
        if len(clusters) > 1:
            warnings.append("the endpoints belong to different etcd clusters: "
                            + "; ".join(f"cluster {cid}: {', '.join(labels)}" for cid, labels in clusters.items()))
        members: int | None = None
        if versions:
            try:
                members = self.client.member_count()
            except Exception as exc:  # pragma: no cover - the status calls just answered
                warnings.append(f"cannot list the cluster's members ({exc})")
        for label, version in versions.items():
            warnings.extend(f"{label}: {line}" for line in version_warnings(version, members))
        return warnings

    def check(self) -> list[tuple[str, str | None]]:
        """Every operation through each endpoint alone: ``(label, None)`` or ``(label, "operation: error")``."""
        results: list[tuple[str, str | None]] = []
        for index, label in enumerate(self.labels):
            single = EtcdClient(self.config.only(index), self.timeout)
            try:
                results.append((label, exercise_endpoint(single, self.prefix)))
            finally:
                single.close()
        return results

    def force_release(self, name: str) -> bool:
        kv, _ = self.client.range(lease_key(self.prefix, name))
        if kv is None:
            return False
        if kv.lease:
            self.client.revoke(kv.lease)  # deletes the key; the holder's next keepalive finds it gone
        else:
            self.client.txn([], [{"request_delete_range": {"key": b64(kv.key)}}])
        return True

    def leases(self, names: Sequence[str] | None = None) -> list[LeaseState]:
        return list_leases(self.client, self.config, self.timeout, self.prefix, names)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"<EtcdBackend {','.join(self.labels)} prefix={self.prefix!r}>"


def version_warnings(version: str, members: int | None) -> list[str]:
    """What is known to be wrong with etcd ``version`` (e.g. ``"3.5.1"``) in a cluster of ``members``."""
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not found:
        return [f"reports an unknown version {version!r}"]
    v = tuple(int(part) for part in found.groups())
    if v < (3, 4, 0):
        return [f"etcd {version} is not supported: use 3.5 or later (3.4 at the least)"]
    lines = []
    if v[:2] == (3, 4):
        lines.append(f"etcd {version}: the 3.4 series is end of life; upgrade to a current 3.5 or 3.6")
    if (3, 5, 0) <= v <= (3, 5, 2):
        lines.append(f"etcd {version} can corrupt data (members diverge) under load: etcd says not to use "
                     "3.5.0-3.5.2 in production; upgrade to a current 3.5")
    if (3, 5, 0) <= v <= (3, 5, 4) and members == 1:
        lines.append(f"etcd {version} in a single-member cluster can lose acknowledged writes on a crash "
                     "(a fencing token could be handed out twice); upgrade to 3.5.5 or later, or run 3 members")
    return lines


def exercise_endpoint(client: EtcdClient, prefix: str) -> str | None:
    """Run every operation the library needs through ``client``'s one endpoint: the first failure, or None.

    A check lease under ``prefix`` on keys of its own (deleted afterwards): status, acquire,
    renew, holder, a fenced write and read, a slot claim, the watch that wakes standbys on
    release, release, and a second grant whose token must be larger.
    """
    schedule = f"check:{os.getpid()}:{secrets.token_hex(4)}"
    lease = EtcdLease(client, beat_lease_name(schedule), ttl=10.0, prefix=prefix)
    records = EtcdRecords(client, prefix, schedule)
    entry = f"{schedule}/check"
    step = "status"
    stop_watch = None
    try:
        client.status()
        step = "acquire"
        if not lease.acquire(blocking=False):
            return f"acquire: {lease.unreachable or 'refused (the check key is held)'}"
        first = lease.token
        assert first is not None
        step = "renew"
        if not lease.renew():
            return "renew: refused"
        step = "holder"
        holder = lease.holder()
        if holder is None or holder["token"] != first:
            return f"holder: the lease is not shown as held with token {first} ({holder})"
        step = "fenced write"
        records.write(first, {"check": {"ok": True}})
        step = "fenced read"
        if "check" not in records.read_all():
            return "fenced read: the record just written is missing"
        step = "slot claim"
        claim = claim_slot(client, prefix, lease, entry, 1, 0, 10.0, keep=0)
        if claim.outcome is not Claim.CLAIMED:
            return f"slot claim: {claim.detail}"
        step = "release notification"
        released = threading.Event()
        stop_watch = client.watch_deletes(lease.key, released.set, start_revision=first + 1)
        step = "release"
        lease.release()
        if client.range(lease.key)[0] is not None:
            return "release: the lease key is still there"
        if not released.wait(2 * client.timeout + 1):
            return "release notification: the watch did not report the release"
        step = "second grant"
        if not lease.acquire(blocking=False):
            return f"second grant: {lease.unreachable or 'refused'}"
        if lease.token is None or lease.token <= first:
            return f"second grant: token {lease.token} after {first}, not larger"
        lease.release()
        step = "clean-up"
        client.delete_prefix(records.prefix)
        slots = client.range(slots_key(prefix, entry))[0]
        if slots is not None and slots.lease:
            client.revoke(slots.lease)  # deletes the slot record with it
        return None
    except Exception as exc:  # every failure is the endpoint's answer, reported, never raised
        return f"{step}: {exc}"
    finally:
        if stop_watch is not None:
            stop_watch()
        try:
            lease.release()
        except LeaseError:  # pragma: no cover - release logs its own failures
            pass
