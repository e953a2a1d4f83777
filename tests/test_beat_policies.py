"""LeaderScheduler in-process (real Redis, Celery's in-memory broker): slot times and the
missed-run policies after an outage."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule
from celery.signals import before_task_publish

from publishing import published, tick_until
from singleton_tasks import LeaderScheduler, settings_for

UTC = timezone.utc


def make_app(redis_url: str, **conf) -> Celery:
    app = Celery("policies", set_as_current=False)
    app.conf.update({"broker_url": "memory://", "singleton_redis_url": redis_url, "singleton_lease_ttl": 2,
                     "beat_schedule": {"every-second": {"task": "t.e", "schedule": 1.0}}, **conf})
    return app


def test_slot_times_come_from_the_last_run_alone(redis_url) -> None:
    app = make_app(redis_url)
    last = datetime(2026, 1, 1, 12, 0, 30, 250000, tzinfo=UTC)
    now = datetime(2026, 1, 1, 13, 0, 0, tzinfo=UTC)
    cron = ScheduleEntry("c", "t.e", last_run_at=last, schedule=crontab(minute="*"), app=app)
    assert LeaderScheduler._due_time(cron, now) == datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    interval = ScheduleEntry("i", "t.e", last_run_at=last, schedule=schedule(timedelta(seconds=5)), app=app)
    assert LeaderScheduler._due_time(interval, now) == last + timedelta(seconds=5)


@pytest.mark.parametrize("policy, expected", [("coalesce", 1), ("skip", 0), ("catch_up", 10)])
def test_missed_runs_after_an_outage_follow_the_policy(redis_url, policy, expected) -> None:
    app = make_app(redis_url, singleton_missed_runs=policy, singleton_catch_up_limit=10)
    sent: list[str] = []

    def record(headers=None, **_):
        sent.append(headers["singleton_slot"])

    before_task_publish.connect(record, weak=False)
    scheduler = LeaderScheduler(app=app)
    try:
        deadline = time.monotonic() + 10
        while not scheduler.is_leader and time.monotonic() < deadline:
            scheduler.tick()
        assert scheduler.is_leader
        scheduler.tick()  # the first tick as leader loads the schedule
        # As if the leader had last run it 60 s ago (an outage since): a standby has no schedule.
        scheduler.schedule["every-second"].last_run_at = datetime.now(UTC) - timedelta(seconds=60)
        scheduler._heap = None
        sent.clear()
        for _ in range(40):  # enough ticks to send every late slot; the next one is a second away
            scheduler.tick()
        late = [s for s in sent if int(s.split("@")[1]) / 1000 < time.time() - 5]
        assert len(late) == expected, f"{policy}: sent {sent}"
        if policy == "catch_up":
            dues = [int(s.split("@")[1]) for s in late]
            assert dues == sorted(dues) and dues[1] - dues[0] == 1000, "oldest first, one per missed slot"
        assert len(set(sent)) == len(sent), "no slot sent twice"
    finally:
        before_task_publish.disconnect(record)
        scheduler.close()
    assert settings_for(app).missed_runs == policy


def test_a_slot_reserved_by_a_dead_leader_is_sent_by_the_next(redis_url) -> None:
    app = make_app(redis_url, singleton_lease_ttl=1)
    sent: list[tuple[str, int]] = []

    def record(headers=None, **_):
        sent.append((headers["singleton_slot"], headers["singleton_token"]))

    before_task_publish.connect(record, weak=False)
    first, second = LeaderScheduler(app=app), LeaderScheduler(app=app)
    try:
        deadline = time.monotonic() + 10
        while not first.is_leader and time.monotonic() < deadline:
            first.tick()
        assert first.is_leader and first._lease is not None
        first.tick()  # the first tick as leader adopts the shared state
        sent.clear()  # a slow election may have let that tick send a slot: only what follows counts
        entry = first.schedule["every-second"]
        entry.last_run_at = datetime.now(UTC) - timedelta(seconds=1.5)
        first.reserve(entry)  # recorded in Redis as pending ...
        reserved = first._reserved["every-second"]
        assert reserved is not None and not sent
        first_token = first._lease.token
        assert first._elector is not None
        first._elector.stop(release=False)  # ... and the leader dies before publishing it
        first._elector = None
        while not second.is_leader and time.monotonic() < deadline:
            second.tick()
        assert second.is_leader and second._lease is not None
        second.tick()
        assert sent[:1] == [(reserved[0], second._lease.token)], f"the reserved slot first, by the new leader: {sent}"
        assert second._lease.token > first_token
        assert [slot for slot, _ in sent].count(reserved[0]) == 1
    finally:
        before_task_publish.disconnect(record)
        first.close()
        second.close()


def test_sigterm_during_a_publish_lets_it_finish_then_hands_over(redis_url) -> None:
    """Celery beat's SIGTERM handler raises SystemExit wherever the main thread is; a slot
    being published must still reach the broker before the lease is released."""
    import os
    import signal

    import redis
    from celery.apps.beat import Beat
    from celery.beat import Service

    app = make_app(redis_url, broker_url=redis_url)
    service = Service(app=app, scheduler_cls=LeaderScheduler)
    scheduler = service.scheduler
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    Beat(app=app).install_sync_handler(service)  # beat's own handler: close, then SystemExit
    interrupted: list[str] = []

    def sigterm_mid_publish(headers=None, **_):
        interrupted.append(headers["singleton_slot"])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler is due at the next bytecode: it fires inside the publish unless held

    try:
        deadline = time.monotonic() + 10
        while not scheduler.is_leader and time.monotonic() < deadline:
            scheduler.tick()
        assert scheduler.is_leader
        scheduler.tick()
        broker = redis.Redis.from_url(redis_url)
        assert broker.exists("singleton:{beat:beat}:lease"), "the lease key, held"
        broker.delete("celery")  # only the interrupted publish counts below
        scheduler.schedule["every-second"].last_run_at = datetime.now(UTC) - timedelta(seconds=1.5)
        scheduler._heap = None
        before_task_publish.connect(sigterm_mid_publish, weak=False)
        with pytest.raises(SystemExit):
            while time.monotonic() < deadline:
                scheduler.tick()
        assert len(interrupted) == 1, "the SIGTERM fired during a publish"
        assert broker.llen("celery") == 1, "the slot being published when SIGTERM came reached the broker"
        assert not broker.exists("singleton:{beat:beat}:lease"), "the lease was released once the publish was done"
        assert not scheduler.is_leader
    finally:
        before_task_publish.disconnect(sigterm_mid_publish)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        scheduler.close()


def test_an_entry_that_cannot_be_sent_does_not_stop_the_others(redis_url, caplog) -> None:
    """Celery wraps every send error in SchedulingError (here: arguments JSON cannot carry):
    that entry is logged and left pending, the others go on, and the leader stays the leader."""
    app = make_app(redis_url, beat_schedule={
        "a-poison": {"task": "t.e", "schedule": 1.0, "args": [object()]},
        "b-good": {"task": "t.e", "schedule": 1.0},
    })
    scheduler = LeaderScheduler(app=app)
    try:
        with published() as sent:
            tick_until(scheduler, lambda: scheduler._led_token is not None, 15, "the scheduler to lead")
            token = scheduler._led_token

            def good() -> list[str]:
                return [h["singleton_slot"] for h in sent if h["singleton_slot"].startswith("beat/b-good@")]

            deadline = time.monotonic() + 15
            while len(set(good())) < 3:
                assert time.monotonic() < deadline, f"b-good should keep being sent: {sent}"
                time.sleep(min(scheduler.tick(), 0.2))
        assert len(good()) == len(set(good())), f"each good slot once, advancing: {good()}"
        assert scheduler.is_leader and scheduler._led_token == token, "no step-down over one bad entry"
        assert "could not send beat/a-poison@" in caplog.text
    finally:
        scheduler.close()
