"""Beat failover with real processes: ``celery beat -S singleton`` replicas, ``worker -B`` nodes.

Everything here is a real ``celery`` subprocess (see ``procs.py``) against a real
redis-server: broker on db 1, beat lease and schedule records on db 0, task log on db 2.
Faults are real signals: SIGKILL, SIGSTOP/SIGCONT, SIGTERM. Every wait has a deadline and
waits for a condition; the fixed observation windows only decide how many runs are
collected, never whether an assertion holds.

Shared-clock note: the task log stores the worker's ``time.time()``; every process runs on
this machine, so those stamps are comparable with each other and with the controller's.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
from celery import Celery

from procs import APPS, Proc, Procs, is_dead, parent_pid, proc_state, wait_for
from singleton_tasks import Lease
from singleton_tasks.keys import slot_task_id
from singleton_tasks.testing import RedisNode

PERIOD = 1.0  # the ``tick`` schedule (SINGLETON_TEST_EVERY)
TTL = 2.0  # the beat lease (SINGLETON_TEST_TTL)
RETRY = min(0.5, TTL / 4)  # conf.py's default singleton_retry_interval: a standby polls every 0.5-1.0 x this
# Largest gap allowed between two consecutive runs, whatever the fault:
#   the previous run may have happened up to one PERIOD before the fault (in general;
#   these tests fault right after a run, so they use little of it), the dead or paused
#   leader's key lives at most TTL after its last renewal, which came before the fault,
#   a standby tries again within RETRY of the key expiring, and it sends the overdue
#   (coalesced) slot on its first tick, so: PERIOD + TTL + RETRY = 3.5 s of design bound.
#   LOAD_MARGIN covers this 2-core machine running ~5 Python processes plus redis: the
#   path from "key expired" to "run recorded" crosses four processes or threads (standby
#   elector -> beat main thread -> broker -> worker -> task log), each of which can sit
#   runnable for a few hundred ms under load, plus the new leader's first broker connection.
#   Measured (10 runs, 3 of them beside two CPU-bound `yes` processes, load ~6): largest
#   gap 2.34 s, so MAX_GAP = 5 s leaves 2.6 s of headroom for a worse moment.
LOAD_MARGIN = 1.5
MAX_GAP = PERIOD + TTL + RETRY + LOAD_MARGIN
START_TIMEOUT = 60.0  # celery start-up on a loaded 2-core machine: imports take seconds
LOST_PATTERN = r"no longer the leader|leadership lost"
SEND_PATTERN = re.compile(r"beat: sending (\S+) \(beatapp\.tick\) token (\d+)")
DONE = re.compile(r"Task beatapp\.tick\[[^\]]+\] (succeeded|ignored|retry|raised|failed)")  # Celery's outcome lines


@dataclass(frozen=True)
class Run:
    """One line of the task log written by ``beatapp.tick``."""

    slot: str
    beat_token: int
    task_token: int
    worker_pid: int
    at: float  # the worker's time.time()

    @property
    def due(self) -> float:
        """The slot's nominal time, from its id ``tick@<ms>``."""
        return int(self.slot.rsplit("@", 1)[1]) / 1000.0

    @classmethod
    def parse(cls, raw: bytes) -> "Run":
        slot, beat_token, task_token, pid, at = raw.decode().split("|")
        return cls(slot, int(beat_token), int(task_token), int(pid), float(at))


class KeyEvents:
    """Redis keyspace notifications for the beat lease key: how each holder's key went away.

    A release is a ``del`` (the RELEASE script), a dead or paused holder's key an ``expired``;
    ``set`` is the next grant. This proves which way a handover happened, independent of timing.
    """

    def __init__(self, node: RedisNode, key: str) -> None:
        node.client().config_set("notify-keyspace-events", "Kg$x")
        self.pubsub = node.client().pubsub()
        self.pubsub.subscribe(f"__keyspace@0__:{key}")
        self.pending: list[str] = []

    def _read(self) -> None:
        while (message := self.pubsub.get_message(timeout=0.0)) is not None:
            if message["type"] == "message":
                self.pending.append(message["data"].decode())

    def clear(self) -> None:
        self._read()
        self.pending.clear()

    def _granted(self) -> bool:
        self._read()
        return "set" in self.pending

    def until_next_grant(self, timeout: float = 5.0) -> list[str]:
        """The events from the last ``clear()`` up to the next ``set`` (a new holder's key)."""
        wait_for(self._granted, timeout, "the next grant's SET on the lease key")
        events = self.pending[: self.pending.index("set") + 1]
        del self.pending[: len(events)]
        return events

    def close(self) -> None:
        self.pubsub.close()


