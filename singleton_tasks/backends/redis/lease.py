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

import logging
import threading
import time
from typing import Any, Callable, Sequence

from . import channels, scripts
from ... import events, keys
from ...backend import LeaseState, NodeLease, new_owner, parse_owner
from ...clock import Clock, monotonic
from ...errors import ConfigurationError, LeaseError, MalformedLeaseValue, foreign_value
from ...lease_base import Grant, LeaseBase
from .nodes import NodeSet, NodeSpec
from .quorum import PERMANENT_ERRORS, Tally, describe, tally
from ...timing import default_op_timeout, validity_deadline

log = logging.getLogger("singleton_tasks.lease")


#: The highest token this process has seen per fence (its nodes and key): a grant never goes
#: below it, even if someone lowered the fence on the nodes.
_seen_tokens: dict[tuple[tuple[str, ...], str], int] = {}
_seen_lock = threading.Lock()


class Lease(LeaseBase[Grant]):
    """A named lease held by at most one owner at a time; see the module docstring (and
    ``lease_base`` for the checks, the local state and the flow it shares with other stores).

    ``nodes`` is a Redis URL, a ``redis.Redis`` client, or a list of an odd number of them
    (or a ``NodeSet``, to share connections between leases).
    ``ttl`` is the lease lifetime in seconds; ``retry_interval`` the mean pause between
    blocking acquire attempts; ``op_timeout`` bounds each network wait.
    """

    _log = log

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
        super().__init__(name, ttl, retry_interval, clock)
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", prefix, "a string")
        self.op_timeout = op_timeout if op_timeout is not None else default_op_timeout(self.ttl)
        self._owns_nodes = not isinstance(nodes, NodeSet)
        self.nodes = nodes if isinstance(nodes, NodeSet) else NodeSet(nodes, self.op_timeout)
        self.key = keys.lease_key(prefix, name)
        self.fence_key = keys.fence_key(prefix, name)
        self.channel = keys.release_channel(prefix, name)
        self._wall_clock = wall_clock
        self._last_attempt: Tally | None = None
        self._free_at: float | None = None  # when the last refusing holder's key ends (clock time)
        self._problems: dict[tuple[int, str], str] = {}  # (node, topic) -> what is wrong there now
        self._history = (tuple(self.nodes.labels), self.fence_key)

    # -- network operations (acquire, renew, release: see LeaseBase) -------------------------

    @property
    def unreachable(self) -> str | None:
        """Why the last acquire attempt failed if node errors, not a holder, kept it from a
        majority: the failed nodes and their own errors. None after a grant or a refusal."""
        attempt = self._last_attempt
        if attempt is None or attempt.reached or attempt.refused_by_majority or not attempt.failed:
            return None
        return attempt.summary(self.nodes.labels)

    def exceed(self, token: int) -> None:
        """Make every later grant's token larger than ``token``.

        For a token a fenced resource reports it has already accepted (``StaleToken``): the
        lease's own fence may have been lowered by someone else, and would otherwise keep
        handing out tokens that resource refuses.
        """
        with _seen_lock:
            if token > _seen_tokens.get(self._history, 0):
                _seen_tokens[self._history] = token

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now, read from the nodes: host, pid, id, token and ttl (s).

        None when no owner is recorded on a majority of nodes. The token is the highest fence
        those nodes hold: while a grant is being recorded it can still show the previous one.
        Raises ``LeaseError`` when a majority cannot be read, ``MalformedLeaseValue`` for a value
        this library never writes.
        """
        replies = self.nodes.run_script(scripts.INSPECT, [self.key, self.fence_key], [])
        self._log_failures("inspect", replies)
        counted = tally(replies, lambda r: isinstance(r, list))
        if not counted.reached:
            raise LeaseError(f"lease {self.name}: fewer than {self.nodes.quorum} nodes answered "
                             f"({counted.errors(self.nodes.labels)})")
        return self._holder_in(replies, counted)

    def inspect(self) -> LeaseState:
        """One read of every node: the holder as ``holder()`` finds it, and each node's own answer.

        Never raises for a node's error or a foreign value: those show in the node's answer, and
        in ``error`` when they keep the holder from being decided.
        """
        # Not logged: every node's error is in the answer, for whoever asked.
        replies = self.nodes.run_script(scripts.INSPECT, [self.key, self.fence_key], [])
        counted = tally(replies, lambda r: isinstance(r, list))
        nodes = {}
        for i, reply in enumerate(replies):
            nodes[self.nodes.labels[i]] = self._node_answer(reply)
        holder, error = None, None
        if not counted.reached:
            error = f"fewer than {self.nodes.quorum} nodes answered ({counted.errors(self.nodes.labels)})"
        else:
            try:
                holder = self._holder_in(replies, counted)
            except MalformedLeaseValue as exc:
                error = str(exc)
        return LeaseState(self.name, holder, nodes, error)

    def _holder_in(self, replies: list[Any], counted: Tally) -> dict[str, Any] | None:
        """The owner recorded on a majority of the readable ``replies`` of INSPECT, or None."""
        owners: dict[bytes, list[tuple[int, int, bytes]]] = {}
        for i in counted.accepted:
            owner, pttl, fence = replies[i]
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

    def _node_answer(self, reply: Any) -> NodeLease:
        """One node's INSPECT reply (or its error) as operators see it; foreign values named, not parsed."""
        if isinstance(reply, BaseException):
            return NodeLease(error=describe(reply))
        owner, pttl, fence = reply
        info = parse_owner(owner) if owner else None
        if owner and info is None:
            return NodeLease(error=f"key {self.key!r} {foreign_value(self.key, owner)}")
        try:
            token = int(fence) if fence else None
        except ValueError:
            return NodeLease(error=f"key {self.fence_key!r} {foreign_value(self.fence_key, fence)}")
        return NodeLease(owner=info["id"] if info else None, token=token,
                         ttl=pttl / 1000.0 if int(pttl) >= 0 else None)

    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from a background thread) whenever a holder releases the lease, and
        after a node's connection came back (a release may have been missed meanwhile).

        Returns a function that stops listening; the caller must call it.
        """
        return channels.listen(self.nodes.clients, self.channel, callback, f"release-listener-{self.name}")

    def close(self) -> None:
        """Release the lease if held and drop the connections it opened (not a shared NodeSet's)."""
        self.release()
        if self._owns_nodes:
            self.nodes.close()

    def __repr__(self) -> str:
        return f"<Lease {self.name!r} ttl={self.ttl} nodes={len(self.nodes)} held={self.held}>"

    # -- internals -----------------------------------------------------------------------

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def _extend(self, grant: Grant, started: float) -> bool:
        """Renew on every node: held on when a majority extended it in time; dropped at once
        when so many answered that it is not ours that a majority can no longer extend it."""
        replies = self.nodes.run_script(scripts.RENEW, [self.key], [grant.owner, self._ttl_ms])
        extended = sum(1 for r in replies if r == 1)
        refused = sum(1 for r in replies if r == 0)
        self._log_failures("renew", replies)
        if extended >= self.nodes.quorum:
            deadline = validity_deadline(started, self.ttl)
            if self._clock() < deadline:
                self._grant = Grant(grant.owner, grant.token, deadline)
                return True
        if len(self.nodes) - refused < self.nodes.quorum:
            self._grant = None
            log.warning("lease %s: lost (a majority of nodes no longer hold it for us)", self.name)
            self._release_owner(grant.owner, announce=False)  # minority leftovers would only delay the next holder
        return False

    def _release(self, grant: Grant) -> None:
        """Delete our owner value on every node and announce the release to standbys."""
        self._release_owner(grant.owner)

    def free_in(self) -> float | None:
        """Seconds until a majority no longer holds the last refusing holder's key; None if unknown."""
        free_at = self._free_at
        return None if free_at is None else max(0.0, free_at - self._clock())

    def _holder_ends(self, started: float, attempt: Tally, replies: list[Any]) -> float | None:
        # The lease can be had once a majority no longer holds the other owner's key: the
        # free nodes now plus the refusing ones, in the order their keys expire. Measured from
        # before the request, so it errs early: a standby then just asks once more.
        if attempt.reached:
            return None
        need = self.nodes.quorum - len(attempt.accepted)
        ends = sorted(int(replies[i][2]) for i in attempt.refused
                      if isinstance(replies[i], list) and len(replies[i]) > 2 and int(replies[i][2]) >= 0)
        if need < 1 or len(ends) < need:
            return None
        return started + ends[need - 1] / 1000.0

    def _denied(self) -> str | None:
        """The nodes that refuse this client for good (wrong credentials, missing permissions)
        with their errors, when too few are left for a majority; else None."""
        attempt = self._last_attempt
        denied = attempt.permanent if attempt is not None else ()
        if denied and len(self.nodes) - len(denied) < self.nodes.quorum:
            return "; ".join(f"{self.nodes.labels[i]}: {describe(e)}" for i, e in denied)
        return None

    def _try_acquire(self) -> bool:
        with self._lock:
            if self.held:
                return True
            owner = new_owner()
            started = self._clock()
            deadline = validity_deadline(started, self.ttl)
            replies = self.nodes.run_script(scripts.ACQUIRE, [self.key, self.fence_key], [owner, self._ttl_ms])
            self._log_failures("acquire", replies)
            self._last_attempt = attempt = tally(replies, lambda r: isinstance(r, list) and r[0] == 1)
            for i in attempt.refused:
                self._check_owner(replies[i], i)
            self._free_at = self._holder_ends(started, attempt, replies)
            if not attempt.reached:
                if attempt.accepted or attempt.failed:  # a lost reply may hide a grant
                    self._release_owner(owner, announce=False)
                return False
            granted = {i: (replies[i][1], replies[i][2] == 1) for i in attempt.accepted}
            token = self._next_token(granted)
            if all(raised and int(fence) == token for fence, raised in granted.values()):
                # Round 1 already recorded this token on every granting node, a majority.
                confirmed = [1] * len(granted)
            elif self._clock() >= deadline:
                # Too late for round 2: a repair written now could land after a newer grant
                # read that node, and make a later token smaller than this one.
                self._release_owner(owner, announce=False)
                return False
            else:
                confirmed = self.nodes.run_script(
                    scripts.CONFIRM, [self.key, self.fence_key], [owner, token], only=list(granted)
                )
                self._log_failures("confirm", confirmed, list(granted))
                for i, reply in zip(granted, confirmed):
                    if reply == 1:  # the fence there now holds this token, whatever it held before
                        self._report(i, f"value {self.fence_key}", None)
            if sum(1 for r in confirmed if r == 1) < self.nodes.quorum or self._clock() >= deadline:
                self._release_owner(owner, announce=False)
                return False
            self._grant = Grant(owner, token, deadline)
            self.exceed(token)
            log.debug("lease %s: acquired, token %d, valid %.3fs", self.name, token, deadline - self._clock())
            return True

    def _next_token(self, granted: dict[int, tuple[bytes, bool]]) -> int:
        # Round 1 raised every granting node's fence by one. The largest exceeds every token
        # granted before: that grant wrote its token to a majority, which meets this one.
        fences: dict[int, int] = {}
        for i, (raw, raised) in granted.items():
            fence = self._valid_fence(raw, raised, i)
            if fence is not None:
                fences[i] = fence
        token = max(fences.values(), default=1)
        if len(fences) < self.nodes.quorum:
            # Too few nodes that granted remember any history: it may have been wiped.
            floor = int(self._wall_clock() * 1_000_000)
            if floor > token:
                log.info("lease %s: %d of %d granting nodes have no fence; token from the clock",
                         self.name, len(granted) - len(fences), len(granted))
                token = floor
        with _seen_lock:
            seen = _seen_tokens.get(self._history, 0)
        if token <= seen:
            log.error("lease %s: the fence %s went back: its nodes give token %d, but token %d was seen "
                      "before; granting %d instead (did something else write that key?)",
                      self.name, self.fence_key, token, seen, seen + 1)
            token = seen + 1
        return token

    def _valid_fence(self, raw: bytes, raised: bool, node: int) -> int | None:
        """A granting node's fence, or None when it has none we can count (reported once)."""
        topic = f"value {self.fence_key}"  # the same topic as after a confirmed round 2
        if not raw:
            self._report(node, topic, None)
            return None  # no fence at all: a new or wiped node, repaired by round 2
        fence = int(raw) if raised else None  # not raised: the value is not an integer
        if fence is None or fence < 1:
            self._report(node, topic, f"key {self.fence_key!r} {foreign_value(self.fence_key, raw)}; not counted"
                         + (" (repaired by this grant)" if fence is not None else ", delete it to repair"),
                         logging.ERROR, f"the foreign value in {self.fence_key} is gone")
            return None
        self._report(node, topic, None)
        return fence

    def _check_owner(self, reply: Any, node: int) -> None:
        """Report, once, a lease key holding a value this library never writes."""
        if not isinstance(reply, list) or len(reply) < 2 or not reply[1]:
            return
        topic = f"value {self.key}"
        try:
            self._parse_owner(reply[1], node)
        except MalformedLeaseValue:
            self._report(node, topic, f"key {self.key!r} {foreign_value(self.key, reply[1])}; nobody can take "
                         "the lease there until it is deleted",
                         logging.ERROR, f"the foreign value in {self.key} is gone")
            return
        self._report(node, topic, None)

    def _parse_fence(self, raw: bytes | str, node: int) -> int:
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise MalformedLeaseValue(self.fence_key, raw, self.nodes.labels[node]) from None

    def _parse_owner(self, raw: bytes | str, node: int) -> dict[str, Any]:
        info = parse_owner(raw)
        if info is None:
            raise MalformedLeaseValue(self.key, raw, self.nodes.labels[node])
        return info

    def _release_owner(self, owner: str, announce: bool = True) -> None:
        # Every node, not just those that granted: a lost reply may hide a grant. A failed
        # attempt is cleaned up silently, or standbys would be woken into a busy loop.
        replies = self.nodes.run_script(scripts.RELEASE, [self.key], [owner, self.channel if announce else ""])
        self._log_failures("release", replies)

    def _log_failures(self, operation: str, replies: list[Any], only: Sequence[int] | None = None) -> None:
        # One line when a node starts failing and one when it answers again, not one per
        # operation: an outage must be visible without flooding the log.
        for i, reply in zip(range(len(self.nodes)) if only is None else only, replies):
            if isinstance(reply, Exception):
                level = logging.ERROR if isinstance(reply, PERMANENT_ERRORS) else logging.WARNING
                if self._report(i, "error", f"failed ({operation}): {describe(reply)}", level, "answers again"):
                    events.emit(events.NODE_FAILING, name=self.name, node=self.nodes.labels[i], error=describe(reply))
            elif self._report(i, "error", None):
                events.emit(events.NODE_RECOVERED, name=self.name, node=self.nodes.labels[i])

    def _report(self, node: int, topic: str, problem: str | None, level: int = logging.WARNING,
                resolved: str = "") -> bool:
        """Log ``problem`` of ``node`` when it appears and ``resolved`` when it is gone, once
        each; True when this call was such a change."""
        key = (node, topic)
        label = self.nodes.labels[node]
        if problem is None:
            gone = self._problems.pop(key, None)
            if gone is None:
                return False
            log.warning("lease %s: node %s: %s", self.name, label, gone)
            return True
        if key not in self._problems:
            self._problems[key] = resolved
            log.log(level, "lease %s: node %s: %s", self.name, label, problem)
            return True
        log.debug("lease %s: node %s still: %s", self.name, label, problem)
        return False
