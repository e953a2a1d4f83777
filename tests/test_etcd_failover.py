"""Real ``celery beat`` replicas leading through an etcd cluster (3 members), a real worker.

The broker and the task log stay on a redis-server; only the lease store changes, by
``singleton_backend_url`` alone. Faults: the beat leader SIGKILLed (a standby that watched its
renewals deletes its key once its TTL has passed since the last one), SIGSTOPped past its TTL
and resumed (it steps down and stays up), SIGTERMed (it releases, and the watch wakes a standby
at once); an etcd member SIGKILLed while beat runs (the leader carries on through another
endpoint). Every slot runs once, tokens rise.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from procs import APPS, Procs, parent_pid, proc_state, wait_for
from singleton_tasks import open_backend
from singleton_tasks.backend import LeaseProtocol
from test_beat_failover import LOST_PATTERN, PERIOD, START_TIMEOUT, TTL, Run, check_slots, sends

#: etcd checks lease expiry every 500 ms: a crashed holder is replaced within its TTL + that
#: + a standby's retry (or the watch) + the load margin of the Redis failover tests, whichever of
#: a standby's guarded delete and etcd's expiry comes first.
EXPIRY_CHECK = 0.5
MARGIN = 1.5


class EtcdBeats:
    """The environment of every celery process of a test, the lease on etcd."""

    def __init__(self, redis_node: Any, etcd_url: str) -> None:
        base = f"redis://127.0.0.1:{redis_node.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "SINGLETON_TEST_BROKER": f"{base}/1",
            "SINGLETON_TEST_NODES": etcd_url,
            "SINGLETON_TEST_LOG": f"{base}/2",
            "SINGLETON_TEST_TTL": str(TTL),
            "SINGLETON_TEST_EVERY": str(PERIOD),
        }
        self.log = redis_node.client(db=2)
        self.backend = open_backend([etcd_url], timeout=0.5)
        self.beat_lease: LeaseProtocol = self.backend.lease("beat:beat", TTL)

    def holder(self) -> dict[str, Any] | None:
        try:
            return self.beat_lease.holder()
        except Exception:  # a member just killed: ask again
            return None

    def runs(self) -> list[Run]:
        return [Run.parse(raw) for raw in self.log.lrange("ran", 0, -1)]

    def wait_runs_with_token(self, token: int, count: int, timeout: float = 20.0) -> None:
        wait_for(lambda: sum(r.beat_token == token for r in self.runs()) >= count, timeout,
                 f"{count} runs sent with beat token {token}")


@pytest.fixture
def etcd_beats(redis_node, etcd_cluster_factory) -> Iterator[EtcdBeats]:
    cluster = etcd_cluster_factory(3)
    beats = EtcdBeats(redis_node, cluster.etcd_url)
    beats.cluster = cluster  # type: ignore[attr-defined]
    yield beats
    beats.backend.close()


@pytest.fixture
def procs(etcd_beats: EtcdBeats, tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tmp_path / "procs", etcd_beats.env)
    try:
        yield group
    finally:
        group.close()


def test_beat_on_etcd_survives_kill_stop_term_and_a_member_loss(etcd_beats: EtcdBeats, procs: Procs) -> None:
    beats = [procs.beat(f"beat{i}") for i in range(3)]
    procs.worker("worker")
    by_pid = {b.pid: b for b in beats}

    def leader() -> tuple[Any, int, float] | None:
        holder = etcd_beats.holder()
        if holder is None or holder["pid"] not in by_pid:
            return None
        return by_pid[holder["pid"]], int(holder["token"]), float(holder["ttl"])

    proc, token, _ = wait_for(leader, START_TIMEOUT, "a beat replica to hold the lease on etcd")
    etcd_beats.wait_runs_with_token(token, 3, START_TIMEOUT)

    def new_leader(old: Any, old_token: int) -> Callable[[], tuple[Any, int, float] | None]:
        def found() -> tuple[Any, int, float] | None:
            now = leader()
            return now if now is not None and now[0] is not old and now[1] > old_token else None
        return found

    # 1. SIGKILL: nobody releases; a standby deletes the dead holder's key a TTL after it last
    # saw it renewed, or etcd expires its lease when its lessor checks first (about 1 in 20:
    # test_etcd_takeover.py proves the delete on its own), and a standby takes over.
    killed_at = time.monotonic()
    proc.send(signal.SIGKILL)
    nxt, next_token, _ = wait_for(new_leader(proc, token), TTL + EXPIRY_CHECK + MARGIN + 5, "a leader after SIGKILL")
    crash_takeover = time.monotonic() - killed_at
    assert proc.wait(10) == -signal.SIGKILL and proc_state(proc.pid) is None
    assert crash_takeover <= TTL + EXPIRY_CHECK + MARGIN, f"taken over after {crash_takeover:.2f}s"
    etcd_beats.wait_runs_with_token(next_token, 2)

    # 2. SIGSTOP past the TTL: another replica leads; the resumed one steps down by itself.
    stopped = nxt
    stopped.send(signal.SIGSTOP)
    third, third_token, _ = wait_for(new_leader(stopped, next_token), TTL + EXPIRY_CHECK + MARGIN + 5,
                                     "a leader after SIGSTOP")
    etcd_beats.wait_runs_with_token(third_token, 1)
    resumed_from = stopped.log_size()
    stopped.send(signal.SIGCONT)
    wait_for(lambda: stopped.log_has(LOST_PATTERN, resumed_from), 10, "the resumed replica to step down")
    assert stopped.alive, "it stepped down and stays up"

    # 3. One etcd member SIGKILLed: the leader keeps its lease through the other members.
    cluster = etcd_beats.cluster  # type: ignore[attr-defined]
    member = cluster.wait_for_leader(10)
    member.kill()
    etcd_beats.wait_runs_with_token(third_token, 4, 20)
    now = wait_for(leader, 10, "the holder, read through the remaining members")
    assert now[0] is third and now[1] == third_token, "no election: the same leader and token"

    # 4. SIGTERM: the leader releases; the watch wakes the resumed replica at once.
    termed_at = time.monotonic()
    third.send(signal.SIGTERM)
    last, last_token, _ = wait_for(new_leader(third, third_token), 10, "a leader after SIGTERM")
    handover = time.monotonic() - termed_at
    assert last is stopped and third.wait(20) == 0
    assert handover < 1.5, f"a graceful handover took {handover:.2f}s (the TTL is {TTL}s)"
    etcd_beats.wait_runs_with_token(last_token, 2)

    sent = sends(*beats)
    wait_for(lambda: {s for s, _ in sent} <= {r.slot for r in etcd_beats.runs()}, 10, "every sent slot to run")
    runs = etcd_beats.runs()
    check_slots(runs)
    tokens = [r.beat_token for r in runs]
    assert tokens == sorted(tokens), f"beat tokens went back in execution order: {tokens}"
    assert [t for t in dict.fromkeys(tokens)] == [token, next_token, third_token, last_token]
    print(f"\netcd failover: SIGKILL takeover {crash_takeover:.2f}s, SIGTERM handover {handover:.3f}s")


def test_worker_embedded_beats_on_etcd_hand_over_and_survive_a_crash(etcd_beats: EtcdBeats, procs: Procs) -> None:
    """``celery worker -B --scheduler singleton`` on three nodes, the lease on etcd: the leading
    node SIGTERMed hands over at once, the next one SIGKILLed (whole process group) is replaced
    once etcd expires its lease; every slot runs once."""
    workers = [procs.worker(f"node{i}", "-B", "--scheduler", "singleton", "-s", str(procs.dir / f"node{i}.schedule"))
               for i in range(3)]
    by_pid = {w.pid: w for w in workers}

    def leader() -> tuple[Any, int] | None:
        holder = etcd_beats.holder()
        if holder is None:
            return None
        node = by_pid.get(parent_pid(holder["pid"]) or -1)  # the embedded beat is the worker's child
        return (node, int(holder["token"])) if node is not None else None

    first, token = wait_for(leader, START_TIMEOUT, "an embedded beat to hold the lease on etcd")
    etcd_beats.wait_runs_with_token(token, 3, START_TIMEOUT)

    def another(old: Any, old_token: int) -> Callable[[], tuple[Any, int] | None]:
        def found() -> tuple[Any, int] | None:
            now = leader()
            return now if now is not None and now[0] is not old and now[1] > old_token else None
        return found

    termed_at = time.monotonic()
    first.send(signal.SIGTERM)
    second, second_token = wait_for(another(first, token), 15, "a leader after SIGTERM")
    handover = time.monotonic() - termed_at
    assert first.wait(30) == 0, "warm shutdown"
    etcd_beats.wait_runs_with_token(second_token, 2)

    killed_at = time.monotonic()
    second.send_group(signal.SIGKILL)
    third, third_token = wait_for(another(second, second_token), TTL + EXPIRY_CHECK + MARGIN + 5,
                                  "a leader after SIGKILL of a node")
    crash = time.monotonic() - killed_at
    assert crash <= TTL + EXPIRY_CHECK + MARGIN, f"taken over after {crash:.2f}s"
    etcd_beats.wait_runs_with_token(third_token, 2)
    runs = etcd_beats.runs()
    check_slots(runs)
    print(f"\netcd worker -B: SIGTERM handover {handover:.3f}s, SIGKILL takeover {crash:.2f}s")
