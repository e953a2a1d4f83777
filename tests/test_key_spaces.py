"""Names never collide, and slot memory stays bounded (hardening items 2, 3, 13), on a real Redis."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from celery import Celery

from publishing import published, tick_until, lead_with_last_run
from singleton_tasks import Claim, LeaderScheduler, Lease, singleton_task
from singleton_tasks.backends.redis import claim_slot
from singleton_tasks import keys
from singleton_tasks.backend import SLOT_MEMORY
from singleton_tasks.backends.redis.nodes import NodeSet
from singleton_tasks.task import close_backends

UTC = timezone.utc


def schedule_app(redis_url: str, lease_name: str) -> Celery:
    app = Celery(lease_name, set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=redis_url, singleton_lease_ttl=2,
                    singleton_beat_lease_name=lease_name,
                    beat_schedule={"report": {"task": "report", "schedule": 60.0}})
    return app


def first_sent(app: Celery, last_run: datetime) -> dict:
    """The headers and task id of the first message ``app``'s LeaderScheduler sends."""
    scheduler = LeaderScheduler(app=app)
    try:
        with published() as sent:
            lead_with_last_run(scheduler, "report", last_run)
            tick_until(scheduler, lambda: sent, 10, "the leader to send the due entry")
        return sent[0]
    finally:
        scheduler.close()


def test_two_schedules_on_one_redis_have_their_own_slots(redis_url) -> None:
    last_run = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=61)
    billing, reports = schedule_app(redis_url, "billing"), schedule_app(redis_url, "reports")
    a, b = first_sent(billing, last_run), first_sent(reports, last_run)
    assert a["singleton_slot"] != b["singleton_slot"], "same entry name and due time, two schedules"
    assert a["singleton_slot"].split("@")[1] == b["singleton_slot"].split("@")[1], "the same due time"
    assert a["id"] != b["id"], "and two task ids"
    assert keys.slot_task_id("app1:", "s/e@1") != keys.slot_task_id("app2:", "s/e@1"), "prefixes keep them apart"

    ran = []
    for app, headers in ((billing, a), (reports, b)):
        @singleton_task(app=app, name="report", shared=False)
        def report(self):
            ran.append(self.singleton.slot)
        assert report.apply(headers={"singleton_slot": headers["singleton_slot"]}).state == "SUCCESS"
    assert ran == [a["singleton_slot"], b["singleton_slot"]], "neither was skipped as 'already ran'"
    close_backends()


def test_a_beat_lease_named_like_a_task_does_not_make_it_busy(redis_url) -> None:
    app = schedule_app(redis_url, "report")
    beat_lease = Lease(keys.beat_lease_name("report"), redis_url, ttl=30)
    assert beat_lease.acquire(blocking=False)

    @singleton_task(app=app, name="report", shared=False)
    def report(self):
        return self.singleton.name

    assert report.apply().get() == "task:report", "the task's lease is its own"
    assert beat_lease.held and beat_lease.holder()["token"] == beat_lease.token
    close_backends()


def test_slot_memory_per_entry_is_bounded_and_still_tells_duplicates_apart(redis_node) -> None:
    nodes = NodeSet([redis_node.url], 2.0)
    key = keys.slots_key("singleton:", "beat/every-second")
    start = 1_767_225_600_000
    # A day of a 1-s entry, claimed in one pipeline (the script, as the task runs it).
    client = redis_node.client()
    from singleton_tasks.backends.redis.records import CLAIM_SLOT
    client.script_load(CLAIM_SLOT.source)
    pipe = client.pipeline(transaction=False)
    day = 86_400
    for n in range(day):
        pipe.evalsha(CLAIM_SLOT.sha, 1, key, start + n * 1000, 0, SLOT_MEMORY, 86_400_000)
    assert pipe.execute() == [1] * day, "every slot claimed once"
    used = client.memory_usage(key)
    assert client.hlen(key) == SLOT_MEMORY + 1, "the recent slots and the floor, nothing more"
    assert used < 4096, f"{used} bytes for a day of slots"  # measured: 876 B (README)
    assert client.dbsize() == 1, "one key per entry, not one per slot"
    last = start + (day - 1) * 1000

    def claim(due: int, attempt: int = 0) -> Claim:
        return claim_slot(nodes, key, due, attempt, 86_400).outcome

    assert claim(last) is Claim.ALREADY_RAN, "a duplicate delivery of the newest slot"
    assert claim(last, attempt=1) is Claim.CLAIMED, "a retry the body asked for"
    assert claim(last - 10_000) is Claim.ALREADY_RAN, "a slot still remembered"
    assert claim(start) is Claim.TOO_OLD, "older than everything remembered: refused, never run twice"
    assert claim(last + 2000) is Claim.CLAIMED and claim(last + 1000) is Claim.CLAIMED, "out of order, both run"
    assert claim(last + 1000) is Claim.ALREADY_RAN
    assert 0 < client.pttl(key) <= 86_400_000, "an entry that stops running is forgotten"
    nodes.close()
