"""Leader election on top of a lease: campaign, lead, renew, step down, campaign again.

Guarantees:

* ``is_leader`` is never True past the lease's validity deadline, whatever the renew
  thread is doing: it is checked against the local monotonic clock on every read.
* A leader that cannot renew gives up once two thirds of the TTL have passed since its
  last successful renewal, and in any case by its deadline; it then calls ``on_lost`` and
  campaigns again. Redis errors never end the loop.
* ``on_lost`` runs exactly once after every ``on_elected``, including at ``stop()``.
  A callback that raises is logged; it never stops the elector.
* A standby retries every ``retry_interval`` (jittered) and at once when the holder
  releases, so a graceful handover takes about one round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .errors import ConfigurationError
from . import events
from .backend import LeaseProtocol
from .timing import default_renew_interval, default_retry_interval, give_up_margin, jittered

log = logging.getLogger("singleton_tasks.election")

Callback = Callable[[], None]


def next_wait(
    leader: bool, valid_for: float, ttl: float, renew_interval: float, retry_interval: float,
    renew_failed: bool = False, free_in: float | None = None,
) -> float:
    """How long the loop sleeps before its next action: a pure function, for testing.

    A leader wakes for its next renewal (sooner, after a failed one), but never later than
    the point where it must give up: one third of the TTL before its deadline. A follower
    that was told when the holder's lease ends (``free_in``) sleeps until just after then,
    never longer than a TTL (a release wakes it sooner); otherwise it waits a jittered retry
    interval.
    """
    if leader:
        give_up_in = valid_for - give_up_margin(ttl)
        pause = min(retry_interval, renew_interval / 2) if renew_failed else renew_interval
        return max(0.0, min(pause, give_up_in))
    if free_in is not None:
        # A few ms after the end, spread so that standbys waking together do not all collide.
        return min(ttl, free_in + jittered(0.02))
    return jittered(retry_interval)


def call_safely(callback: Callback | None, lease_name: str, what: str) -> None:
    """Run a user callback; one that raises is logged and never stops the loop that called it."""
    if callback is None:
        return
    try:
        callback()
    except Exception:
        log.exception("lease %s: %s raised; carrying on", lease_name, what)


def renew_or_give_up(lease: LeaseProtocol) -> tuple[bool, str | None]:
    """One renewal of a held lease: (whether it failed, why the lease is now given up or None).

    A failed renewal is retried while more than a third of the TTL is left; past that the
    lease is released and given up, so a leader never rides its validity to the last moment.
    """
    if not lease.held:
        return True, "validity ran out"
    started = time.perf_counter()
    renewed = lease.renew()
    events.emit(events.RENEWED, name=lease.name, seconds=time.perf_counter() - started, ok=renewed,
                valid_for=lease.valid_for())
    if renewed:
        return False, None
    if not lease.held:
        return True, "lease lost"
    if lease.valid_for() <= give_up_margin(lease.ttl):
        lease.release()
        return True, "could not renew for two thirds of the TTL"
    return True, None


class LeaseKeeper:
    """Keeps renewing a lease that is already held, until ``stop()`` or until it is lost.

    ``lost`` is set (and ``on_lost`` called once, from the keeper's thread) when the lease
    is given up; the keeper then stops. It never releases on ``stop()``: the owner does.
    """

    def __init__(
        self, lease: LeaseProtocol, on_lost: Callback | None = None,
        renew_interval: float | None = None, retry_interval: float | None = None,
    ) -> None:
        self.lease = lease
        self.on_lost = on_lost
        self.renew_interval = renew_interval if renew_interval is not None else default_renew_interval(lease.ttl)
        self.retry_interval = retry_interval if retry_interval is not None else default_retry_interval(lease.ttl)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keeper-{lease.name}", daemon=True)

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(next_wait(True, self.lease.valid_for(), self.lease.ttl,
                                             self.renew_interval, self.retry_interval, failed)):
            try:
                failed, lost = renew_or_give_up(self.lease)
            except Exception as exc:  # a failure to renew is a loss, never a silent death
                failed, lost = True, f"renewal raised {exc!r}"
            if lost:
                log.warning("lease %s: lost while working: %s", self.lease.name, lost)
                self.lost.set()
                call_safely(self.on_lost, self.lease.name, "on_lost")
                return


class LeaderElector:
    """Keeps campaigning for ``lease`` in a background thread until ``stop()``.

    Time comes from the lease (``held``, ``valid_for()`` on its injected clock); the elector
    keeps no clock of its own, so a lease on a manual clock makes its decisions testable.
    """

    def __init__(
        self,
        lease: LeaseProtocol,
        on_elected: Callback | None = None,
        on_lost: Callback | None = None,
        renew_interval: float | None = None,
        retry_interval: float | None = None,
    ) -> None:
        self.lease = lease
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.renew_interval = renew_interval if renew_interval is not None else default_renew_interval(lease.ttl)
        self.retry_interval = retry_interval if retry_interval is not None else default_retry_interval(lease.ttl)
        if not 0 < self.renew_interval < lease.ttl / 2:
            raise ConfigurationError("renew_interval", renew_interval, f"more than 0 and less than ttl/2 ({lease.ttl / 2})")
        if not 0 < self.retry_interval:
            raise ConfigurationError("retry_interval", retry_interval, "a positive number of seconds")
        self._leading = False
        self._renew_failed = False
        self._elected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_on_stop = True
        self._unsubscribe: Callback | None = None

    @property
    def is_leader(self) -> bool:
        """True only while this elector leads and its lease is within its validity window."""
        return self._leading and self.lease.held

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this elector leads (True) or ``timeout`` passes (False)."""
        return self._elected.wait(timeout) and self.is_leader

    def start(self) -> "LeaderElector":
        if self._thread is not None:
            raise RuntimeError("elector already started")
        self._stop.clear()
        try:
            self._unsubscribe = self.lease.on_release(self._wake.set)
        except Exception as exc:  # listening is an optimisation; polling still works
            log.warning("lease %s: cannot listen for releases (%s); polling only", self.lease.name, exc)
        self._thread = threading.Thread(target=self._run, name=f"elector-{self.lease.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; with ``release`` a leader hands over at once. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._release_on_stop = release
        self._stop.set()
        self._wake.set()
        thread.join()
        self._thread = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __enter__(self) -> "LeaderElector":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        failing: str | None = None
        while not self._stop.is_set():
            try:
                self._step()
                failing = None
            except Exception as exc:  # the loop must outlive any failure; treat it as "not leading"
                if repr(exc) != failing:  # logged once per distinct failure, not once per step
                    log.exception("lease %s: elector step failed", self.lease.name)
                failing = repr(exc)
                self._step_down("error")
            wait = next_wait(self._leading, self.lease.valid_for(), self.lease.ttl,
                             self.renew_interval, self.retry_interval, self._renew_failed,
                             None if self._leading else self.lease.free_in())
            if self._leading:
                self._wake.clear()  # releases matter to followers only
            if self._stop.is_set():
                break  # stop() came during the step: its wake-up may just have been cleared
            self._wake.wait(wait)
            self._wake.clear()
        if self._leading:
            if self._release_on_stop:
                call_safely(self.lease.release, self.lease.name, "release")
            self._step_down("stopped")

    def _step(self) -> None:
        if not self._leading:
            if self.lease.acquire(blocking=False):
                self._leading = True
                log.info("lease %s: elected (token %s)", self.lease.name, self.lease.token)
                events.emit(events.ELECTED, name=self.lease.name, token=self.lease.token)
                call_safely(self.on_elected, self.lease.name, "on_elected")
                self._elected.set()
            return
        self._renew_failed, lost = renew_or_give_up(self.lease)
        if lost:
            self._step_down(lost)

    def _step_down(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        self._renew_failed = False
        self._elected.clear()
        if why == "stopped":
            log.info("lease %s: stepped down (stopped)", self.lease.name)
        else:
            log.warning("lease %s: leadership lost: %s", self.lease.name, why)
        events.emit(events.STEPPED_DOWN, name=self.lease.name, why=why)
        call_safely(self.on_lost, self.lease.name, "on_lost")

