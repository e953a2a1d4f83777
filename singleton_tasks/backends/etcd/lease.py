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
* ``on_release`` watches the key: a release *or an expiry* wakes standbys at once, and each
  renewal the watch shows (a new mod revision) tells a standby when that holder's validity
  ends at the latest: the holder's granted TTL after the standby saw the write (``free_in``).
  While the watch is healthy a standby asks the cluster nothing before then.
* Takeover of a holder that stopped renewing: once that much time has passed on the standby's
  clock, it deletes the key in a Txn guarded by the create *and* mod revision it saw, so a
  holder that renewed meanwhile is never touched, then acquires as usual. Every renewal started
  before its write was seen and counts at most ``ttl`` minus ``timing.clock_drift``, so this
  assumes only what ``held`` does: clocks that run at rates within that margin of each other.
  Fencing tokens stay clock-free.

Not guaranteed: that a holder notices a loss before its deadline (a paused process must check
``held`` or present its token to a fenced resource). Without a healthy watch, a crashed holder
is taken over at the standby's next attempt after that time, or when etcd expires its lease
(``ceil(ttl)``, at least etcd's minimum, plus up to 0.5 s: the lessor checks expiry twice a
second; an etcd leader change renews every lease to its full TTL). Every renewal writes one
revision of the key: run etcd with auto-compaction (``--auto-compaction-retention``), or its
history grows until the space quota.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, cast

from ...backend import new_owner, parse_owner
from ...clock import Clock, monotonic
from ...errors import LeaseError, MalformedLeaseValue, foreign_value
from ...keys import lease_key
from ...lease_base import Grant, LeaseBase
from ...timing import validity_deadline
from .client import EtcdClient, EtcdDenied
from .watch import KeyWatcher
from .wire import KV, compare_create, compare_lease, compare_mod, delete, get, put

log = logging.getLogger("singleton_tasks.etcd.lease")

#: The highest token this process saw per cluster and key: a grant never hands out one at or
#: below it. Revisions only go back when a cluster is restored from a snapshot or rebuilt empty.
_seen_tokens: dict[tuple[tuple[str, ...], str], int] = {}
_seen_lock = threading.Lock()

_F = TypeVar("_F", bound=Callable[..., Any])


def _acting(method: _F) -> _F:
    """The method's calls to the client are this lease's (they name it in node events)."""
    @functools.wraps(method)
    def wrapper(self: "EtcdLease", *args: Any, **kwargs: Any) -> Any:
        with self.client.acting_for(self.name):
            return method(self, *args, **kwargs)
    return cast(_F, wrapper)


def holder_of(client: EtcdClient, kv: KV | None) -> dict[str, Any] | None:
    """The holder a lease key ``kv`` names (None: no key): host, pid, id, token (its create
    revision), ttl (s its etcd lease has left, asked of ``client``). Raises
    ``MalformedLeaseValue`` for a value this library never writes; nothing read is run."""
    if kv is None:
        return None
    info = parse_owner(kv.value)
    if info is None:
        raise MalformedLeaseValue(kv.key, kv.value, ",".join(client.labels))
    ttl = client.time_to_live(kv.lease) if kv.lease else -1
    return {**info, "token": kv.create_revision, "ttl": float(max(ttl, 0))}


@dataclass(frozen=True)
class _Grant(Grant):
    lease_id: int  # the etcd lease the key is attached to


@dataclass(frozen=True)
class _Sighting:
    """Another holder's key as a standby last saw it written, and when (the standby's clock)."""

    create: int
    mod: int
    lease_id: int
    seen: float  # taken after the write was seen, so after that renewal started
    granted: int | None  # the TTL the holder's etcd lease was granted with; None: unknown

    def free_at(self) -> float | None:
        """The instant the holder's validity has surely ended, if it does not renew again."""
        return None if self.granted is None else self.seen + self.granted


