"""Celery signals for leadership, lost leases, busy runs, deduplicated slots and failing nodes,
against real redis-server processes; a receiver that raises never stops the loop that sent."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
from celery import Celery

from fault_helpers import kill_node
from procs import wait_for
from singleton_tasks import (LeaderElector, Lease, leader_elected, leader_stepped_down, node_failing, node_recovered,
                             run_skipped_busy, singleton_task, slot_deduplicated)
from singleton_tasks.task import close_backends


class Received:
    """Every call of the connected signals, in order; a receiver that can be told to raise."""

    def __init__(self, *signals: Any, raising: bool = False) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.raising = raising
        self.lock = threading.Lock()
        self.signals = signals
        for signal in signals:
            signal.connect(self.receive, weak=False)

    def receive(self, signal: Any = None, sender: Any = None, **fields: Any) -> None:
        with self.lock:
            self.calls.append((signal.name, sender, fields))
        if self.raising:
            raise RuntimeError("a receiver that raises")

    def named(self, name: str) -> list[tuple[str, Any, dict[str, Any]]]:
        with self.lock:
            return [c for c in self.calls if c[0] == name]

    def close(self) -> None:
        for signal in self.signals:
            signal.disconnect(self.receive)


@pytest.fixture
def received() -> Iterator[list[Received]]:
    made: list[Received] = []
    yield made
    for r in made:
        r.close()


def test_leadership_signals_and_a_raising_receiver_breaks_nothing(redis_nodes_factory, received, caplog) -> None:
    nodes = redis_nodes_factory(3)
    calls = Received(leader_elected, leader_stepped_down, raising=True)
    received.append(calls)
    elector = LeaderElector(Lease("beat:signals", nodes.urls, ttl=2.0)).start()
    try:
        assert elector.wait_for_leadership(10)
        wait_for(lambda: calls.named("singleton_leader_elected"), 5, "the elected signal")
        [(_, sender, fields)] = calls.named("singleton_leader_elected")
        assert sender == "beat:signals" and fields == {"name": "beat:signals", "token": elector.lease.token}
        assert "a receiver that raises" in caplog.text, "the receiver did raise"
        deadline = time.monotonic() + elector.lease.valid_for()  # renewals push it later
        wait_for(lambda: time.monotonic() + elector.lease.valid_for() > deadline + 0.1 or None, 5,
                 "a renewal after the raising receiver")
        assert elector.is_leader, "the elector went on leading"
    finally:
        elector.stop()
    [(_, sender, fields)] = calls.named("singleton_leader_stepped_down")
    assert sender == "beat:signals" and fields["why"] == "stopped"


def test_a_failing_and_recovering_node_is_signalled_once_each(redis_nodes_factory, received) -> None:
    nodes = redis_nodes_factory(3)
    calls = Received(node_failing, node_recovered)
    received.append(calls)
    lease = Lease("nodes", nodes.urls, ttl=5.0, op_timeout=0.2)
    assert lease.acquire(blocking=False)
    kill_node(nodes[1])
    for _ in range(3):
        assert lease.renew(), "two of three nodes are a majority"
    failing = calls.named("singleton_node_failing")
    assert len(failing) == 1, "once per change, not once per renewal"
    assert failing[0][2]["node"] == f"redis://127.0.0.1:{nodes[1].port}/0" and failing[0][2]["error"]
    nodes[1].start()
    assert lease.renew()
    recovered = calls.named("singleton_node_recovered")
    assert [c[2]["node"] for c in recovered] == [failing[0][2]["node"]]
    lease.release()


def test_busy_runs_and_deduplicated_slots_are_signalled(redis_node, received) -> None:
    app = Celery("signals", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=redis_node.url, singleton_task_ttl=2)
    calls = Received(run_skipped_busy, slot_deduplicated)
    received.append(calls)

    @singleton_task(app=app, name="signals.job", shared=False)
    def job(self):
        return "ran"

    blocker = Lease("task:signals.job", redis_node.url, ttl=5)
    try:
        assert blocker.acquire(blocking=False)
        assert job.apply().state == "IGNORED"
        blocker.release()
        assert job.apply(headers={"singleton_slot": "beat/job@1000"}).get() == "ran"
        assert job.apply(headers={"singleton_slot": "beat/job@1000"}).state == "IGNORED"
    finally:
        close_backends()
    [(_, sender, busy)] = calls.named("singleton_run_skipped_busy")
    assert sender == "task:signals.job" and busy == {"name": "task:signals.job", "task": "signals.job", "policy": "skip"}
    [(_, _, dedup)] = calls.named("singleton_slot_deduplicated")
    assert dedup["slot"] == "beat/job@1000" and dedup["outcome"] == "already ran"
