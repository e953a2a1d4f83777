"""What every backend's lease shares: argument checks, local validity state, the acquire/renew/release flow.

A backend's lease subclasses ``LeaseBase`` and supplies the steps only its store can take:
``_try_acquire`` (one attempt), ``_denied`` (whether the store refuses this client for good),
``_extend`` (one renewal) and ``_release`` (dropping a grant). Guarantees, whatever the store:

* **Arguments.** A lease exists only with a ``name`` that is a non-empty string without braces,
  a ``ttl`` that is a number (not a bool) of at least ``timing.MIN_TTL`` seconds, and a positive
  ``retry_interval`` (default ``timing.default_retry_interval(ttl)``); anything else raises
  ``ConfigurationError`` naming the argument, name first, then ttl, then retry_interval.
* **Local state.** ``held``, ``token`` and ``valid_for()`` answer from the current grant and the
  injected clock alone: no I/O, no lock. A grant is replaced whole (a frozen ``Grant``), so a
  reader sees the old one or the new one, and nothing is held at or after its ``deadline``.
* **Renew and release.** Both run under the lease's lock. A renewal never starts once the
  deadline has passed (the grant is dropped instead, with a WARNING); a renewal's new deadline
  counts from the clock reading taken before the store was asked. ``release`` forgets the grant
  before asking the store to drop it, so ``held`` is False at once, whatever the store answers.
* **Blocking acquire.** ``acquire()`` returns True as soon as an attempt succeeds; between
  attempts it sleeps ``timing.jittered(retry_interval)``, cut short so it never sleeps past
  ``timeout`` (then it returns False, after at least one attempt); it raises ``AccessDenied``
  as soon as a failed attempt leaves ``_denied()`` saying why, since waiting will not help.
  Non-blocking, it makes one attempt and never raises ``AccessDenied``.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from .clock import Clock
from .errors import AccessDenied, ConfigurationError, LeaseError
from .timing import MIN_TTL, default_retry_interval, jittered


@dataclass(frozen=True)
class Grant:
    """One grant as its holder knows it: who it is, the fencing token, the monotonic deadline."""

    owner: str
    token: int
    deadline: float  #: the ``clock()`` instant it stops being valid (``timing.validity_deadline``)


G = TypeVar("G", bound=Grant)
L = TypeVar("L", bound="LeaseBase[Any]")


class LeaseBase(abc.ABC, Generic[G]):
    """A named lease's store-independent half; see the module docstring for what it guarantees.

    ``G`` is the backend's grant: ``Grant``, or a subclass carrying what its store needs to
    renew and release (etcd's lease id).
    """

    #: The backend's own lease logger: a line keeps the logger name operators filter on.
    _log: ClassVar[logging.Logger]

    def __init__(self, name: str, ttl: float, retry_interval: float | None, clock: Clock) -> None:
        # Braces are Redis hash-tag syntax in the keys; refused on every store, so one name
        # works on each.
        if not isinstance(name, str) or not name or any(c in name for c in "{}"):
            raise ConfigurationError("name", name, "a non-empty string without braces")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < MIN_TTL:
            raise ConfigurationError("ttl", ttl, f"a number of seconds >= {MIN_TTL}")
        self.name = name
        self.ttl = float(ttl)
        self.retry_interval = retry_interval if retry_interval is not None else default_retry_interval(self.ttl)
        if self.retry_interval <= 0:
            raise ConfigurationError("retry_interval", retry_interval, "a positive number of seconds")
        self._clock = clock
        self._grant: G | None = None
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

    # -- the shared flow of the network operations ---------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lease. Blocking waits (up to ``timeout`` seconds) with jittered retries.

        A blocking acquire raises ``AccessDenied`` when the store refuses this client for good
        (refused credentials or permissions; see the backend's ``_denied``).
        """
        give_up = None if timeout is None else self._clock() + timeout
        while True:
            if self._try_acquire():
                return True
            if not blocking:
                return False
            denied = self._denied()
            if denied is not None:
                raise AccessDenied(self.name, denied)
            pause = jittered(self.retry_interval)
            if give_up is not None:
                left = give_up - self._clock()
                if left <= 0:
                    return False
                pause = min(pause, left)
            time.sleep(pause)

    def renew(self) -> bool:
        """Extend the current grant. False when it was not extended.

        After False the lease is still ``held`` until its old deadline if the store merely
        failed to answer; it is dropped at once when the store answered that it is not ours,
        or when the deadline had passed before the renewal began.
        """
        with self._lock:
            grant = self._grant
            if grant is None:
                return False
            started = self._clock()
            if started >= grant.deadline:
                self._grant = None
                self._log.warning("lease %s: validity ran out before renewal", self.name)
                return False
            return self._extend(grant, started)

    def release(self) -> None:
        """Give the lease up and wake standbys. Safe to call any number of times."""
        with self._lock:
            grant, self._grant = self._grant, None
            if grant is not None:
                self._release(grant)

    def __enter__(self: L) -> L:
        if not self.acquire():
            raise LeaseError(f"lease {self.name}: not acquired")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- what each store does its own way ------------------------------------------------

    @abc.abstractmethod
    def _try_acquire(self) -> bool:
        """One attempt: True when the lease is held afterwards (already held counts)."""

    @abc.abstractmethod
    def _denied(self) -> str | None:
        """After a failed attempt: why the store refuses this client for good, else None."""

    @abc.abstractmethod
    def _extend(self, grant: G, started: float) -> bool:
        """Renew ``grant`` (still valid at ``started``, the clock read before asking; the lock is
        held): True after replacing ``self._grant``; False, dropping it when the store said it is
        no longer ours."""

    @abc.abstractmethod
    def _release(self, grant: G) -> None:
        """Ask the store to drop ``grant``, already forgotten locally (the lock is held)."""
