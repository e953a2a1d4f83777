"""A leader lease on one etcd cluster (etcd's election recipe), with the key's create revision as token.

Guarantees (Raft makes the store linearizable; no clock decides who holds the key):

* At most one holder: acquiring is one Txn, ``create_revision(key) == 0`` -> put our owner
  value attached to a fresh etcd lease. The key lives while that etcd lease does; etcd expires
  it by its leader's clock, at least ``ceil(ttl)`` s after the grant or keepalive arrived, which
  is after the monotonic instant this process took before sending it. ``held`` is True only
  until ``timing.validity_deadline`` of that instant, ``ttl`` minus a drift margin.
* The fencing token is the key's create revision: etcd's revision is one cluster-wide counter,
  so a later holder's key always has a larger one, whatever restarts or leader changes happen
  (unless a cluster is restored from an older snapshot: see ``exceed``).
* A renewal is a keepalive *and* a guarded write: a Txn that rewrites our value only while the
  key still has our create revision and our etcd lease. A keepalive alone is no proof (etcd
  < 3.5.23 and < 3.4.38 can answer one after a revoke). A keepalive that finds the etcd lease
  gone, or a guard that fails, drops the grant at once; errors leave it held until its old
  deadline, as for Redis.
* A failed attempt revokes the etcd lease it granted (tooz leaks one per attempt).
* ``on_release`` watches the key: a release *or an expiry* wakes standbys at once.

Not guaranteed: that a holder notices a loss before its deadline (a paused process must check
``held`` or present its token to a fenced resource). Takeover after a crash takes the etcd
lease's remaining TTL (``ceil(ttl)``, at least etcd's minimum, about 1.5 election timeouts)
plus up to 0.5 s (the lessor checks expiry twice a second). An etcd leader change renews every
lease to its full TTL, so during member churn a failover can take up to about 2 x TTL: safe,
never shorter. Every renewal writes one revision of the key: run etcd with auto-compaction
(``--auto-compaction-retention``), or its history grows until the space quota.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ...backend import new_owner, parse_owner
from ...clock import Clock, monotonic
from ...errors import AccessDenied, ConfigurationError, LeaseError, MalformedLeaseValue, foreign_value
from ...keys import lease_key
from ...timing import MIN_TTL, default_retry_interval, jittered, validity_deadline
from .client import EtcdClient, EtcdDenied, KV, compare_create, compare_lease, delete, get, put

log = logging.getLogger("singleton_tasks.etcd.lease")

#: The highest token this process saw per cluster and key: a grant never hands out one at or
#: below it. Revisions only go back when a cluster is restored from a snapshot or rebuilt empty.
_seen_tokens: dict[tuple[tuple[str, ...], str], int] = {}
_seen_lock = threading.Lock()


@dataclass(frozen=True)
class _Grant:
    owner: str
    token: int
    lease_id: int  # the etcd lease the key is attached to
    deadline: float


class EtcdLease:
    """A named lease held by at most one owner at a time; see the module docstring.

    ``client`` is shared by every lease of a backend. ``ttl`` is in seconds (etcd's lease is
    ``ceil(ttl)``); ``retry_interval`` the mean pause between blocking acquire attempts.
    """

    def __init__(self, client: EtcdClient, name: str, ttl: float = 10.0, *, prefix: str = "singleton:",
                 retry_interval: float | None = None, clock: Clock = monotonic) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in "{}"):
            raise ConfigurationError("name", name, "a non-empty string without braces")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < MIN_TTL:
            raise ConfigurationError("ttl", ttl, f"a number of seconds >= {MIN_TTL}")
        self.name = name
        self.ttl = float(ttl)
        self.retry_interval = retry_interval if retry_interval is not None else default_retry_interval(self.ttl)
        if self.retry_interval <= 0:
            raise ConfigurationError("retry_interval", retry_interval, "a positive number of seconds")
        self.client = client
        self.key = lease_key(prefix, name)
        self._clock = clock
        self._grant: _Grant | None = None
        self._unreachable: str | None = None
        self._denied: str | None = None
        self._problems: dict[str, str] = {}  # topic -> what to log when it is resolved
        self._history = (tuple(client.labels), self.key)
        self._lock = threading.Lock()  # serialises acquire/renew/release; reads need none

    # -- local state, no I/O -------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True only while the current grant's validity window lasts."""
        grant = self._grant
        return grant is not None and self._clock() < grant.deadline

    def valid_for(self) -> float:
        """Seconds of guaranteed validity left; 0.0 when not held."""
        grant = self._grant
        return max(0.0, grant.deadline - self._clock()) if grant is not None else 0.0

    @property
    def token(self) -> int | None:
        """The fencing token (the key's create revision) of the current grant, or None when not held."""
        grant = self._grant
        return grant.token if grant is not None and self._clock() < grant.deadline else None

    @property
    def unreachable(self) -> str | None:
        """Why the last acquire failed when errors, not another holder, kept it; else None."""
        return self._unreachable

    # -- network operations --------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lease. Blocking waits (up to ``timeout`` seconds) with jittered retries.

        A blocking acquire raises ``AccessDenied`` when the cluster refuses the credentials or
        a permission: that does not pass by waiting.
        """
        give_up = None if timeout is None else self._clock() + timeout
        while True:
            if self._try_acquire():
                return True
            if not blocking:
                return False
            if self._denied is not None:
                raise AccessDenied(self.name, self._denied)
            pause = jittered(self.retry_interval)
            if give_up is not None:
                left = give_up - self._clock()
                if left <= 0:
                    return False
                pause = min(pause, left)
            time.sleep(pause)

    def renew(self) -> bool:
        """Extend the current grant: keepalive, then the guarded write. False when not extended.

        The new validity counts from the monotonic time taken before the keepalive was sent.
        """
        with self._lock:
            grant = self._grant
            if grant is None:
                return False
            started = self._clock()
            if started >= grant.deadline:
                self._grant = None
                log.warning("lease %s: validity ran out before renewal", self.name)
                return False
            try:
                ttl_left = self.client.keepalive(grant.lease_id)
                if ttl_left <= 0:
                    return self._lost(grant, "its etcd lease expired or was revoked")
                answer = self.client.txn(
                    [compare_create(self.key, grant.token), compare_lease(self.key, grant.lease_id)],
                    [put(self.key, grant.owner, grant.lease_id)], [get(self.key)])
            except LeaseError as exc:
                self._report("error", f"renew failed: {exc}", resolved="renews again")
                return False
            self._report("error", None)
            if not answer.succeeded:
                kv = answer.kv(0)
                why = "the key is gone" if kv is None else f"the key now has create revision {kv.create_revision}"
                return self._lost(grant, f"{why} (etcd lease {grant.lease_id:x})")
            deadline = validity_deadline(started, min(self.ttl, float(ttl_left)))
            if self._clock() >= deadline:
                return False
            self._grant = _Grant(grant.owner, grant.token, grant.lease_id, deadline)
            return True

    def release(self) -> None:
        """Delete the key if it is still ours, revoke the etcd lease. Safe to call any number of times."""
        with self._lock:
            grant, self._grant = self._grant, None
            if grant is not None:
                self._drop(grant.token, grant.lease_id)

    def exceed(self, token: int) -> None:
        """Refuse later grants whose token is not above ``token`` (one a fenced resource accepted).

        etcd's revisions never go back, so this only matters for a cluster restored from an
        older snapshot or rebuilt empty: such grants are given up again with an ERROR.
        """
        with _seen_lock:
            if token > _seen_tokens.get(self._history, 0):
                _seen_tokens[self._history] = token

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now: host, pid, id, token (create revision), ttl (s left); None if free.

        Raises ``LeaseError`` when no endpoint answers, ``MalformedLeaseValue`` for a value
        this library never writes.
        """
        kv, _ = self.client.range(self.key)
        if kv is None:
            return None
        info = parse_owner(kv.value)
        if info is None:
            raise MalformedLeaseValue(self.key, kv.value, ",".join(self.client.labels))
        ttl = self.client.time_to_live(kv.lease) if kv.lease else -1
        return {**info, "token": kv.create_revision, "ttl": float(max(ttl, 0))}

    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from a background thread whenever the key is deleted (released or
        expired). Returns a function that stops the watch; the caller must call it."""
        return self.client.watch_deletes(self.key, callback)

    def close(self) -> None:
        self.release()

    def __enter__(self) -> "EtcdLease":
        if not self.acquire():
            raise LeaseError(f"lease {self.name}: not acquired")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<EtcdLease {self.name!r} ttl={self.ttl} held={self.held}>"

    # -- internals -----------------------------------------------------------------------

    def _try_acquire(self) -> bool:
        with self._lock:
            if self._grant is not None and self._clock() < self._grant.deadline:
                return True
            self._unreachable = self._denied = None
            owner = new_owner()
            started = self._clock()
            try:
                lease_id, granted = self.client.grant(math.ceil(self.ttl))
            except LeaseError as exc:
                return self._failed("grant", exc)
            try:
                answer = self.client.txn([compare_create(self.key, 0)], [put(self.key, owner, lease_id)],
                                         [get(self.key)])
            except LeaseError as exc:
                self._revoke(lease_id)
                return self._failed("acquire", exc)
            self._report("error", None)
            kv = answer.kv(0) if not answer.succeeded else None
            if answer.succeeded:
                token = answer.revision  # the put's revision: the key's create revision
            elif kv is not None and kv.lease == lease_id:
                token = kv.create_revision  # ours: applied by an endpoint whose answer was lost
            else:
                self._revoke(lease_id)  # never leave one etcd lease behind per attempt
                self._check_owner(kv)
                return False
            deadline = validity_deadline(started, min(self.ttl, float(granted)))
            with _seen_lock:
                seen = _seen_tokens.get(self._history, 0)
            if token <= seen:
                self._report("floor", f"token {token} is not above {seen}, one already seen or accepted: "
                              "was the cluster restored from a snapshot or rebuilt? Not taking the lease",
                              logging.ERROR, "tokens are above the highest one seen again")
                self._drop(token, lease_id)
                return False
            self._report("floor", None)
            if self._clock() >= deadline:
                self._drop(token, lease_id)
                return False
            self._grant = _Grant(owner, token, lease_id, deadline)
            self.exceed(token)
            log.debug("lease %s: acquired, token %d, valid %.3fs", self.name, token, deadline - self._clock())
            return True

    def _failed(self, op: str, exc: LeaseError) -> bool:
        self._unreachable = str(exc)
        if isinstance(exc, EtcdDenied):
            self._denied = str(exc)
        self._report("error", f"{op} failed: {exc}",
                     logging.ERROR if isinstance(exc, EtcdDenied) else logging.WARNING, "answers again")
        return False

    def _lost(self, grant: _Grant, why: str) -> bool:
        self._grant = None
        log.warning("lease %s: lost: %s", self.name, why)
        self._revoke(grant.lease_id)  # it may still exist (the key deleted by someone else)
        return False

    def _drop(self, token: int, lease_id: int) -> None:
        # The guarded delete hands over at once (watchers wake); the revoke also ends the etcd
        # lease. Either alone frees the key, so a failure of one is only logged.
        try:
            self.client.txn([compare_create(self.key, token)], [delete(self.key)])
        except LeaseError as exc:
            log.warning("lease %s: release: could not delete the key (%s); revoking its etcd lease", self.name, exc)
        self._revoke(lease_id)

    def _revoke(self, lease_id: int) -> None:
        try:
            self.client.revoke(lease_id)
        except LeaseError as exc:
            log.info("lease %s: could not revoke etcd lease %x (%s); it expires after its TTL",
                     self.name, lease_id, exc)

    def _check_owner(self, kv: KV | None) -> None:
        """Report, once, a key holding a value this library never writes."""
        if kv is not None and parse_owner(kv.value) is None:
            self._report("value", f"key {self.key!r} {foreign_value(self.key, kv.value)}; nobody can take the "
                         "lease until it is deleted", logging.ERROR, f"the foreign value in {self.key} is gone")
        else:
            self._report("value", None)

    def _report(self, topic: str, problem: str | None, level: int = logging.WARNING, resolved: str = "") -> None:
        """Log ``problem`` when it appears and ``resolved`` when it is gone, once each."""
        if problem is None:
            gone = self._problems.pop(topic, None)
            if gone is not None:
                log.warning("lease %s: %s", self.name, gone)
        elif topic not in self._problems:
            self._problems[topic] = resolved
            log.log(level, "lease %s: %s", self.name, problem)
        else:
            log.debug("lease %s: still: %s", self.name, problem)
