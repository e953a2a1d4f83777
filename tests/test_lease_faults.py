"""The lease under faults: real redis-server processes killed, wiped, restarted and paused,
and lease holders in separate processes that race, pause and come back.

Every fault is checked to have really happened (the process is gone or stopped, the data is
gone or kept), so a passing test cannot be a test whose fault silently did nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from fault_helpers import Children, kill_node
from procs import proc_state, wait_for
from singleton_tasks import Lease
from singleton_tasks.timing import clock_drift
from singleton_tasks.testing import RedisNode, RedisNodes


@pytest.fixture
def children() -> Iterator[Children]:
    group = Children()
    yield group
    group.close()


def read_key(node: RedisNode, key: str) -> Any:
    client = node.client(socket_timeout=5, socket_connect_timeout=5)
    try:
        return client.get(key)
    finally:
        client.close()


def dbsize(node: RedisNode) -> int:
    client = node.client(socket_timeout=5, socket_connect_timeout=5)
    try:
        return int(client.dbsize())
    finally:
        client.close()


# -- 1. tokens keep rising while a minority of nodes fails -------------------------------


class MinorityFaults:
    """A seeded schedule of faults, never on more than a minority of the nodes at once.

    Kinds: ``kill`` (down for a few grants, then back with its data or wiped), ``pause``
    (SIGSTOP for a few grants, then SIGCONT), ``wipe`` (restart empty), ``restart``
    (restart keeping its append-only file). Each injection checks that it took effect.
    """

    KINDS = ("kill", "pause", "wipe", "restart")

    def __init__(self, nodes: RedisNodes, rng: random.Random, fence_key: str, rate: float) -> None:
        self.nodes = nodes
        self.rng = rng
        self.fence_key = fence_key
        self.rate = rate
        self.minority = len(nodes) // 2
        self.active: dict[int, list[Any]] = {}  # node index -> [kind, grants left]
        self.fired: Counter[str] = Counter()
        self.evidence: Counter[str] = Counter()

    @property
    def down(self) -> list[int]:
        return [i for i, entry in self.active.items() if entry[0] == "kill"]

    @property
    def paused(self) -> list[int]:
        return [i for i, entry in self.active.items() if entry[0] == "pause"]

    def tick(self) -> None:
        for i, entry in list(self.active.items()):
            if entry[1] > 0:
                entry[1] -= 1
            else:
                self._heal(i, entry[0])
        if len(self.active) < self.minority and self.rng.random() < self.rate:
            i = self.rng.choice([j for j in range(len(self.nodes)) if j not in self.active])
            self._inject(i, self.rng.choice(self.KINDS))

    def heal_all(self) -> None:
        for i, entry in list(self.active.items()):
            self._heal(i, entry[0])

    def _inject(self, i: int, kind: str) -> None:
        node = self.nodes[i]
        self.fired[kind] += 1
        if kind == "kill":
            fence = read_key(node, self.fence_key)
            kill_node(node)
            self.active[i] = ["kill", self.rng.randint(2, 8), fence]
        elif kind == "pause":
            assert node.process is not None
            pid = node.process.pid
            node.pause()
            wait_for(lambda: proc_state(pid) == "T", 5, f"node {i} (pid {pid}) to be stopped")
            self.active[i] = ["pause", self.rng.randint(1, 4), None]
        elif kind == "wipe":
            node.restart(wipe=True)
            assert dbsize(node) == 0, "a wiped node comes back empty"
            self.evidence["came back empty"] += 1
        else:  # restart, keeping the append-only file
            fence = read_key(node, self.fence_key)
            node.restart(wipe=False)
            self._check_kept(node, fence)

    def _heal(self, i: int, kind: str) -> None:
        node = self.nodes[i]
        entry = self.active.pop(i)
        if kind == "pause":
            assert node.process is not None
            pid = node.process.pid
            assert proc_state(pid) == "T", f"node {i} was still stopped until now"
            node.resume()
            wait_for(lambda: proc_state(pid) != "T", 5, f"node {i} to run again")
        elif self.rng.random() < 0.5:
            node.restart(wipe=True)
            assert dbsize(node) == 0
            self.evidence["came back empty"] += 1
        else:
            node.start()
            self._check_kept(node, entry[2])

    def _check_kept(self, node: RedisNode, fence: bytes | None) -> None:
        if fence is None:
            return  # nothing to keep: the node had just been wiped and not yet repaired
        assert read_key(node, self.fence_key) == fence, "a persistent node keeps its fence across a restart"
        self.evidence["came back with its data"] += 1


@pytest.mark.parametrize("count", [3, 5])
def test_tokens_strictly_rise_while_a_minority_of_nodes_fails(redis_nodes_factory, count) -> None:
    grants = 300
    nodes = redis_nodes_factory(count, persistent=True)
    rng = random.Random(7919 * count)
    # op_timeout 0.25 s, not the default 0.1: every write waits for an fsync (appendfsync
    # always), and a slow disk must not look like a failed node.
    leases = [Lease("faulty", nodes.urls, ttl=1.0, retry_interval=0.05, op_timeout=0.25) for _ in range(3)]
    faults = MinorityFaults(nodes, rng, leases[0].fence_key, rate=0.2)
    tokens: list[int] = []
    grants_during: Counter[str] = Counter()
    abandoned = 0
    try:
        for step in range(grants):
            faults.tick()
            lease = leases[step % len(leases)]
            down, paused = faults.down, faults.paused
            assert lease.acquire(timeout=5), (
                f"grant {step}: no majority with only {sorted(faults.active)} of {count} nodes faulty")
            token = lease.token
            assert token is not None
            assert not tokens or token > tokens[-1], (
                f"grant {step}: token {token} after {tokens[-1]} (faults {dict(faults.fired)})")
            tokens.append(token)
            grants_during["node down"] += bool(down)
            grants_during["node paused"] += bool(paused)
            if rng.random() < 0.015:
                abandoned += 1  # let it expire: the next grant must wait for the keys to go
            else:
                lease.release()
    finally:
        faults.heal_all()
        for lease in leases:
            lease.close()

    assert len(tokens) == grants
    assert all(b > a for a, b in zip(tokens, tokens[1:])), "every token is larger than all earlier ones"
    assert set(faults.fired) == set(MinorityFaults.KINDS) and min(faults.fired.values()) > 0, faults.fired
    assert grants_during["node down"] > 0 and grants_during["node paused"] > 0, grants_during
    assert faults.evidence["came back empty"] > 0 and faults.evidence["came back with its data"] > 0, faults.evidence
    assert abandoned > 0


# -- 2. contenders in separate processes never hold at the same time ---------------------


def test_contending_processes_never_hold_at_once_and_tokens_follow_the_windows(
    redis_nodes_factory, children, tmp_path: Path
) -> None:
    ttl = 1.0
    nodes = redis_nodes_factory(3)
    out = tmp_path / "windows.jsonl"
    contenders = [
        children.spawn("contender", name="race", urls=nodes.urls, ttl=ttl, seed=seed, out=str(out),
                       hold=0.15, outlive_every=8)
        for seed in (1, 2, 3)
    ]
    for child in contenders:
        child.expect(event="ready", timeout=30)
    until = time.monotonic() + 6.0
    for child in contenders:
        child.send(f"go {until}")
    done = [child.expect(event="done", timeout=30) for child in contenders]
    for child in contenders:
        assert child.proc.wait(timeout=10) == 0, child.stderr()

    windows = [json.loads(line) for line in out.read_text().splitlines()]
    windows.sort(key=lambda w: w["start"])
    assert len(windows) >= 15, f"only {len(windows)} windows: {done}"
    by_pid = Counter(w["pid"] for w in windows)
    assert len(by_pid) >= 2, f"windows from one process only: {by_pid}"
    assert sum(d["failed"] for d in done) > 0, "the contenders really contended"
    expired = [w for w in windows if w["kind"] == "expired"]
    assert len({w["pid"] for w in expired}) >= 2, "holders outlived their validity (the next one had to wait for expiry)"
    assert not any(w["held_at_end"] for w in expired), "held is False once the validity window is over"
    for w in windows:
        assert w["began"] <= w["start"] < w["end"] <= w["deadline"]
        # The validity is counted from before the grant was known: never ttl - drift past it.
        assert w["earliest"] <= w["start"] + ttl - clock_drift(ttl) + 1e-6, w
    for prev, cur in zip(windows, windows[1:]):
        assert cur["start"] >= prev["end"], f"overlapping windows:\n{prev}\n{cur}"
        assert cur["token"] > prev["token"], f"token went backwards:\n{prev}\n{cur}"
    # Among them: windows that follow one its holder outlived, so the new holder got the lease
    # only when the keys expired in Redis; the old holder's deadline must come before that.
    assert any(prev["kind"] == "expired" for prev in windows[:-1])


# -- 3. a holder stopped past its TTL comes back knowing it lost -------------------------


@pytest.mark.parametrize("order", ["renew-then-release", "release-then-renew"])
def test_a_sigstopped_holder_resumes_without_the_lease_and_cannot_hurt_the_new_holder(
    redis_nodes_factory, children, order
) -> None:
    ttl = 1.0
    nodes = redis_nodes_factory(3)
    holder = children.spawn("holder", name="paused-holder", urls=nodes.urls, ttl=ttl, op_timeout=0.3)
    holder.expect(event="ready", timeout=30)
    got = holder.request("acquire")
    assert got["ok"] and got["token"] is not None and got["valid_for"] > 0.5, got
    old_token = got["token"]

    stopped_at = time.monotonic()
    os.kill(holder.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(holder.pid) == "T", 5, "the holder to be stopped")

    # A longer TTL of its own: what follows the takeover must not outlast the successor's grant.
    successor = Lease("paused-holder", nodes.urls, ttl=5.0, retry_interval=0.05)
    try:
        assert successor.acquire(timeout=5), "the successor gets the lease once the stopped holder's keys expire"
        acquired_at = time.monotonic()
        assert successor.token is not None and successor.token > old_token
        assert acquired_at > got["deadline_at_least"], "it had to wait until the old grant's validity ended"
        assert proc_state(holder.pid) == "T", "the holder was still stopped when the successor took over"
        # Keep the holder stopped past its TTL, then let it run again.
        wait_for(lambda: time.monotonic() > stopped_at + ttl * 1.3, 5, "the stop to outlast the TTL")
        assert proc_state(holder.pid) == "T"
        os.kill(holder.pid, signal.SIGCONT)
        wait_for(lambda: proc_state(holder.pid) != "T", 5, "the holder to run again")

        state = holder.request("state")
        assert state["held"] is False and state["token"] is None and state["valid_for"] == 0.0, state
        steps = ["renew", "release"] if order == "renew-then-release" else ["release", "renew"]
        for step in steps:
            reply = holder.request(step)
            assert reply["held"] is False, reply
            if step == "renew":
                assert reply["ok"] is False, "a renewal after the deadline fails"
        info = successor.holder()
        assert info is not None and info["pid"] == os.getpid() and info["token"] == successor.token, info
        assert successor.renew() and successor.held, "the old holder's release did not remove the new grant"
    finally:
        successor.close()
    holder.send("quit")
    assert holder.proc.wait(timeout=10) == 0, holder.stderr()