class EtcdLease(LeaseBase[_Grant]):
    """A named lease held by at most one owner at a time; see the module docstring (and
    ``lease_base`` for the checks, the local state and the flow it shares with other stores).

    ``client`` is shared by every lease of a backend. ``ttl`` is in seconds (etcd's lease is
    ``ceil(ttl)``); ``retry_interval`` the mean pause between blocking acquire attempts.
    """

    _log = log

    def __init__(self, client: EtcdClient, name: str, ttl: float = 10.0, *, prefix: str = "singleton:",
                 retry_interval: float | None = None, clock: Clock = monotonic) -> None:
        super().__init__(name, ttl, retry_interval, clock)
        self.client = client
        self.key = lease_key(prefix, name)
        self._unreachable: str | None = None
        self._refused: str | None = None  # the last attempt's EtcdDenied: see _denied
        self._problems: dict[str, str] = {}  # topic -> what to log when it is resolved
        self._history = (tuple(client.labels), self.key)
        self._watchers: set[KeyWatcher] = set()  # started by on_release
        self._sighting: _Sighting | None = None  # replaced whole, from this thread or a watch
        self._sighting_lock = threading.Lock()
        self._deletions = 0  # deletes the watch heard: an answer sent before one may be stale

    @property
    def unreachable(self) -> str | None:
        """Why the last acquire failed when errors, not another holder, kept it; else None."""
        return self._unreachable

    def free_in(self) -> float | None:
        """While a watch of the key is healthy: seconds until the holder last seen renewing can no
        longer hold the lease, or a TTL when that is unknown (the watch wakes standbys at a
        release or an expiry; an attempt a TTL is a safety net). Else, and once that moment has
        passed without a take-over (the cluster did not answer), None: the usual pace."""
        if not self._watching():
            return None
        sighting = self._sighting
        free_at = sighting.free_at() if sighting is not None else None
        if free_at is None:
            return self.ttl
        left = free_at - self._clock()
        return left if left > 0 else None

    # -- network operations (acquire, renew, release: see LeaseBase) -------------------------

    def exceed(self, token: int) -> None:
        """Refuse later grants whose token is not above ``token`` (one a fenced resource accepted).

        etcd's revisions never go back, so this only matters for a cluster restored from an
        older snapshot or rebuilt empty: such grants are given up again with an ERROR.
        """
        with _seen_lock:
            if token > _seen_tokens.get(self._history, 0):
                _seen_tokens[self._history] = token

    @_acting
    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now: host, pid, id, token (create revision), ttl (s left); None if free.

        Raises ``LeaseError`` when no endpoint answers, ``MalformedLeaseValue`` for a value
        this library never writes.
        """
        kv, _ = self.client.range(self.key)
        return holder_of(self.client, kv)

    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from a background thread whenever the key is deleted (released or
        expired): a delete after this returns is heard (the watch starts at the revision read
        here, unless no endpoint answered). Returns a function that stops the watch; the caller
        must call it."""
        try:
            start: int | None = self.client.range(self.key)[1] + 1
        except LeaseError:
            start = None  # the watch reads it once an endpoint answers

        def deleted() -> None:
            with self._sighting_lock:
                self._deletions += 1
                self._sighting = None
            callback()

        watcher = KeyWatcher(self.client, self.key, deleted, start, on_put=self._saw_put).start()
        self._watchers.add(watcher)

        def stop() -> None:
            self._watchers.discard(watcher)
            watcher.stop()
        return stop

    def close(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<EtcdLease {self.name!r} ttl={self.ttl} held={self.held}>"

    # -- internals -----------------------------------------------------------------------

    @_acting
    def _extend(self, grant: _Grant, started: float) -> bool:
        """A keepalive, then the guarded write; the new validity counts from ``started``, taken
        before the keepalive was sent. Dropped at once when the etcd lease or the key is gone."""
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
        self._grant = _Grant(grant.owner, grant.token, deadline, lease_id=grant.lease_id)
        return True

    @_acting
    def _release(self, grant: _Grant) -> None:
        """Delete the key if it is still ours, then revoke the etcd lease."""
        self._drop(grant.token, grant.lease_id)

    def _watching(self) -> bool:
        return any(w.healthy for w in list(self._watchers))

    @_acting
    def _saw_put(self, kv: KV) -> None:
        self._see(kv, self._clock(), self._deletions)

    def _see(self, kv: KV | None, seen: float, deletions: int) -> None:
        """Remember another holder's key as written before ``seen``, read by a request sent when
        the watch had heard ``deletions`` deletes (a read sent before a delete was heard may
        show the deleted key: it is ignored). Only a sighting can lead to a delete, so none is
        kept of a gone key, our own, one without an etcd lease or one holding a value this
        library never writes."""
        grant = self._grant
        if (kv is None or not kv.lease or parse_owner(kv.value) is None
                or (grant is not None and kv.lease == grant.lease_id)):
            self._sighting = None
            return
        old = self._sighting
        if old is not None and kv.mod_revision <= old.mod:
            return  # a write heard again or late: the earlier sighting of it stands
        granted = old.granted if old is not None and old.lease_id == kv.lease else None
        if granted is None:
            try:
                granted = self.client.lease_ttls(kv.lease)[1]
            except LeaseError as exc:
                log.debug("lease %s: could not read etcd lease %x's TTL (%s)", self.name, kv.lease, exc)
        with self._sighting_lock:  # the watch and an attempt may both see: the newest write wins
            old = self._sighting
            if deletions == self._deletions and (old is None or kv.mod_revision > old.mod):
                self._sighting = _Sighting(kv.create_revision, kv.mod_revision, kv.lease, seen,
                                           granted if granted is not None and granted > 0 else None)

    def _clear_stale_holder(self, deletions: int) -> None:
        """Delete the sighted holder's key once its validity has surely ended, if the key is
        still as seen (the holder renewed otherwise: the sighting is refreshed instead)."""
        sighting = self._sighting
        free_at = sighting.free_at() if sighting is not None else None
        if sighting is None or free_at is None or self._clock() < free_at:
            return
        answer = self.client.txn([compare_create(self.key, sighting.create), compare_mod(self.key, sighting.mod)],
                                 [delete(self.key)], [get(self.key)])
        if answer.succeeded:
            self._sighting = None
            log.info("lease %s: taking over: the holder's key (token %d) was last renewed more than its %d s TTL "
                     "ago; deleted it", self.name, sighting.create, sighting.granted)
        else:
            log.debug("lease %s: not deleting: the key changed since it was seen at mod revision %d",
                      self.name, sighting.mod)
            self._see(answer.kv(0), self._clock(), deletions)

    def _denied(self) -> str | None:
        """Why the cluster refused the last attempt's credentials or a permission (``EtcdDenied``),
        which does not pass by waiting; None when it did not."""
        return self._refused

    @_acting
    def _try_acquire(self) -> bool:
        with self._lock:
            if self.held:
                return True
            self._unreachable = self._refused = None
            deletions = self._deletions
            sighting = self._sighting
            free_at = sighting.free_at() if sighting is not None else None
            if free_at is not None and self._clock() < free_at and self._watching():
                return False  # the holder renewed in time, as the watch shows: asking would be refused
            try:
                self._clear_stale_holder(deletions)
            except LeaseError as exc:
                return self._failed("take-over", exc)
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
                self._see(kv, self._clock(), deletions)
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
            self._grant = _Grant(owner, token, deadline, lease_id=lease_id)
            self._sighting = None
            self.exceed(token)
            log.debug("lease %s: acquired, token %d, valid %.3fs", self.name, token, deadline - self._clock())
            return True

    def _failed(self, op: str, exc: LeaseError) -> bool:
        self._unreachable = str(exc)
        if isinstance(exc, EtcdDenied):
            self._refused = str(exc)
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
