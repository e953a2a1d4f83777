"""A leader lease over N independent Redis nodes, with fencing tokens.

Guarantees, under the assumptions below:

* At most one ``Lease`` object holds a given lease name at any instant of the shared
  monotonic time scale, as long as every node's clock runs at most 1 % fast or slow.
  A holder learns it holds the lease only from a majority of nodes, and it counts its
  validity from the monotonic time taken *before* it sent the request.
* Every grant carries a fencing token larger than every token granted before it, provided
  no majority of nodes loses its data at once. A node that lost its data (restart without
  persistence) is repaired by the next grant, only where that grant still holds the lease.
  If a majority of the nodes a grant reached have no fence, the token is raised to at least
  the current wall-clock time in microseconds, so tokens keep rising across a total wipe as
  long as the wall clock has not stepped back. Run nodes with ``appendonly yes`` and
  ``appendfsync always`` (or ``everysec``, accepting a one-second window) and a
  ``noeviction`` memory policy so fences are not forgotten.
* ``held``, ``token`` and ``valid_for()`` answer from local state, without I/O.

Not guaranteed: that a holder notices the loss before its validity deadline passes; a
process paused past its deadline must check ``held`` (or present its token to a fenced
resource) before acting. That is what the fencing token is for.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from redis.client import PubSub
from redis.exceptions import RedisError

from . import scripts
from .clock import Clock, monotonic
from .errors import ConfigurationError, LeaseError, MalformedLeaseValue
from .nodes import NodeSet, NodeSpec

log = logging.getLogger("singleton_tasks.lease")

MIN_TTL = 0.1
HOSTNAME = socket.gethostname()


class LeaseProtocol(Protocol):
    """What the elector and the Celery layer need from a lease; another store can provide it."""

    name: str
    ttl: float

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def renew(self) -> bool: ...
    def release(self) -> None: ...
    @property
    def held(self) -> bool: ...
    @property
    def token(self) -> int | None: ...
    def valid_for(self) -> float: ...
    def holder(self) -> dict[str, Any] | None: ...
    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]: ...


def clock_drift(ttl: float) -> float:
    """The margin kept against clock-rate differences between this process and the nodes."""
    return ttl * 0.01 + 0.002


def default_renew_interval(ttl: float) -> float:
    """Renew every third of the TTL: two renewals can fail before a holder must give up."""
    return ttl / 3


def default_retry_interval(ttl: float) -> float:
    """How often a standby tries: at most half a second, and at least four times per TTL."""
    return min(0.5, ttl / 4)


def default_op_timeout(ttl: float) -> float:
    """How long one network wait may take: a tenth of the TTL, between 50 ms and 1 s."""
    return min(1.0, max(0.05, ttl / 10))


def validity_deadline(started: float, ttl: float) -> float:
    """The monotonic instant a grant or renewal sent at ``started`` stops being valid."""
    return started + ttl - clock_drift(ttl)


@dataclass(frozen=True)
class _Grant:
    owner: str
    token: int
    deadline: float


class Lease:
    """A named lease held by at most one owner at a time; see the module docstring.

    ``nodes`` is a Redis URL, a ``redis.Redis`` client, or a list of an odd number of them
    (or a ``NodeSet``, to share connections between leases).
    ``ttl`` is the lease lifetime in seconds; ``retry_interval`` the mean pause between
    blocking acquire attempts; ``op_timeout`` bounds each network wait.
    """

    def __init__(
        self,
        name: str,
        nodes: NodeSet | NodeSpec | Sequence[NodeSpec],
        ttl: float = 10.0,
        *,
        prefix: str = "singleton:",
        retry_interval: float | None = None,
        op_timeout: float | None = None,
        clock: Clock = monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in "{}"):
            raise ConfigurationError("name", name, "a non-empty string without braces")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < MIN_TTL:
            raise ConfigurationError("ttl", ttl, f"a number of seconds >= {MIN_TTL}")
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", prefix, "a string")
        self.name = name
        self.ttl = float(ttl)
        self.retry_interval = retry_interval if retry_interval is not None else default_retry_interval(self.ttl)
        if self.retry_interval <= 0:
            raise ConfigurationError("retry_interval", retry_interval, "a positive number of seconds")
        self.op_timeout = op_timeout if op_timeout is not None else default_op_timeout(self.ttl)
        self._owns_nodes = not isinstance(nodes, NodeSet)
        self.nodes = nodes if isinstance(nodes, NodeSet) else NodeSet(nodes, self.op_timeout)
        self.key = f"{prefix}{{{name}}}:lease"
        self.fence_key = f"{prefix}{{{name}}}:fence"
        self.channel = f"{prefix}{{{name}}}:released"
        self._clock = clock
        self._wall_clock = wall_clock
        self._grant: _Grant | None = None
        self._failing: set[int] = set()  # indexes of nodes whose last operation failed
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
        """The fencing token of the current grant, or None when not held."""
        grant = self._grant
        return grant.token if grant is not None and self._clock() < grant.deadline else None

    # -- network operations --------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lease. Blocking waits (up to ``timeout`` seconds) with jittered retries."""
        give_up = None if timeout is None else self._clock() + timeout
        while True:
            if self._try_acquire():
                return True
            if not blocking:
                return False
            pause = random.uniform(0.5, 1.0) * self.retry_interval
            if give_up is not None:
                left = give_up - self._clock()
                if left <= 0:
                    return False
                pause = min(pause, left)
            time.sleep(pause)

    def renew(self) -> bool:
        """Extend the current grant. False when it could not be extended.

        After False the lease is still ``held`` until its old deadline if the nodes merely
        failed to answer; it is dropped at once when a majority answered that it is not ours.
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
            replies = self.nodes.run_script(scripts.RENEW, [self.key], [grant.owner, self._ttl_ms])
            extended = sum(1 for r in replies if r == 1)
            refused = sum(1 for r in replies if r == 0)
            self._log_failures("renew", replies)
            if extended >= self.nodes.quorum:
                deadline = validity_deadline(started, self.ttl)
                if self._clock() < deadline:
                    self._grant = _Grant(grant.owner, grant.token, deadline)
                    return True
            if len(self.nodes) - refused < self.nodes.quorum:
                self._grant = None
                log.warning("lease %s: lost (a majority of nodes no longer hold it for us)", self.name)
                self._release_owner(grant.owner, announce=False)  # minority leftovers would only delay the next holder
            return False

    def release(self) -> None:
        """Give the lease up and wake standbys. Safe to call any number of times."""
        with self._lock:
            grant, self._grant = self._grant, None
            if grant is not None:
                self._release_owner(grant.owner)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now, read from the nodes: host, pid, id, token and ttl (s).

        None when no owner is recorded on a majority of nodes. The token is the highest fence
        those nodes hold: while a grant is being recorded it can still show the previous one.
        Raises ``LeaseError`` when a majority cannot be read, ``MalformedLeaseValue`` for a value
        this library never writes.
        """
        replies = self.nodes.run_script(scripts.INSPECT, [self.key, self.fence_key], [])
        self._log_failures("inspect", replies)
        readable = [(i, r) for i, r in enumerate(replies) if isinstance(r, list)]
        if len(readable) < self.nodes.quorum:
            raise LeaseError(f"lease {self.name}: fewer than {self.nodes.quorum} nodes answered")
        owners: dict[bytes, list[tuple[int, int, bytes]]] = {}
        for i, (owner, pttl, fence) in readable:
            if owner:
                owners.setdefault(owner, []).append((i, pttl, fence))
        for owner, seen in owners.items():
            if len(seen) >= self.nodes.quorum:
                info = self._parse_owner(owner, seen[0][0])
                fences = [self._parse_fence(f, i) for i, _, f in seen if f]
                info["token"] = max(fences) if fences else None
                info["ttl"] = min(p for _, p, _ in seen) / 1000.0
                return info
        return None

    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from a background thread) whenever a holder releases the lease.

        Returns a function that stops listening; the caller must call it.
        """
        threads = []
        for client in self.nodes.clients:
            pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(**{self.channel: lambda _message: callback()})
            threads.append(pubsub.run_in_thread(sleep_time=0.2, daemon=True, exception_handler=_keep_listening))

        def stop() -> None:
            for thread in threads:
                thread.stop()
            for thread in threads:
                thread.join(timeout=2)
                thread.pubsub.close()

        return stop

    def close(self) -> None:
        """Release the lease if held and drop the connections it opened (not a shared NodeSet's)."""
        self.release()
        if self._owns_nodes:
            self.nodes.close()

    def __enter__(self) -> "Lease":
        if not self.acquire():
            raise LeaseError(f"lease {self.name}: not acquired")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.name!r} ttl={self.ttl} nodes={len(self.nodes)} held={self.held}>"

    # -- internals -----------------------------------------------------------------------

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def _try_acquire(self) -> bool:
        with self._lock:
            if self._grant is not None and self._clock() < self._grant.deadline:
                return True
            owner = json.dumps({"host": HOSTNAME, "pid": os.getpid(), "id": secrets.token_hex(8)})
            started = self._clock()
            deadline = validity_deadline(started, self.ttl)
            replies = self.nodes.run_script(scripts.ACQUIRE, [self.key, self.fence_key], [owner, self._ttl_ms])
            self._log_failures("acquire", replies)
            granted = {i: (r[1], r[2] == 1) for i, r in enumerate(replies) if isinstance(r, list) and r[0] == 1}
            if len(granted) < self.nodes.quorum:
                self._release_owner(owner, announce=False)
                return False
            try:
                token = self._next_token(granted)
            except MalformedLeaseValue:
                self._release_owner(owner, announce=False)
                raise
            if all(raised and int(fence) == token for fence, raised in granted.values()):
                # Round 1 already recorded this token on every granting node, a majority.
                confirmed = [1] * len(granted)
            else:
                confirmed = self.nodes.run_script(
                    scripts.CONFIRM, [self.key, self.fence_key], [owner, token], only=list(granted)
                )
                self._log_failures("confirm", confirmed, list(granted))
                for i, reply in zip(granted, confirmed):
                    if reply == -1:
                        log.error("%s", MalformedLeaseValue(self.fence_key, "(not a number)", self.nodes.labels[i]))
            if sum(1 for r in confirmed if r == 1) < self.nodes.quorum or self._clock() >= deadline:
                self._release_owner(owner, announce=False)
                return False
            self._grant = _Grant(owner, token, deadline)
            log.debug("lease %s: acquired, token %d, valid %.3fs", self.name, token, deadline - self._clock())
            return True

    def _next_token(self, granted: dict[int, tuple[bytes, bool]]) -> int:
        # Round 1 raised every granting node's fence by one. The largest exceeds every token
        # granted before: that grant wrote its token to a majority, which meets this one.
        fences: dict[int, int] = {}
        for i, (fence, raised) in granted.items():
            if fence and not raised:
                raise MalformedLeaseValue(self.fence_key, fence, self.nodes.labels[i])
            if fence:
                fences[i] = self._parse_fence(fence, i)
        token = max(fences.values(), default=1)
        if len(fences) < self.nodes.quorum:
            # Too few nodes that granted remember any history: it may have been wiped.
            floor = int(self._wall_clock() * 1_000_000)
            if floor > token:
                log.info("lease %s: %d of %d granting nodes have no fence; token from the clock",
                         self.name, len(granted) - len(fences), len(granted))
                token = floor
        return token

    def _parse_fence(self, raw: bytes | str, node: int) -> int:
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise MalformedLeaseValue(self.fence_key, raw, self.nodes.labels[node]) from None

    def _parse_owner(self, raw: bytes | str, node: int) -> dict[str, Any]:
        try:
            info = json.loads(raw)
            if isinstance(info, dict) and {"host", "pid", "id"} <= info.keys():
                return {"host": str(info["host"]), "pid": int(info["pid"]), "id": str(info["id"])}
        except (TypeError, ValueError):
            pass
        raise MalformedLeaseValue(self.key, raw, self.nodes.labels[node])

    def _release_owner(self, owner: str, announce: bool = True) -> None:
        # Every node, not just those that granted: a lost reply may hide a grant. A failed
        # attempt is cleaned up silently, or standbys would be woken into a busy loop.
        replies = self.nodes.run_script(scripts.RELEASE, [self.key], [owner, self.channel if announce else ""])
        self._log_failures("release", replies)

    def _log_failures(self, operation: str, replies: list[Any], only: Sequence[int] | None = None) -> None:
        # One warning when a node starts failing and one line when it answers again, not one
        # per operation: an outage must be visible without flooding the log.
        for i, reply in zip(range(len(self.nodes)) if only is None else only, replies):
            label = self.nodes.labels[i]
            if isinstance(reply, Exception):
                if i not in self._failing:
                    self._failing.add(i)
                    log.warning("lease %s: node %s failed (%s): %s", self.name, label, operation, reply)
                else:
                    log.debug("lease %s: node %s still failing (%s): %s", self.name, label, operation, reply)
            elif i in self._failing:
                self._failing.discard(i)
                log.warning("lease %s: node %s answers again", self.name, label)


def _keep_listening(exc: BaseException, pubsub: PubSub, thread: Any) -> None:
    # A node that went away: the listener reconnects on its next poll. Waiting here keeps a
    # dead node from turning the loop into a busy spin.
    if not isinstance(exc, (RedisError, OSError)):
        log.error("release listener stopped: %r", exc)
        thread.stop()
        return
    log.debug("release listener: %s", exc)
    time.sleep(0.5)
