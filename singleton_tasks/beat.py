"""``LeaderScheduler``: a drop-in Celery beat scheduler that dispatches from one replica.

Run any number of ``celery beat -S singleton`` (or ``celery worker -B --scheduler singleton``)
replicas. Guarantees:

* Only the holder of the beat lease dispatches, and never after its validity deadline:
  the lease is checked from local state right before each publish.
* Each entry's last run and run count live in Redis, written with a fenced write (the
  lease's token) before the publish. A new leader starts from them, so it neither repeats
  nor skips a slot; a slot reserved but not confirmed as sent by a dead leader is sent
  again by the next one, with the same slot id, so a singleton task runs it once.
* Redis errors, lost leases and stale tokens make this replica stop dispatching and
  campaign again; they never end beat. SIGTERM releases the lease at once, after the
  publish in flight (if any) has finished.
* Missed slots follow ``singleton_missed_runs``: ``coalesce`` (Celery's own behaviour: one
  late run), ``skip`` (a run more than ``singleton_missed_grace`` seconds late is not sent),
  or ``catch_up`` (each missed slot is sent, at most ``singleton_catch_up_limit`` in a row).

Each message carries the headers ``singleton_slot`` (schedule, entry name and due time) and
``singleton_token`` (the leader's fencing token), and a task id derived from the slot.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import datetime, timedelta
from typing import Any

from celery.beat import Scheduler
from celery.schedules import crontab, schedule
from celery.signals import beat_embedded_init
from celery.utils.time import maybe_make_aware

from . import events, keys
from .conf import SLOT_HEADER, TOKEN_HEADER, settings_for
from .election import LeaderElector
from .errors import LeaseLost, SingletonError, StaleToken
from .backend import Backend, LeaseProtocol, RecordsProtocol
from .backends import log_startup_warnings, without_passwords
from .interrupts import stop_signals_held
from .metrics import start_from_settings as start_metrics
from . import signals as _signals  # noqa: F401 - events reach Celery signals in every beat process

log = logging.getLogger("singleton_tasks.beat")

#: The pid of the worker that forked this embedded beat (``worker -B``), else None.
_embedded_in: int | None = None


@beat_embedded_init.connect  # type: ignore[untyped-decorator]
def _remember_worker(**_: Any) -> None:
    global _embedded_in
    _embedded_in = os.getppid()


#: A shared record whose last run is later than now by more than this (clock skew between
#: beat hosts aside) cannot be right, and would stop its entry: it is ignored, with a warning.
FUTURE_TOLERANCE = timedelta(seconds=60)


class LeaderScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat scheduler that dispatches only while it holds the beat lease."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # No Redis I/O here: beat builds schedulers more than once (once lazily for the
        # banner) and --detach closes descriptors after this runs. Election starts in tick().
        self.settings = settings_for(app)
        self._backend: Backend | None = None
        self._lease: LeaseProtocol | None = None
        self._elector: LeaderElector | None = None
        self._records: RecordsProtocol | None = None
        self._led_token: int | None = None
        self._reserved: dict[str, tuple[str, dict[str, Any]] | None] = {}
        self._late_in_a_row: dict[str, int] = {}
        self._failing: str | None = None  # the last tick failure logged, until a tick succeeds
        super().__init__(app, *args, **kwargs)

    # -- election ------------------------------------------------------------------------

    def _ensure_elector(self) -> LeaderElector:
        if self._elector is None:
            s = self.settings
            start_metrics(s)
            self._backend = backend = s.open_backend()
            log_startup_warnings(backend)
            self._lease = backend.lease(keys.beat_lease_name(s.beat_lease_name), s.lease_ttl,
                                        retry_interval=s.retry_interval)
            self._records = backend.records(s.beat_lease_name)
            self._elector = LeaderElector(self._lease, renew_interval=s.renew_interval,
                                          retry_interval=s.retry_interval).start()
        return self._elector

    @property
    def is_leader(self) -> bool:
        return self._elector is not None and self._elector.is_leader

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One beat iteration; a follower waits (at most a lease TTL, less if elected) to be elected."""
        if _embedded_in is not None and os.getppid() != _embedded_in:
            # worker -B forks beat into a child; if the worker died, nothing consumes what we
            # send, so an orphaned beat must give the lease to a live node and exit.
            log.error("beat: the worker that embedded this beat is gone; releasing and exiting")
            self.close()
            raise SystemExit(1)
        try:
            elector = self._ensure_elector()
            if not elector.is_leader:
                if self._led_token is not None:
                    log.warning("beat: no longer the leader; not dispatching")
                    self._led_token = None
                # Election wakes this at once; otherwise a standby's main thread wakes once a
                # TTL (to notice an orphaning), not every retry interval: an idle standby costs
                # next to nothing. A stop signal still interrupts the wait.
                elector.wait_for_leadership(self.settings.lease_ttl)
                return 0.0
            assert self._lease is not None
            token = self._lease.token
            if token is None:
                return 0.0
            with stop_signals_held():  # a stop waits for the publish in flight
                if token != self._led_token:
                    self._take_over(token)
                delay = float(super().tick(*args, **kwargs))
            if self._failing is not None:
                log.warning("beat: dispatching again (after: %s)", self._failing)
                self._failing = None
            return min(delay, self.settings.renew_interval, self._lease.valid_for())
        except Exception as exc:  # any escape would end beat: treat it as "not leader now"
            if str(exc) != self._failing:  # once per distinct failure, not once per tick
                log.error("beat: not dispatching: %s", exc, exc_info=not isinstance(exc, SingletonError))
                self._failing = str(exc)
            if isinstance(exc, StaleToken) and self._lease is not None:
                events.emit(events.STALE_TOKEN, name=self._lease.name, token=exc.token, highest=exc.highest)
                # A newer leader wrote the schedule: step down now. If instead our fence was
                # lowered behind our back, the next grant must still beat what was written.
                self._lease.exceed(exc.highest)
                self._lease.release()
            self._heap = None  # a half-done tick may have popped an entry from the heap
            self._led_token = None  # re-read the shared state before dispatching again
            return self.settings.retry_interval

    def _take_over(self, token: int) -> None:
        """Start leading: adopt the shared schedule state and send what a dead leader reserved."""
        assert self._records is not None
        found = self._records.read_all()
        log.info("beat: leading with token %d (%d entries with shared state)", token, len(found))
        records = {}
        now = maybe_make_aware(self.app.now())  # once: a take-over may read thousands of records
        for name, entry in self.schedule.items():
            record = found.get(name) and self._usable(name, found[name], now)
            if record:
                entry.last_run_at, entry.total_run_count = record["last_run_at"], record["total_run_count"]
                records[name] = record
        self._led_token = token
        self._heap = None
        for name, entry in list(self.schedule.items()):
            pending = records.get(name, {}).get("pending")
            if pending:
                log.info("beat: sending slot %s that the previous leader reserved", pending)
                self._send(entry, pending, self._record(entry, None))

    def _usable(self, name: str, record: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """The shared record of entry ``name``, checked; None (with a warning) if it cannot be right."""
        try:
            last = maybe_make_aware(datetime.fromisoformat(record["last_run_at"]))
            count = int(record["total_run_count"])
            pending = record.get("pending")
            if count < 0 or not (pending is None or (isinstance(pending, str) and keys.parse_slot(pending))):
                raise ValueError("a negative run count, or a pending value that is not a slot id")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("beat: ignoring the shared record of %s, which does not parse (%s): %.200r", name, exc, record)
            return None
        if last > now + FUTURE_TOLERANCE:
            log.warning("beat: ignoring the shared record of %s: its last run %s is in the future (now %s)",
                        name, last.isoformat(), now.isoformat())
            return None
        return {"last_run_at": last, "total_run_count": count, "pending": pending}

    # -- dispatch ------------------------------------------------------------------------

    def reserve(self, entry: Any) -> Any:
        """Advance ``entry`` to its next slot and record that in Redis before any publish."""
        if self._lease is None or self._lease.token is None or self._lease.token != self._led_token:
            raise LeaseLost("beat lease not held")
        now = entry.default_now()
        due = self._due_time(entry, now)
        slot = keys.slot_id(self.settings.beat_lease_name, entry.name, int(due.timestamp() * 1000))
        late = (now - due).total_seconds()
        new_entry = next(entry)
        send = True
        policy = self.settings.missed_runs
        if policy == "skip" and late > self.settings.missed_grace:
            send = False
            new_entry.total_run_count = entry.total_run_count
            log.warning("beat: skipping %s, %.1fs late (singleton_missed_runs='skip')", slot, late)
        elif policy == "catch_up":
            streak = self._late_in_a_row.get(entry.name, 0) + 1 if late > self.settings.missed_grace else 0
            if streak < self.settings.catch_up_limit and due > maybe_make_aware(entry.last_run_at):
                new_entry.last_run_at = due  # the next slot follows this one, not "now"
                self._heap = None  # tick() would otherwise queue the next slot a period later
            elif streak:
                log.warning("beat: %s reached singleton_catch_up_limit=%d; older missed runs are dropped",
                            entry.name, self.settings.catch_up_limit)
                streak = 0
            self._late_in_a_row[entry.name] = streak
        record = self._record(new_entry, slot if send else None)
        self._records.write(self._led_token, entry.name, record)  # type: ignore[union-attr]
        self.schedule[entry.name] = new_entry
        self._reserved[entry.name] = (slot, record) if send else None
        return new_entry

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        reserved = self._reserved.pop(entry.name, None)
        if reserved is not None:
            self._send(entry, *reserved, producer=producer)

    def _send(self, entry: Any, slot: str, record: dict[str, Any], producer: Any = None) -> None:
        lease, token = self._lease, self._led_token
        if lease is None or token is None or lease.token != token:
            log.warning("beat: not sending %s: no longer the leader (the next leader will)", slot)
            return
        options = dict(entry.options)
        options["headers"] = {**(options.get("headers") or {}), SLOT_HEADER: slot, TOKEN_HEADER: token}
        options.setdefault("task_id", keys.slot_task_id(self.settings.key_prefix, slot))
        to_send = copy.copy(entry)
        to_send.options = options
        log.info("beat: sending %s (%s) token %d", slot, entry.task, token)
        events.emit(events.DISPATCHED, name=lease.name, slot=slot, token=token)
        self.apply_async(to_send, producer=producer or self.producer, advance=False)
        self._records.write(token, entry.name, {**record, "pending": None})  # type: ignore[union-attr]

    @staticmethod
    def _due_time(entry: Any, now: datetime) -> datetime:
        """The nominal time of the slot being run: what makes its id the same on every leader.

        Computed from ``last_run_at`` alone where the schedule allows it. ``now +
        remaining_estimate()`` reads the clock a second time inside Celery and lands a few
        microseconds early: a crontab slot then sits just before its boundary, and under
        ``catch_up`` (last_run_at = due) the same occurrence is due again at once.
        """
        sched = entry.schedule
        try:
            if isinstance(sched, crontab):
                start, delta, _ = sched.remaining_delta(entry.last_run_at)
                return start + delta  # type: ignore[no-any-return]
            if isinstance(sched, schedule) and not sched.relative:
                return sched.maybe_make_aware(entry.last_run_at) + sched.run_every  # type: ignore[no-any-return]
            remaining: timedelta = sched.remaining_estimate(entry.last_run_at)
        except (AttributeError, NotImplementedError, TypeError):
            return now
        return now + remaining

    @staticmethod
    def _record(entry: Any, pending: str | None) -> dict[str, Any]:
        return {
            "last_run_at": maybe_make_aware(entry.last_run_at).isoformat(),
            "total_run_count": entry.total_run_count,
            "pending": pending,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Hand over at once: stop the elector and release the lease. Idempotent."""
        elector, self._elector = self._elector, None
        if elector is not None:
            was_leader = elector.is_leader
            elector.stop(release=True)
            log.info("beat: %s", "released the beat lease" if was_leader else "stopped campaigning")
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        super().close()

    @property
    def info(self) -> str:
        s = self.settings
        nodes = ", ".join(without_passwords(u) for u in s.backend_urls)
        role = "leader" if self.is_leader else "follower (campaigning)"
        key = keys.lease_key(s.key_prefix, keys.beat_lease_name(s.beat_lease_name))
        return (f"    . singleton lease -> {key} ttl={s.lease_ttl:g}s "
                f"renew={s.renew_interval:.3g}s\n    . singleton nodes -> {nodes}\n    . singleton role -> {role}")