class Cluster:
    """One redis-server and the environment every celery process of a test gets."""

    def __init__(self, node: RedisNode) -> None:
        base = f"redis://127.0.0.1:{node.port}"
        self.node = node
        self.lease_url = f"{base}/0"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "SINGLETON_TEST_BROKER": f"{base}/1",
            "SINGLETON_TEST_NODES": self.lease_url,
            "SINGLETON_TEST_LOG": f"{base}/2",
            "SINGLETON_TEST_TTL": str(TTL),
            "SINGLETON_TEST_EVERY": str(PERIOD),
        }
        self.log = node.client(db=2)
        self.lease_db = node.client(db=0)
        # Only holder() is used: it reads who holds the beat lease (pid, token) from Redis.
        self.beat_lease = Lease("beat:beat", self.lease_url, ttl=TTL)
        self.key_events = KeyEvents(node, self.beat_lease.key)

    def holder(self) -> dict[str, Any] | None:
        return self.beat_lease.holder()

    def campaigners(self) -> int:
        """Electors subscribed to the beat lease's release channel: one per live replica."""
        return int(self.lease_db.pubsub_numsub("singleton:{beat:beat}:released")[0][1])

    def runs(self) -> list[Run]:
        return [Run.parse(raw) for raw in self.log.lrange("ran", 0, -1)]

    def run_count(self) -> int:
        return int(self.log.llen("ran"))

    def wait_next_run(self, timeout: float = 15.0) -> Run:
        """Block until one more run is recorded; return it. Faults are timed right after a
        run, so the leader is idle (its next send is about a PERIOD away)."""
        seen = self.run_count()
        wait_for(lambda: self.run_count() > seen, timeout, "the next tick run")
        return Run.parse(self.log.lindex("ran", -1))

    def wait_runs_with_token(self, token: int, count: int, timeout: float = 20.0) -> None:
        wait_for(lambda: sum(r.beat_token == token for r in self.runs()) >= count, timeout,
                 f"{count} runs sent with beat token {token}")


@pytest.fixture
def cluster(redis_nodes_factory: Callable[..., Any]) -> Iterator[Cluster]:
    cluster = Cluster(redis_nodes_factory(1)[0])
    yield cluster
    cluster.key_events.close()


