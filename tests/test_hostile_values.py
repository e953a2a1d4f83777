"""Values in our keys that this library did not write, and a pause at the worst moment
(hardening items 5, 6, 7, 12), against real redis-server processes.

Nothing read is ever run; a bad value is reported once, and the library recovers by itself.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.signals import before_task_publish

from procs import wait_for
from singleton_tasks import LeaderElector, LeaderScheduler, Lease
from singleton_tasks.backends.redis import lease as lease_module
from singleton_tasks.clock import ManualClock
from singleton_tasks.backends.redis.nodes import NodeSet
from singleton_tasks.backends.redis.scripts import ACQUIRE, CONFIRM

UTC = timezone.utc
FENCE = "singleton:{lowered}:fence"


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_fence_lowered_by_someone_else_never_makes_tokens_go_back(redis_node, caplog) -> None:
    client = redis_node.client()
    lease = Lease("lowered", redis_node.url, ttl=5)
    assert lease.acquire(blocking=False)
    first = lease.token
    lease.release()
    client.set(FENCE, -5)  # below zero: the next INCR would give -4
    assert lease.acquire(blocking=False)
    second = lease.token
    assert second > first >= 1, f"tokens {first} then {second}"
    assert any(FENCE in e and "-4" in e for e in errors(caplog)), "the bad fence is reported, naming the key"
    assert int(client.get(FENCE)) == second, "and repaired by the grant"
    lease.release()
    client.set(FENCE, 3)  # positive but far below what this process has seen
    assert lease.acquire(blocking=False)
    third = lease.token
    assert third == second + 1, "one above the highest token seen, not 4"
    went_back = [e for e in errors(caplog) if "went back" in e]
    assert len(went_back) == 1 and FENCE in went_back[0] and "4" in went_back[0] and str(second) in went_back[0]
    assert int(client.get(FENCE)) == third, "the fence on the node was raised to the token granted"
    lease.release()


def test_beat_recovers_by_itself_from_a_stale_token_loop(redis_url, caplog, monkeypatch) -> None:
    app = Celery("stale-loop", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=redis_url, singleton_lease_ttl=2,
                    beat_schedule={"every-second": {"task": "t.e", "schedule": 1.0}})
    sent: list[tuple[str, int]] = []

    def record(headers=None, **_):
        sent.append((headers["singleton_slot"], headers["singleton_token"]))

    before_task_publish.connect(record, weak=False)
    try:
        first = LeaderScheduler(app=app)
        wait_for(lambda: first.tick() is not None and sent, 15, "the first leader to dispatch")
        written = sent[-1][1]
        first.close()
        redis = Lease("x", redis_url).nodes.clients[0]
        redis.set("singleton:{beat:beat}:fence", 3)  # lowered behind everyone's back
        monkeypatch.setattr(lease_module, "_seen_tokens", {}, raising=False)  # as a fresh process would start
        sent.clear()
        second = LeaderScheduler(app=app)
        wait_for(lambda: second.tick() is not None and sent, 15, "the next leader to dispatch despite the stale fence")
        assert sent[-1][1] > written, f"dispatching with a token above {written}: {sent}"
        stale = [e for e in errors(caplog) if "is stale" in e]
        assert len(stale) == 1, f"one stale-token error, then recovered: {stale}"
        second.close()
    finally:
        before_task_publish.disconnect(record)


class PausingNodes(NodeSet):
    """Real nodes; the client pauses past its validity between round 1 and round 2."""

    def __init__(self, urls: list[str], clock: ManualClock, pause: float) -> None:
        super().__init__(urls, 1.0)
        self.clock, self.pause, self.sent = clock, pause, []

    def run_script(self, script, keys, args, only=None):
        self.sent.append(script)
        replies = super().run_script(script, keys, args, only)
        if script is ACQUIRE:
            self.clock.advance(self.pause)
        return replies


def test_no_round_two_once_the_validity_ran_out(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    assert Lease("paused", nodes.urls, ttl=2).acquire(blocking=False)
    for node in nodes:
        node.client().delete("singleton:{paused}:lease")
    nodes[0].restart(wipe=True)  # its fence is gone: the next grant needs round 2 to repair it
    clock = ManualClock()
    pausing = PausingNodes(nodes.urls, clock, pause=2.5)
    lease = Lease("paused", pausing, ttl=2, clock=clock)
    assert not lease.acquire(blocking=False), "the grant's validity ran out during the pause"
    assert CONFIRM not in pausing.sent, "round 2 was not sent"
    assert nodes[0].client().get("singleton:{paused}:fence") is None, "no late repair was written"
    assert all(n.client().get("singleton:{paused}:lease") is None for n in nodes), "round 1 was undone"
    pausing.pause = 0
    assert lease.acquire(blocking=False), "without the pause the same grant goes through"
    assert int(nodes[0].client().get("singleton:{paused}:fence")) == lease.token, "and repairs the wiped node"


def schedule_app(redis_url: str) -> Celery:
    app = Celery("records", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=redis_url, singleton_lease_ttl=2,
                    beat_schedule={"every-second": {"task": "t.e", "schedule": 1.0},
                                   "broken": {"task": "t.b", "schedule": 1.0}})
    return app


def test_schedule_records_from_the_future_or_unparseable_are_ignored(redis_url, caplog) -> None:
    redis = Lease("x", redis_url).nodes.clients[0]
    key = "singleton:{beat:beat}:schedule"
    future = {"last_run_at": "2099-01-01T00:00:00+00:00", "total_run_count": 3, "pending": None, "token": 1}
    garbage = {"last_run_at": "yesterday", "total_run_count": "many", "pending": None, "token": 1}
    redis.hset(key, mapping={"__token__": 1, "every-second": json.dumps(future), "broken": json.dumps(garbage)})
    sent: list[str] = []

    def record(headers=None, **_):
        sent.append(headers["singleton_slot"])

    before_task_publish.connect(record, weak=False)
    scheduler = LeaderScheduler(app=schedule_app(redis_url))
    try:
        with caplog.at_level(logging.WARNING, logger="singleton_tasks.beat"):
            deadline = time.monotonic() + 15
            while not {"every-second", "broken"} <= {s.split("/")[1].split("@")[0] for s in sent}:
                assert time.monotonic() < deadline, f"both entries run on their schedule: {sent}"
                scheduler.tick()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("every-second" in w and "in the future" in w for w in warnings), warnings
        assert any("broken" in w and "does not parse" in w for w in warnings), warnings
        assert not errors(caplog), "no tick failed"
        stored = json.loads(redis.hget(key, "every-second"))
        assert stored["last_run_at"] < "2099", "the leader's own record replaced the one from the future"
    finally:
        before_task_publish.disconnect(record)
        scheduler.close()


def test_a_foreign_fence_is_reported_once_not_once_per_attempt(redis_node, caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")  # an earlier worker test may have raised it
    client = redis_node.client()
    client.set("singleton:{flood}:fence", "garbage")
    lease = Lease("flood", redis_node.url, ttl=1, retry_interval=0.02)
    elector = LeaderElector(lease, retry_interval=0.02).start()
    try:
        wait_for(lambda: client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) > 40, 10,
                 "many election attempts")
        assert not elector.is_leader, "no token can be counted on the only node"
        assert len(errors(caplog)) == 1 and "singleton:{flood}:fence" in errors(caplog)[0], errors(caplog)
        client.delete("singleton:{flood}:fence")
        assert elector.wait_for_leadership(5), "elected once the foreign value is gone"
        gone = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
        assert len(gone) == 1, gone
    finally:
        elector.stop()
