"""The storage contract: everything the elector, the Celery layer and the CLI need from a store.

A backend is one store a process talks to: N independent Redis masters under a quorum, or one
etcd cluster. ``singleton_tasks.backends.open_backend`` picks it by URL scheme. Every backend
keeps these guarantees (the contract tests run each against real servers):

* **Lease.** At most one holder of a name at any instant, as far as the holder can tell from
  its own monotonic clock: ``held`` is True only inside a validity window counted from the
  monotonic time taken *before* the request that granted or renewed it, minus a drift margin.
  ``held``, ``token`` and ``valid_for()`` answer from local state, without I/O.
* **Fencing token.** Every grant's token is a positive integer larger than every token granted
  before it for that name (Redis: under the assumptions in the Redis backend's docstring; etcd:
  always, as the key's create revision). A resource that remembers the highest token it
  accepted can refuse a paused ex-holder.
* **Release notification.** ``on_release`` wakes standbys when a holder gives the lease up, so
  a graceful handover costs about one round trip; a release after it returns is heard
  (wherever the store answered it).
* **Fenced records.** A write carrying token T never lands after a write with a larger token;
  a refused write raises ``StaleToken``. A write reaches the store's majority or raises.
* **Slot claims.** A beat slot's attempt is claimed at most once; a claim the store could not
  decide is reported as ``Claim.FAILED`` with each node's own error, never as a refusal.
* **Values.** Owners are JSON (host, pid, a random id), tokens decimal: nothing read back is
  unpickled or evaluated, and a value this library did not write is reported, never trusted.

Not guaranteed by any backend: that a holder notices a loss before its deadline. A process
paused past its deadline must check ``held``, or present its token to a fenced resource.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from .clock import Clock

HOSTNAME = socket.gethostname()


def new_owner() -> str:
    """A fresh owner value: who holds a lease, readable by operators on any store."""
    return json.dumps({"host": HOSTNAME, "pid": os.getpid(), "id": secrets.token_hex(8)})


def parse_owner(raw: bytes | str) -> dict[str, Any] | None:
    """The ``host``, ``pid`` and ``id`` of an owner value, or None if this library did not write it."""
    try:
        info = json.loads(raw)
        if isinstance(info, dict) and {"host", "pid", "id"} <= info.keys():
            return {"host": str(info["host"]), "pid": int(info["pid"]), "id": str(info["id"])}
    except (TypeError, ValueError):
        pass
    return None


def some_names(names: Sequence[str], shown: int = 3) -> str:
    """``'a', 'b', 'c', ...``: the first few of a batch's names, for an error message."""
    return ", ".join(repr(name) for name in names[:shown]) + (", ..." if len(names) > shown else "")