@pytest.fixture
def procs(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """The test's celery processes; all killed at teardown (before Redis stops), logs shown on failure."""
    group = Procs(tmp_path / "procs", cluster.env)
    failed_before = request.session.testsfailed
    try:
        yield group
    finally:
        group.close()
        if request.session.testsfailed > failed_before:
            # Teardown output of a failed test is not shown by pytest: write to the terminal.
            try:
                ran = b"\n".join(cluster.log.lrange("ran", -40, -1)).decode()
            except redis.RedisError as exc:
                ran = f"(task log unreadable: {exc})"
            text = f"\n{group.report()}\n----- task log (last 40) -----\n{ran}"
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(text)
            else:
                print(text)


def sends(*procs_: Proc, start: dict[Proc, int] | None = None) -> list[tuple[str, int]]:
    """(slot, token) of every ``beat: sending`` line in these logs (from ``start`` offsets)."""
    found = []
    for proc in procs_:
        found += [(m[1], int(m[2])) for m in SEND_PATTERN.finditer(proc.log((start or {}).get(proc, 0)))]
    return found


def gaps(runs: list[Run]) -> list[tuple[float, Run, Run]]:
    return [(b.at - a.at, a, b) for a, b in zip(runs, runs[1:])]


def gap_across(runs: list[Run], wall: float) -> float:
    """The gap between the last run before ``wall`` and the first one after it."""
    before = [r for r in runs if r.at <= wall]
    after = [r for r in runs if r.at > wall]
    assert before and after, f"no runs on both sides of {wall}"
    return after[0].at - before[-1].at


def check_slots(runs: list[Run]) -> None:
    """At most one run per slot, slots a PERIOD apart, leaders' tokens never going back."""
    assert runs, "nothing ran"
    assert all(r.slot.startswith("beat/tick@") for r in runs), [r.slot for r in runs]
    duplicates = {slot: n for slot, n in Counter(r.slot for r in runs).items() if n > 1}
    assert not duplicates, f"slots that ran more than once: {duplicates}"
    by_due = sorted(runs, key=lambda r: r.due)
    # A slot's due time is the previous slot's send time + PERIOD, so two slots never share
    # a PERIOD (1 ms slack: slot ids are truncated to whole milliseconds).
    close = [(a.slot, b.slot) for a, b in zip(by_due, by_due[1:]) if b.due - a.due < PERIOD - 0.002]
    assert not close, f"two runs within one {PERIOD}s slot: {close}"
    # Tokens never go back: no run was sent by a leader after a newer leader had sent.
    tokens = [r.beat_token for r in by_due]
    assert tokens == sorted(tokens), f"beat tokens went back: {tokens}"


@dataclass(frozen=True)
class Leader:
    proc: Proc  # the celery process started by the test (for worker -B: the worker)
    pid: int  # the pid in the lease value (for worker -B: the embedded beat child)
    token: int
    ttl: float  # what the lease key had left when read


@dataclass(frozen=True)
class Fault:
    before: Leader
    after: Leader
    takeover: float  # seconds from the signal until Redis named the new holder
    at: float  # time.monotonic() of the signal
    wall: float  # time.time() of the signal, to find the run gap across it
    key_events: list[str]  # what happened to the lease key from the signal to the new grant
    read_at: float  # time.monotonic() just before ``before`` (and its key's ttl) was read

    @property
    def released(self) -> bool:
        """The old holder deleted its key (a release), rather than letting it expire."""
        return "del" in self.key_events and "expired" not in self.key_events

    @property
    def expired(self) -> bool:
        return "expired" in self.key_events and "del" not in self.key_events


def inject(cluster: Cluster, leader: Callable[[], Leader | None], victim: Proc, act: Callable[[], None],
           timeout: float, what: str) -> Fault:
    """Fault the leader right after a run (so it is idle, about a PERIOD from its next send)
    and wait for another process to hold the lease."""
    cluster.wait_next_run()
    read_at = time.monotonic()
    before = leader()
    assert before is not None and before.proc is victim, f"{victim.name} should lead, not {before}"
    cluster.key_events.clear()
    started, wall = time.monotonic(), time.time()
    act()

    def new_leader() -> Leader | None:
        now = leader()
        return now if now is not None and now.proc is not victim else None

    after = wait_for(new_leader, timeout, f"a new leader after {what}", 0.01)
    takeover = time.monotonic() - started

    def confirmed() -> Leader | None:
        # holder() reads the owner and the fence key together; between the two rounds of a
        # grant the new owner is visible while the fence still has the previous token.
        now = leader()
        return now if now is not None and now.pid == after.pid and now.token > before.token else None

    after = wait_for(confirmed, 5, f"{after.proc.name}'s grant to record a fencing token above {before.token}")
    return Fault(before, after, takeover, started, wall, cluster.key_events.until_next_grant(), read_at)


def check_waited_for_expiry(fault: Fault) -> None:
    """The faulted leader's key expired (nobody released it), and nobody got the lease
    while it was still alive in Redis."""
    assert fault.expired, f"the old key should have expired; lease key events: {fault.key_events}"
    left_at_signal = fault.before.ttl - (fault.at - fault.read_at)  # the ttl was read a little earlier
    assert fault.takeover >= left_at_signal - 0.1, (
        f"taken over after {fault.takeover:.3f}s, but the old key had {fault.before.ttl:.3f}s left")
    # The design's crash bound: the key's remaining life + one standby poll + a round trip.
    assert fault.takeover <= fault.before.ttl + RETRY + LOAD_MARGIN, (
        f"taken over after {fault.takeover:.3f}s; the old key had only {fault.before.ttl:.3f}s left")


# -- 1. three `celery beat` replicas and one worker -----------------------------------------


def test_beat_replicas_survive_kill_stop_and_term(cluster: Cluster, procs: Procs) -> None:
    beats = [procs.beat(f"beat{i}") for i in range(3)]
    worker = procs.worker("worker")
    by_pid = {b.pid: b for b in beats}

    def leader() -> Leader | None:
        holder = cluster.holder()
        if holder is None or holder["pid"] not in by_pid:
            return None
        return Leader(by_pid[holder["pid"]], holder["pid"], int(holder["token"]), holder["ttl"])

    wait_for(lambda: cluster.campaigners() == 3, START_TIMEOUT, "3 beat replicas campaigning")
    first = wait_for(leader, START_TIMEOUT, "a beat replica to hold the lease")
    cluster.wait_runs_with_token(first.token, 3, START_TIMEOUT)

    # Fault 1: SIGKILL the leader. Nothing releases: the standby waits for the key to expire.
    a = first.proc
    crash = inject(cluster, leader, a, lambda: a.send(signal.SIGKILL), TTL + 10, f"SIGKILL to {a.name}")
    assert a.wait(10) == -signal.SIGKILL and proc_state(a.pid) is None, "the killed leader is gone"
    check_waited_for_expiry(crash)
    b = crash.after.proc
    cluster.wait_runs_with_token(crash.after.token, 2)

    # Fault 2: SIGSTOP the next leader for longer than the TTL, until a third replica leads
    # and has sent; then SIGCONT it. It must notice on its own that it lost the lease.
    stop = inject(cluster, leader, b, lambda: b.send(signal.SIGSTOP), TTL + 10, f"SIGSTOP to {b.name}")
    assert b.state() == "T", f"{b.name} should be stopped, /proc says {b.state()}"
    check_waited_for_expiry(stop)
    c = stop.after.proc
    cluster.wait_runs_with_token(stop.after.token, 1)
    wait_for(lambda: time.monotonic() - stop.at > TTL + 1.0, TTL + 2, "the pause to outlast the TTL")
    assert b.state() == "T", "still stopped just before SIGCONT"
    resumed_from = b.log_size()  # it wrote nothing while stopped: later lines come after SIGCONT
    b.send(signal.SIGCONT)
    wait_for(lambda: b.state() not in ("T", None), 5, f"{b.name} to resume")
    wait_for(lambda: b.log_has(LOST_PATTERN, resumed_from), 10, f"{b.name} to notice it lost the lease")
    cluster.wait_runs_with_token(stop.after.token, 3)

    # Fault 3: SIGTERM the leader: it releases on the way out and the resumed replica, the
    # only one left, takes over at once.
    wait_for(lambda: cluster.campaigners() == 2, 10, "the two live replicas campaigning")
    term = inject(cluster, leader, c, lambda: c.send(signal.SIGTERM), 10, f"SIGTERM to {c.name}")
    assert term.after.proc is b, "the resumed ex-leader is the only replica left to take over"
    assert c.wait(20) == 0, "SIGTERM ends beat cleanly"
    assert term.released, f"the SIGTERMed leader should have released; lease key events: {term.key_events}"
    cluster.wait_runs_with_token(term.after.token, 3)

    # Collect: wait until every slot any replica logged as sent has run, then read the log.
    sent = sends(*beats)
    wait_for(lambda: {s for s, _ in sent} <= {r.slot for r in cluster.runs()}, 10, "every sent slot to run")
    runs = cluster.runs()

    # Every slot ran exactly once, in order, and the tokens that sent them never went back.
    check_slots(runs)
    assert {r.slot for r in runs} == {s for s, _ in sends(*beats)}, "a slot was sent but never ran (or vice versa)"
    tokens = [r.beat_token for r in runs]  # one solo worker: the log is in execution order
    assert tokens == sorted(tokens), f"beat tokens went back in execution order: {tokens}"
    terms = [first.token, crash.after.token, stop.after.token, term.after.token]
    assert [t for t in dict.fromkeys(tokens) if t in terms] == terms, "each leader in turn sent runs"

    # The resumed ex-leader sent nothing under its old token after SIGCONT: every send it
    # logged since then is from its new term, after the SIGTERM made it leader again.
    late = sends(b, start={b: resumed_from})
    assert all(token >= term.after.token for _, token in late), f"stale sends after SIGCONT: {late}"
    assert not any(r.beat_token == crash.after.token and r.at > stop.wall for r in runs)
    after_sigcont = b.log(resumed_from)
    first_send = after_sigcont.find("beat: sending")
    assert first_send < 0 or re.search(LOST_PATTERN, after_sigcont[:first_send]), "it noticed the loss before sending"

    # Survivors: every replica not deliberately ended is alive (the SIGSTOPped one running
    # again), and so is the worker.
    assert b.alive and b.state() not in ("T", "Z", None)
    assert worker.alive

    # Timing: bounded gaps; the graceful handover is much faster than the crash takeover.
    biggest = max(gaps(runs), key=lambda g: g[0])
    assert biggest[0] <= MAX_GAP, f"largest gap {biggest[0]:.3f}s > {MAX_GAP}s between {biggest[1:]}"
    assert term.takeover < 1.0 and term.takeover < crash.takeover / 2, (term.takeover, crash.takeover)
    crash_gap, stop_gap, term_gap = (gap_across(runs, f.wall) for f in (crash, stop, term))
    print(f"\nbeat replicas: takeover after SIGKILL {crash.takeover:.3f}s (key had {crash.before.ttl:.3f}s left), "
          f"after SIGSTOP {stop.takeover:.3f}s (key had {stop.before.ttl:.3f}s), after SIGTERM "
          f"{term.takeover:.3f}s; run gaps across them {crash_gap:.3f}s / {stop_gap:.3f}s / {term_gap:.3f}s; "
          f"largest gap {biggest[0]:.3f}s (bound {MAX_GAP}s); {len(runs)} runs")


# -- 2. `celery worker -B --scheduler singleton` on several nodes ---------------------------


def start_embedded_beats(cluster: Cluster, procs: Procs, count: int) -> tuple[list[Proc], Callable[[], Leader | None]]:
    """``count`` workers with embedded beats, all campaigning; and a finder of the leading one."""
    workers = [procs.worker(f"node{i}", "-B", "--scheduler", "singleton",
                            "-s", str(procs.dir / f"node{i}.schedule")) for i in range(count)]
    by_pid = {w.pid: w for w in workers}

    def leader() -> Leader | None:
        """The node whose embedded beat holds the lease (found through the beat's parent)."""
        holder = cluster.holder()
        if holder is None:
            return None
        worker = by_pid.get(parent_pid(holder["pid"]) or -1)
        return Leader(worker, holder["pid"], int(holder["token"]), holder["ttl"]) if worker else None

    wait_for(lambda: cluster.campaigners() == count, START_TIMEOUT, f"{count} embedded beats campaigning")
    return workers, leader



def test_worker_embedded_beats_fail_over(cluster: Cluster, procs: Procs) -> None:
    # Celery 5.7's ``worker -B`` runs beat in a forked child process ("Beat") for every pool,
    # solo and threads included: Beat.create() calls EmbeddedService() without thread=True,
    # and only thread=True gives a thread. So the lease holder's pid is that child, and its
    # parent is the worker. A node crash is SIGKILL to the worker's whole process group
    # (each worker runs in its own session: the group is the worker and its beat child).
    # Killing only the worker's main pid is a different fault: see test_orphaned_embedded_beat.
    # Three nodes: the SIGTERM handover needs a standby, and the SIGKILL then another one.
    workers, leader = start_embedded_beats(cluster, procs, 3)
    first = wait_for(leader, START_TIMEOUT, "an embedded beat to hold the lease")
    assert first.pid != first.proc.pid, "the embedded beat is a child process, not the worker itself"
    cluster.wait_runs_with_token(first.token, 3, START_TIMEOUT)

    # Graceful: SIGTERM the leading worker. Its warm shutdown stops the Beat child with
    # SIGTERM, and the child's scheduler close() releases the lease.
    a = first.proc
    term = inject(cluster, leader, a, lambda: a.send(signal.SIGTERM), TTL + 10, f"SIGTERM to {a.name}")
    assert a.wait(30) == 0, "the SIGTERMed worker shuts down cleanly"
    assert term.released, f"the SIGTERMed node's beat should have released; lease key events: {term.key_events}"
    cluster.wait_runs_with_token(term.after.token, 2)

    # Crash: SIGKILL the new leader's whole process group (worker + embedded beat).
    b = term.after.proc
    crash = inject(cluster, leader, b, lambda: b.send_group(signal.SIGKILL), TTL + 10, f"SIGKILL to {b.name}'s group")
    assert b.wait(10) == -signal.SIGKILL
    wait_for(lambda: is_dead(crash.before.pid), 5, "the killed node's beat process to be gone")
    check_waited_for_expiry(crash)
    c = crash.after.proc
    cluster.wait_runs_with_token(crash.after.token, 3)

    # Runs are spread over the nodes. A slot that the killed node's beat sent in its last
    # instant and the killed worker fetched would be lost with it (at most once, not at
    # least once). Faults come right after a run, a PERIOD before the next send, so this
    # should not happen; if it does, it must be that case, and it widens a gap by a PERIOD.
    sent = {s for s, _ in sends(*workers)}
    killed_sent = {s for s, t in sends(b) if t == term.after.token}
    wait_for(lambda: sent - killed_sent <= {r.slot for r in cluster.runs()}, 10,
             "every slot sent by a node that was not killed to run")
    runs = sorted(cluster.runs(), key=lambda r: r.at)
    check_slots(runs)
    lost = sent - {r.slot for r in runs}
    assert len(lost) <= 1 and lost <= killed_sent, f"lost slots: {lost}"
    bound = MAX_GAP + PERIOD * len(lost)
    biggest = max(gaps(runs), key=lambda g: g[0])
    assert biggest[0] <= bound, f"largest gap {biggest[0]:.3f}s > {bound}s between {biggest[1:]}"
    assert c.alive, "the last node survives"
    assert c.log_has(r"leading with token %d" % crash.after.token)
    term_gap, crash_gap = gap_across(runs, term.wall), gap_across(runs, crash.wall)
    print(f"\nworker -B: takeover after SIGTERM {term.takeover:.3f}s, after SIGKILL {crash.takeover:.3f}s "
          f"(key had {crash.before.ttl:.3f}s left); run gaps across them {term_gap:.3f}s / {crash_gap:.3f}s; "
          f"largest gap {biggest[0]:.3f}s (bound {bound}s); {len(runs)} runs, lost {sorted(lost)}")


def test_orphaned_embedded_beat_hands_over_and_exits(cluster: Cluster, procs: Procs) -> None:
    # SIGKILL to the worker's main pid alone: Celery neither stops nor joins the forked beat
    # child, which would lead on as an orphan, sending tasks nobody on its node consumes.
    # The scheduler notices its parent changed, releases the lease and exits.
    workers, leader = start_embedded_beats(cluster, procs, 2)
    first = wait_for(leader, START_TIMEOUT, "an embedded beat to hold the lease")
    cluster.wait_runs_with_token(first.token, 2, START_TIMEOUT)
    a = first.proc
    fault = inject(cluster, leader, a, lambda: a.send(signal.SIGKILL), TTL + 10, f"SIGKILL to {a.name} alone")
    assert a.wait(10) == -signal.SIGKILL
    wait_for(lambda: is_dead(fault.before.pid), 5, "the orphaned beat child to exit")
    assert fault.released, f"the orphan should have released, not let the key expire: {fault.key_events}"
    assert fault.takeover < TTL, f"takeover took {fault.takeover:.3f}s: the orphan did not hand over"
    cluster.wait_runs_with_token(fault.after.token, 2)
    check_slots(sorted(cluster.runs(), key=lambda r: r.at))
    print(f"\norphaned worker -B beat: handed over {fault.takeover:.3f}s after its worker was SIGKILLed")


# -- 3. a slot delivered twice runs once ----------------------------------------------------


def test_slot_delivered_twice_runs_once(cluster: Cluster, procs: Procs) -> None:
    # Two pool threads, so the deliveries can run at the same time, not only one after another.
    worker = procs.worker("worker", "-c", "2", pool="threads")
    client = Celery("sender", broker=cluster.env["SINGLETON_TEST_BROKER"])
    try:
        slot = "beat/x@1"
        # The same message twice (a redelivery), then the same slot from a newer leader
        # with its own task id and token (a dead leader's reserved slot sent again).
        for task_id, token in ((slot_task_id("singleton:", slot), 1), (slot_task_id("singleton:", slot), 1), ("resent-" + slot, 2)):
            client.send_task("beatapp.tick", task_id=task_id,
                             headers={"singleton_slot": slot, "singleton_token": token})
        # Wait until Celery reports an outcome for all three; which of the two skip paths a
        # concurrent duplicate takes ("slot already ran" or "lease busy") is not the point.
        wait_for(lambda: len(DONE.findall(worker.log())) >= 3, START_TIMEOUT, "all three deliveries to finish")
        outcomes = Counter(DONE.findall(worker.log()))
        runs = cluster.runs()
        assert [r.slot for r in runs] == [slot], runs
        assert outcomes == {"succeeded": 1, "ignored": 2}, outcomes
        assert worker.alive
    finally:
        client.close()
