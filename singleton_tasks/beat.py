"""``LeaderScheduler``: a drop-in Celery beat scheduler that dispatches from one replica.

Run any number of ``celery beat -S singleton`` (or ``celery worker -B --scheduler singleton``)
replicas. The leader runs the scheduler class ``singleton_beat_scheduler`` names (Celery's own
by default; django-celery-beat's ``DatabaseScheduler`` for schedules kept in a database), with
leadership mixed in (``scheduler_hosts``). Guarantees:

* Only the holder of the beat lease dispatches, and never after its validity deadline:
  the lease is checked from local state right before each publish.
* Each entry's last run and run count live in Redis, written with a fenced write (the
  lease's token) before the publish. A new leader starts from them, so it neither repeats
  nor skips a slot; a slot reserved but not confirmed as sent by a dead leader is sent
  again by the next one, with the same slot id, so a singleton task runs it once.
* Standbys neither dispatch nor write: they load no schedule, so a database host's rows are
  neither created (``setup_schedule``), nor synced, nor disabled by them. A host's writes
  (``sync``, at exit too) run only while the lease is held; a leader syncs before it hands over.
  On promotion the host's snapshot is dropped and reloaded; on demotion unsynced state is
  dropped. Run state is reconciled on every load: an entry whose row kept its own last run
  takes the fenced record's where that run is later (so a leader that died before syncing,
  or a paused ex-leader's late write, costs nothing), and takes the row's where the row is
  later (re-enabled, or re-created).
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

import logging
import os
import time
from typing import Any, Callable

from celery.beat import SchedulingError, Scheduler
from celery.signals import beat_embedded_init
from celery.utils.time import maybe_make_aware

from . import events, keys, run_records
from . import scheduler_hosts as hosts
from .conf import SLOT_HEADER, TOKEN_HEADER, settings_for
from .due_queue import DueQueue
from .election import LeaderElector
from .entries import EntrySpec, StoredEntries
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


#: How often the leader looks for changed stored entries (``celery singleton schedule``) when
#: the store cannot announce changes; when it can, it looks at each announcement, and this
#: often in case one was lost (STORED_SAFETY_POLL).
STORED_POLL = 1.0
STORED_SAFETY_POLL = 30.0

#: Entries sent per tick at most: a burst of due entries is reserved in writes of this many.
BATCH = 500

#: The note that a reserved slot was sent waits for the next reserve write only when that is
#: due within this long (else it is written at once): until it is written, a leader that dies
#: has its successor send the slot again, which only a singleton task deduplicates.
CONFIRM_WITHIN = 0.05


class LeaderMixin:
    """Beat leadership over a scheduler class: dispatch and write only while holding the beat lease."""

    _singleton_leader = True  # scheduler_hosts refuses to compose this with itself
    _heap: Any = None  # the due queue (Celery's Scheduler and hosts keep their heap here)
    max_interval: float

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # No Redis I/O here: beat builds schedulers more than once (once lazily for the
        # banner) and --detach closes descriptors after this runs. Election starts in tick().
        self.settings = settings_for(app)
        self._taking_over = False
        self._adopted: dict[str, Any] | None = None  # the host schedule whose run state was reconciled
        self._stored: StoredEntries | None = None
        self._stored_specs: dict[str, EntrySpec] = {}  # enabled stored entries, as last polled
        self._next_poll = 0.0  # monotonic time of the next look at the stored entries
        self._stored_changed = False  # set by the store's announcement (another thread)
        self._stop_hearing: Callable[[], None] | None = None  # stops hearing the announcements
        self._shadowed: set[str] = set()  # stored names a static entry hides (warned once)
        self._backend: Backend | None = None
        self._lease: LeaseProtocol | None = None
        self._elector: LeaderElector | None = None
        self._records: RecordsProtocol | None = None
        self._led_token: int | None = None
        self._reserved: dict[str, tuple[str, dict[str, Any]] | None] = {}  # by reserve(), for apply_entry()
        self._unconfirmed: dict[str, dict[str, Any]] = {}  # records whose slot was sent, not yet written so
        self._confirm_by = 0.0  # monotonic time by which they are written
        self._queued_from: dict[str, Any] | None = None  # the schedule the due queue was built from
        self._late_in_a_row: dict[str, int] = {}
        self._failing: str | None = None  # the last tick failure logged, until a tick succeeds
        if args:
            super().__init__(app, *args, **kwargs)  # type: ignore[call-arg]
        else:  # as Celery calls it; a host may read kwargs["app"] (sqlalchemy-celery-beat does)
            super().__init__(app=app, **kwargs)  # type: ignore[call-arg]

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
            self._stored = StoredEntries(backend, s.beat_lease_name)
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
                    self._step_down()
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
                elif self._stored_changed or time.monotonic() >= self._next_poll - STORED_POLL / 2:
                    self._poll_stored()  # early rather than on a wake-up of its own
                delay = self._dispatch()
                if self._unconfirmed and time.monotonic() >= self._confirm_by:
                    self._flush_confirmations()
            if self._failing is not None:
                log.warning("beat: dispatching again (after: %s)", self._failing)
                self._failing = None
            now = time.monotonic()
            return min(delay, self.settings.renew_interval, self._lease.valid_for(), max(0.0, self._next_poll - now),
                       max(0.0, self._confirm_by - now) if self._unconfirmed else delay)
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
            self._step_down()  # re-read the shared state before dispatching again
            return self.settings.retry_interval

    def _take_over(self, token: int) -> None:
        """Start leading: load the host's schedule afresh, adopt the shared run state, and send
        what a dead leader reserved."""
        hosts.forget_snapshot(self)
        self._reserved.clear()
        self._late_in_a_row.clear()
        self._taking_over = True
        try:
            self._hear_stored_changes()
            self._poll_stored(reconcile=False)
            super().setup_schedule()  # type: ignore[misc]  # a database host writes its static entries: leader only
            current = self._host_schedule()
            records = self._adopt(current)
        finally:
            self._taking_over = False
        log.info("beat: leading with token %d (%d entries, %d with shared state)", token, len(current), len(records))
        self._led_token = token
        self._heap = None
        for name, entry in list(current.items()):
            pending = records.get(name, {}).get("pending")
            if pending:
                log.info("beat: sending slot %s that the previous leader reserved", pending)
                if self._publish(entry, pending, token):
                    self._confirm_later(name, run_records.record_of(entry, None))
        self._flush_confirmations()

    def _hear_stored_changes(self) -> None:
        """Listen for the store's announcements of stored-entry changes, once per process."""
        if self._stop_hearing is not None or self._stored is None:
            return
        try:
            self._stop_hearing = self._stored.on_change(self._note_stored_change)
        except Exception as exc:  # only an optimisation: the poll still finds every change
            log.warning("beat: cannot hear changes to stored entries (%s); looking every %gs", exc, STORED_POLL)

    def _note_stored_change(self) -> None:
        self._stored_changed = True  # picked up at the next wake-up (at least one per renewal)

    def _poll_stored(self, reconcile: bool = True) -> None:
        """Pick up stored entries that changed (one round trip when none did)."""
        assert self._stored is not None
        self._stored_changed = False  # before the read: a change announced during it is read again
        self._next_poll = time.monotonic() + (STORED_SAFETY_POLL if self._stop_hearing else STORED_POLL)
        specs = self._stored.poll()
        if specs is None:
            return
        self._stored_specs = {name: spec for name, spec in specs.items() if spec.enabled}
        if reconcile:
            self._adopt(self._host_schedule())
            self._heap = None  # the due queue is rebuilt with the new entries

    def _step_down(self) -> None:
        """Stop at once: forget unsynced host state and the reconciled schedule."""
        self._led_token = None
        self._adopted = None
        self._reserved.clear()
        self._unconfirmed = {}  # their slots were sent: a next leader resends them (a singleton task runs once)
        hosts.forget_snapshot(self)  # also drops the heap: a half-done tick may have popped from it

    def _host_schedule(self) -> dict[str, Any]:
        return super().schedule  # type: ignore[misc, no-any-return]

    @property
    def schedule(self) -> dict[str, Any]:
        """The host's schedule, run state reconciled with the shared records; empty on a standby.

        A standby must not load its host's schedule: a database host writes while loading (it
        disables rows it cannot read).
        """
        if self._led_token is None and not self._taking_over:
            return {}
        current = self._host_schedule()
        if current is not self._adopted and not self._taking_over:
            self._adopt(current)  # the host reloaded (a database host does on every change)
        return current

    @schedule.setter
    def schedule(self, value: dict[str, Any]) -> None:
        self.set_schedule(value)  # type: ignore[attr-defined]

    def _adopt(self, current: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Reconcile ``current``'s entries with the shared records; returns the usable records."""
        assert self._records is not None
        hosts.place_stored(current, self._stored_specs, self.app, self._shadowed)  # type: ignore[attr-defined]
        found = self._records.read_all()
        records = {}
        now = maybe_make_aware(self.app.now())  # type: ignore[attr-defined]  # once: there may be thousands
        for name, entry in current.items():
            record = found.get(name) and run_records.usable(name, found[name], now)
            if not record:
                continue
            records[name] = record
            if not hosts.row_is_later(entry, record["last_run_at"]):
                hosts.set_run_state(entry, record["last_run_at"], record["total_run_count"])
        self._adopted = current
        return records

    def setup_schedule(self) -> None:
        """Deferred to the take-over: a standby writes nothing (a database host creates rows here)."""

    def sync(self) -> None:
        """The host's sync, only while this replica holds the lease it leads with."""
        if self._may_write():
            super().sync()  # type: ignore[misc]

    def _may_write(self) -> bool:
        lease = self._lease
        return lease is not None and self._led_token is not None and lease.token == self._led_token

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self) -> float:
        """Send every entry due now, up to BATCH of them; seconds until the next is due."""
        current = self.schedule  # a database host looks for changes here, and may reload
        queue = self._heap
        if not isinstance(queue, DueQueue) or self._queued_from is not current:
            queue = self._heap = DueQueue(current, self.is_due)  # type: ignore[attr-defined]
            self._queued_from = current
        due = queue.take_due(BATCH)
        if due:
            self._send_batch(queue, due)
        next_in = queue.next_in()
        return self.max_interval if next_in is None else min(next_in, self.max_interval)

    def _send_batch(self, queue: DueQueue, due: list[Any]) -> None:
        """Reserve every due entry in one fenced write (with the confirmations still owed), then
        publish each; the next due time of each goes back on the queue."""
        token = self._led_token
        assert token is not None and self._records is not None
        advanced = [(entry, *self._advance(entry)) for entry in due]
        writes, self._unconfirmed = self._unconfirmed, {}
        writes.update((entry.name, record) for entry, _, _, record in advanced)
        self._records.write(token, writes)
        for entry, new_entry, slot, record in advanced:
            if slot is not None and self._publish(entry, slot, token):
                self._confirm_later(entry.name, record)
            is_due, wait = self.is_due(new_entry)  # type: ignore[attr-defined]
            queue.push(new_entry, 0.0 if is_due else wait)
        next_in = queue.next_in()
        if self._unconfirmed and (next_in is None or next_in > CONFIRM_WITHIN):
            self._flush_confirmations()  # no reserve is due soon to carry them

    def _confirm_later(self, name: str, record: dict[str, Any]) -> None:
        """Owe the store the note that ``name``'s reserved slot was sent. When the next entry is
        due within CONFIRM_WITHIN, the note rides on its reserve write, so a busy schedule costs
        one round trip per dispatch; otherwise it is written at once."""
        if not self._unconfirmed:
            self._confirm_by = time.monotonic() + CONFIRM_WITHIN
        self._unconfirmed[name] = {**record, "pending": None}

    def _flush_confirmations(self) -> None:
        if self._unconfirmed and self._led_token is not None and self._records is not None:
            writes, self._unconfirmed = self._unconfirmed, {}
            self._records.write(self._led_token, writes)

    def reserve(self, entry: Any) -> Any:
        """Advance ``entry`` to its next slot and record that in the store before any publish
        (Celery's hook, for a host that sends entries itself)."""
        new_entry, slot, record = self._advance(entry)
        self._records.write(self._led_token, {entry.name: record})  # type: ignore[union-attr, arg-type]
        self._reserved[entry.name] = (slot, record) if slot is not None else None
        return new_entry

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        reserved = self._reserved.pop(entry.name, None)
        if reserved is not None and self._publish(entry, reserved[0], self._led_token, producer):
            self._records.write(self._led_token, {entry.name: {**reserved[1], "pending": None}})  # type: ignore

    def _advance(self, entry: Any) -> tuple[Any, str | None, dict[str, Any]]:
        """Advance ``entry`` past its due slot under the missed-run policy: the next entry, the
        slot to send (None when skipped), and the record to write before sending."""
        if self._lease is None or self._lease.token is None or self._lease.token != self._led_token:
            raise LeaseLost("beat lease not held")
        now = entry.default_now()
        due = self._due_time(entry, now)
        slot = keys.slot_id(self.settings.beat_lease_name, entry.name, int(due.timestamp() * 1000))
        late = (now - due).total_seconds()
        count = entry.total_run_count
        new_entry = super().reserve(entry)  # type: ignore[misc]  # the host advances it (and marks it dirty)
        send = True
        policy = self.settings.missed_runs
        if policy == "skip" and late > self.settings.missed_grace:
            send = False
            hosts.set_run_state(new_entry, total_run_count=count)
            log.warning("beat: skipping %s, %.1fs late (singleton_missed_runs='skip')", slot, late)
        elif policy == "catch_up":
            streak = self._late_in_a_row.get(entry.name, 0) + 1 if late > self.settings.missed_grace else 0
            if streak < self.settings.catch_up_limit and due > maybe_make_aware(entry.last_run_at):
                hosts.set_run_state(new_entry, last_run_at=due)  # the next slot follows this one, not "now"
            elif streak:
                log.warning("beat: %s reached singleton_catch_up_limit=%d; older missed runs are dropped",
                            entry.name, self.settings.catch_up_limit)
                streak = 0
            self._late_in_a_row[entry.name] = streak
        return new_entry, slot if send else None, run_records.record_of(new_entry, slot if send else None)

    def _publish(self, entry: Any, slot: str, token: int | None, producer: Any = None) -> bool:
        """Send ``entry``'s ``slot`` with the slot and token headers; False if no longer leading."""
        lease = self._lease
        if lease is None or token is None or lease.token != token:
            log.warning("beat: not sending %s: no longer the leader (the next leader will)", slot)
            return False
        options = dict(entry.options)
        options["headers"] = {**(options.get("headers") or {}), SLOT_HEADER: slot, TOKEN_HEADER: token}
        options.setdefault("task_id", keys.slot_task_id(self.settings.key_prefix, slot))
        log.info("beat: sending %s (%s) token %d", slot, entry.task, token)
        events.emit(events.DISPATCHED, name=lease.name, slot=slot, token=token)
        # The entry itself goes out with these options for this one message: a host's entry
        # class may not survive copy.copy (django-celery-beat's ModelEntry does not).
        saved, entry.options = entry.options, options
        try:
            self.apply_async(entry, producer=producer or self.producer, advance=False)  # type: ignore[attr-defined]
        except SchedulingError as exc:
            # This entry's message could not be sent (arguments that do not serialize, say): the
            # others go on, as in Celery's own beat. Its record stays pending: a next leader retries.
            log.error("beat: could not send %s (%s): %s", slot, entry.task, exc)
            return False
        finally:
            entry.options = saved
        return True

    _due_time = staticmethod(run_records.due_time)  # the slot's nominal time (tests call it here)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Sync the host while still leading, then hand over at once (release the lease). Idempotent."""
        try:
            if self._may_write():
                self._flush_confirmations()
            self.sync()
        except Exception:  # a failed write must not keep the lease from a live standby
            log.exception("beat: writing the schedule's state before handing over failed")
        elector, self._elector = self._elector, None
        if elector is not None:
            was_leader = elector.is_leader
            elector.stop(release=True)
            log.info("beat: %s", "released the beat lease" if was_leader else "stopped campaigning")
        stop_hearing, self._stop_hearing = self._stop_hearing, None
        if stop_hearing is not None:
            stop_hearing()
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        self._step_down()
        super().close()  # type: ignore[misc]

    @property
    def info(self) -> str:
        s = self.settings
        nodes = ", ".join(without_passwords(u) for u in s.backend_urls)
        role = "leader" if self.is_leader else "follower (campaigning)"
        key = keys.lease_key(s.key_prefix, keys.beat_lease_name(s.beat_lease_name))
        return (f"    . singleton lease -> {key} ttl={s.lease_ttl:g}s "
                f"renew={s.renew_interval:.3g}s\n    . singleton nodes -> {nodes}\n    . singleton role -> {role}")


class LeaderScheduler(LeaderMixin, Scheduler):  # type: ignore[misc]
    """The ``singleton`` beat scheduler: leadership over the class ``singleton_beat_scheduler`` names.

    Constructing it gives an instance of ``LeaderMixin`` composed with that class (this class
    itself for Celery's default ``Scheduler``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is LeaderScheduler:
            app = kwargs["app"] if "app" in kwargs else args[0]
            host = hosts.host_class(settings_for(app).beat_scheduler)
            if host is not Scheduler:
                return hosts.compose(LeaderMixin, host)(*args, **kwargs)
        return super().__new__(cls)