class LeaseProtocol(Protocol):
    """A named lease with fencing tokens; see the module docstring for what it guarantees."""

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
    @property
    def unreachable(self) -> str | None:
        """Why the last acquire failed when store errors, not another holder, kept it: else None."""
    def exceed(self, token: int) -> None:
        """Make later grants' tokens larger than ``token``, one a fenced resource accepted."""
    def free_in(self) -> float | None:
        """After an acquire refused by a holder: how long a standby may wait before trying again
        (Redis: until the holder's lease ends, as the store reported it; etcd: a TTL while a watch
        of the key, which wakes standbys at a release or an expiry, is healthy); None: retry at
        the usual pace."""
    def holder(self) -> dict[str, Any] | None:
        """Who holds it now, read from the store: host, pid, id, token, ttl (s); None if nobody."""
    def on_release(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from a background thread when a holder releases; returns a stop function."""


class RecordsProtocol(Protocol):
    """Named JSON records written under a fencing token (a beat schedule's run state)."""

    def write(self, token: int, records: Mapping[str, dict[str, Any]]) -> None:
        """Store each record under its name, all under ``token``; several go in one round trip."""
    def read_all(self) -> dict[str, dict[str, Any]]: ...


class EntriesProtocol(Protocol):
    """A beat schedule's entries stored at run time: JSON texts by entry name, and a version.

    * ``version()`` is one round trip, and its answer differs after every ``put`` and every
      ``remove`` that removed something: a poller compares it with the last one it saw.
    * ``all()`` returns the version and every entry as of one moment, consistent with each other.
    * A change reaches the store's majority or raises (``LeaseError``, naming each node's error);
      one that raised may have reached some nodes: repeat it. Reads take a majority's newest.
    * Texts are returned as stored, never parsed here: the caller validates them (``entries``).
    """

    def put(self, name: str, text: str) -> int:
        """Store ``text`` as entry ``name`` (replacing it); the new version."""
    def remove(self, name: str) -> bool:
        """Delete entry ``name``; False (and no new version) when there was none."""
    def get(self, name: str) -> str | None: ...
    def all(self) -> tuple[int, dict[str, str]]: ...
    def version(self) -> int: ...
    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from a background thread soon after each change, by any process,
        and whenever a change may have gone unheard (a connection that came back); returns the
        function that stops it, which the caller must call. Only a hint to look (``version``):
        a store may drop an announcement, so a poller still polls, rarely."""


#: How many recent slots of one entry every backend remembers to tell a duplicate delivery
#: apart; a slot older than all of them is refused (``Claim.TOO_OLD``), never run twice.
SLOT_MEMORY = 64


class Claim(enum.Enum):
    """What a slot claim found."""

    CLAIMED = "claimed"  #: this attempt may run
    ALREADY_RAN = "already ran"  #: this or a later attempt claimed it: a duplicate delivery
    TOO_OLD = "too old"  #: older than every slot remembered for its entry: not run
    FAILED = "failed"  #: errors kept the claim from being decided: not run (at most once)


@dataclass(frozen=True)
class ClaimResult:
    outcome: Claim
    detail: str  #: the store's answers, with each failed node's own error text


@dataclass(frozen=True)
class NodeLease:
    """What one node (a Redis node, an etcd endpoint) answered for a lease, for operators.

    Either ``error`` is the node's own error text (it did not answer, or holds a value this
    library never writes) and the rest is None, or ``owner`` is the id of the owner recorded
    there (None: free there), ``token`` its fence (None: none there) and ``ttl`` the seconds
    its key has left (None: no key).
    """

    owner: str | None = None
    token: int | None = None
    ttl: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class LeaseState:
    """One lease as the store shows it (``Backend.leases``): read, never acted on.

    ``holder`` is what ``LeaseProtocol.holder()`` would return (host, pid, id, token, ttl), or
    None when nobody holds it or it cannot be decided; then ``error`` says why it cannot (too
    few nodes answered, a foreign value). ``nodes`` maps each node's label to its answer, in
    the backend's order, so an operator sees which nodes agree and which did not answer.
    """

    name: str
    holder: dict[str, Any] | None
    nodes: Mapping[str, NodeLease]
    error: str | None = None


class Backend(Protocol):
    """One store shared by the leases of a process; every method keeps the module's guarantees."""

    @property
    def labels(self) -> Sequence[str]:
        """What each node or endpoint is, for logs and operators (no passwords)."""

    def lease(self, name: str, ttl: float, *, retry_interval: float | None = None,
              clock: Clock | None = None) -> LeaseProtocol:
        """The lease called ``name`` (see ``keys``: Celery-layer names carry their kind)."""

    def records(self, schedule: str) -> RecordsProtocol:
        """The fenced run records of the beat schedule whose lease is ``keys.beat_lease_name(schedule)``."""

    def entries(self, schedule: str) -> EntriesProtocol:
        """The entries of beat schedule ``schedule`` stored at run time (``celery singleton schedule``)."""

    def claim_slot(self, lease: LeaseProtocol, entry: str, due_ms: int, attempt: int,
                   memory: float) -> ClaimResult:
        """Claim the slot of ``entry`` (``SCHEDULE/ENTRY``) due at ``due_ms`` for ``attempt``, under ``lease``."""

    def startup_warnings(self) -> list[str]:
        """What about the store can break a guarantee (an evicting memory policy, one server
        counted twice): one line each, naming the node. Never raises."""

    def check(self) -> list[tuple[str, str | None]]:
        """Run every operation on every node or endpoint: ``(label, first failure or None)``."""

    def force_release(self, name: str) -> bool:
        """Delete lease ``name`` whoever holds it, and wake its standbys; True if it was held.

        For operators (``celery singleton release``): a running holder loses the lease at its
        next renewal or checkpoint (``LeaseLost``); until then it may still act on its old
        validity, which is what its fencing token is for.
        """

    def leases(self, names: Sequence[str] | None = None) -> list[LeaseState]:
        """The state of every lease whose key is in the store under this backend's prefix (beat
        and task leases, held on at least one node), sorted by name; with ``names``, of exactly
        those, held or not. Reads only: nothing read is trusted or run (owners go through
        ``parse_owner``). Raises ``LeaseError`` when too few nodes answer to list every held
        lease; a node's own failure otherwise shows in that lease's ``nodes``.
        """

    def close(self) -> None:
        """Drop the connections this backend opened."""
