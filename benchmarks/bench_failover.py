"""Failover of a highly available beat: singleton-tasks, RedBeat and single-beat side by side.

Each tool runs 2 real ``celery beat`` replicas of one app (``benchmarks/failoverapp.py``: a task
every second) and one solo ``celery worker`` that records every run it executes (its start time,
the ``origin`` header, which names the beat process that sent it, and our ``singleton_slot``
header) in a Redis list. Each tool has its own redis-server: its election store on db 0, reached
by each replica through a loopback relay of its own (``harness.Relay``: it counts the store
commands, so a restarted replica is known to have tried for the lease once), its broker on db 1,
the record of runs on db 2. The subjects:

* singleton-tasks: ``celery beat -S singleton``, default settings (``singleton_lease_ttl`` 5 s);
* RedBeat tuned for a 5 s failover: ``redbeat_lock_timeout = 5``, ``beat_max_loop_interval = 1``;
* single-beat (``single-beat celery -A failoverapp beat``), ``SINGLE_BEAT_LOCK_TIME=5``,
  ``SINGLE_BEAT_HEARTBEAT_INTERVAL=1``; its wrapped beat uses Celery's default scheduler.

Faults, each sent to the current leader's whole process group (single-beat's wrapper and its
``celery beat`` child together, as systemd's default ``KillMode=control-group`` would), 0.5 s
after a run was recorded: SIGKILL; SIGTERM; SIGSTOP, then SIGCONT 10 s later. Trials are
interleaved: trial 1 of every fault for every tool, then trial 2... What is measured per trial:

1. The gap between runs: the longest interval between two consecutive runs (worker start
   times) from the last run before the fault to the end of the trial (the new leader's runs plus
   4 s; for SIGSTOP 6 s after SIGCONT). With a 1-s schedule, 1 s means no extra gap.
2. Duplicates: intervals shorter than half the period (two leaders sending one period), and
   runs sent by the old leader after the new leader's first run (from ``origin``). Missed slots:
   for each interval d, ``round(d / 1 s) - 1``: the periods in which no run started.
3. Takeover: a thread polls the lease key (``GET`` every 10 ms, a direct connection). For SIGKILL
   and SIGSTOP, the key's ``PTTL`` read 50 ms after the signal gives the moment the dead lease
   expires; the takeover is the first poll that shows another owner minus that moment (so it
   includes up to 10 ms of poll). For SIGTERM: signal to another owner (a graceful handover).
   The owner is the key's value (single-beat's value is ``counter:host:child pid``: the counter
   is left out).
4. What the old leader did: for SIGKILL it is dead. Otherwise its process state and log at the
   trial's end: exited (its exit status) or crashed (an exception in its log), stepped down and
   stayed up (alive, not leading, sending nothing), or kept leading.

After each trial the faulted replica is killed if still alive and started again as a standby;
the next trial waits until it has sent its first store command and the tool's runs flow again.
Every process started here (redis-servers, beat replicas, single-beat's children, workers) is
killed by process group at the end, at interpreter exit and by the kernel if this process dies.

RedBeat's takeover at its defaults is computed from its source, not measured (a 25-30 minute
trial): ``lock_timeout = beat_max_loop_interval * 5`` = 1500 s, and its standby retries every
``beat_max_loop_interval`` (300 s).

Run: ``bash scripts/bench.sh failover`` (``--quick``: 1 trial; ``--trials N``, default 3;
``--only ours,redbeat,single-beat``; ``--faults kill,term,stop``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import redis

from harness import (
    LEAD_PATTERNS, OURS, REDBEAT, SINGLEBEAT, BenchmarkError, HaSubject, Relay, RelayLoop, Spawned, all_stopped, begin,
    bench_env, celery_children, choose, finish, group_members, ha_beat, markdown, print_preamble, proc_state,
    redis_version, spawn, stop_group, version, wait_until,
)
from singleton_tasks.testing import RedisNode

PERIOD = 1.0  # the schedule
FAULT_AFTER_RUN = 0.5  # s after a recorded run, the fault
STOP_FOR = 10.0  # s between SIGSTOP and SIGCONT
SETTLE = 4.0  # s of runs after the takeover that a trial still looks at
OBSERVE_AFTER_CONT = 6.0  # s after SIGCONT before the old leader's state is read
TAKEOVER_TIMEOUT = 40.0  # s from the fault to a new owner
READY_TIMEOUT = 120.0  # s for a (re)started replica to try once and the tool's runs to flow
POLL = 0.01  # s between lease key polls
PTTL_AFTER = 0.05  # s after the signal, the PTTL read (a renewal in flight has landed by then)

FAULTS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}
FAULT_LABEL = {"kill": "SIGKILL", "term": "SIGTERM", "stop": f"SIGSTOP {STOP_FOR:g} s, then SIGCONT"}


TOOLS = (
    HaSubject("ours", OURS, "singleton-tasks, defaults (lease TTL 5 s)", {}, frozenset({"EVALSHA", "EVAL"})),
    HaSubject("redbeat", REDBEAT, "RedBeat, lock 5 s, `beat_max_loop_interval = 1`",
              {"FAILOVER_REDBEAT_LOCK_TIMEOUT": "5", "FAILOVER_MAX_LOOP": "1"}, frozenset({"SET"})),
    HaSubject("single-beat", SINGLEBEAT, "single-beat, lock 5 s, heartbeat 1 s",
              {"SINGLE_BEAT_LOCK_TIME": "5", "SINGLE_BEAT_HEARTBEAT_INTERVAL": "1", "SINGLE_BEAT_LOG_LEVEL": "info"},
              frozenset({"SET"})),
)

STEP_DOWN = re.compile(r"beat: no longer the leader|beat: not dispatching|released the beat lease")
EXCEPTION = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*$|Traceback \(most recent call last\)", re.M)
SINGLE_BEAT_QUIT = re.compile(r"fence token did not match[^\n]*|unable to reacquire lock[^\n]*")


@dataclass
class Replica(Spawned):
    tool: HaSubject
    index: int
    directory: Path
    relay: Relay
    store_port: int
    incarnation: int = 0
    popen: subprocess.Popen[bytes] | None = None
    attempts_at_start: int = 0
    children_seen: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"{self.tool.key}-{self.index}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"replica.{self.incarnation}.log"

    def attempts(self) -> int:
        counts = self.relay.snapshot()
        return sum(counts[n] for n in self.tool.attempt)

    def beat_children(self) -> list[int]:
        if not self.alive():
            return []
        found = celery_children(self.pid)
        self.children_seen.update(found)
        return found

    def pids(self) -> set[int]:
        """Every process of this replica that may publish: beat itself, or single-beat's children."""
        return ({self.pid} if self.popen is not None else set()) | self.children_seen

    def leads(self) -> bool:
        if not self.alive():
            return False
        if self.tool.tool == SINGLEBEAT:
            return bool(self.beat_children())
        text = self.log()
        lead = [m.start() for m in LEAD_PATTERNS[self.tool.tool].finditer(text)]
        if not lead:
            return False
        if self.tool.tool == OURS:
            down = [m.start() for m in STEP_DOWN.finditer(text)]
            return not down or lead[-1] > down[-1]
        return True


def start_replica(replica: Replica, broker: str, record: str) -> None:
    replica.incarnation += 1
    replica.children_seen = set()
    command, env = ha_beat(replica.tool.tool, "failoverapp",
                           replica.directory / f"celerybeat-schedule.{replica.incarnation}", replica.relay.url,
                           "FAILOVER_", "failover-bench")
    env["FAILOVER_BROKER"] = broker
    env["FAILOVER_RECORD"] = record
    env.update(replica.tool.env)
    replica.attempts_at_start = replica.attempts()
    replica.popen = spawn(command, replica.log_path, replica.directory, env)


@dataclass
class Site:
    """One tool's redis-server, replicas and worker."""

    tool: HaSubject
    node: RedisNode
    replicas: list[Replica]
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None
    lease_key: str | None = None

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/1"

    @property
    def record(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/2"

    def store(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.node.port, db=0, socket_timeout=5)

    def runs(self) -> list[tuple[float, str, str]]:
        client = redis.Redis(host="127.0.0.1", port=self.node.port, db=2, socket_timeout=5)
        try:
            raw = client.lrange("ran", 0, -1)
        finally:
            client.close()
        out = []
        for item in raw:
            text = item.decode() if isinstance(item, bytes) else str(item)
            at, origin, slot = text.split("|", 2)
            out.append((float(at), origin, slot))
        return out

    def leader(self) -> Replica | None:
        leading = [r for r in self.replicas if r.leads()]
        if len(leading) > 1:
            return None
        return leading[0] if leading else None

    def find_lease_key(self) -> str | None:
        client = self.store()
        try:
            if self.tool.tool == REDBEAT:
                names = [b"redbeat::lock"]
            elif self.tool.tool == SINGLEBEAT:
                names = [b"SINGLE_BEAT_failover-bench"]
            else:
                names = sorted(client.scan_iter(match="*:lease", count=1000))
            for name in names:
                if client.exists(name):
                    return name.decode() if isinstance(name, bytes) else str(name)
            return None
        finally:
            client.close()


def owner(tool: HaSubject, value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    if tool.tool == SINGLEBEAT:
        return text.split(":", 1)[1] if ":" in text else text
    return text


class KeyPoller:
    """Polls one lease key every POLL seconds: (time.time(), owner) at every change."""

    def __init__(self, site: Site) -> None:
        assert site.lease_key is not None
        self.site = site
        self.key = site.lease_key
        self.changes: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._client = site.store()
        self._thread = threading.Thread(target=self._run, name="key-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: object = object()
        while not self._stop.is_set():
            try:
                now_owner = owner(self.site.tool, self._client.get(self.key))
            except redis.RedisError:
                now_owner = "?"
            at = time.time()
            if now_owner != last:
                self.changes.append((at, now_owner))
                last = now_owner
            self._stop.wait(POLL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def first_other(self, old: str | None, after: float) -> float | None:
        """The first time after ``after`` that the key shows an owner that is neither ``old`` nor none."""
        for at, who in list(self.changes):
            if at >= after and who not in (None, old, "?"):
                return at
        return None

    def gone(self, old: str | None, after: float) -> float | None:
        """The first time after ``after`` that ``old`` no longer owns the key."""
        for at, who in list(self.changes):
            if at >= after and who != old:
                return at
        return None


@dataclass
class Trial:
    tool: HaSubject
    fault: str
    number: int
    ttl_left: float | None = None
    takeover: float | None = None  # s: after expiry (kill, stop) or after the signal (term)
    gap: float = 0.0
    duplicates: int = 0
    old_after_new: int = 0
    missed: int = 0
    runs: int = 0
    old_leader: str = ""
    note: str = ""


def analyse_runs(runs: list[tuple[float, str, str]], start: float, end: float, old_pids: set[int],
                 t_new: float | None) -> tuple[float, int, int, int, int]:
    """(longest gap, duplicates, runs by the old leader after the new one's first, missed, runs) in the trial."""
    times = sorted(at for at, _, _ in runs if at <= end)
    before = [t for t in times if t <= start]
    window = ([before[-1]] if before else []) + [t for t in times if start < t <= end]
    intervals = [b - a for a, b in zip(window, window[1:])]
    gap = max(intervals) if intervals else 0.0
    duplicates = sum(1 for d in intervals if d < PERIOD / 2)
    missed = sum(max(0, round(d / PERIOD) - 1) for d in intervals)
    old_after = 0
    if t_new is not None:
        new_first = min((at for at, origin, _ in runs if at > start and origin_pid(origin) not in old_pids),
                        default=None)
        if new_first is not None:
            old_after = sum(1 for at, origin, _ in runs if at > new_first and origin_pid(origin) in old_pids)
    return gap, duplicates, old_after, missed, len(window) - (1 if before else 0)


def origin_pid(origin: str) -> int | None:
    found = re.match(r"gen(\d+)@", origin)
    return int(found.group(1)) if found else None


def describe_old(replica: Replica, fault: str, log_from: int, runs_after: int) -> str:
    if fault == "kill":
        return "killed"
    text = replica.log(log_from)
    if replica.alive():
        state = proc_state(replica.pid)
        if replica.leads() and runs_after:
            return f"kept leading ({runs_after} runs after the new leader's first)"
        if replica.tool.tool == OURS and STEP_DOWN.search(text):
            return f"stepped down, stayed up (state {state})"
        if replica.tool.tool == SINGLEBEAT and not replica.beat_children():
            return f"stayed up without its beat (state {state})"
        return f"stayed up (state {state})" + (f", {runs_after} runs after the new leader's first" if runs_after else "")
    rc = replica.popen.returncode if replica.popen is not None else None
    quit_line = SINGLE_BEAT_QUIT.search(text)
    exceptions = [m.group(0).strip() for m in EXCEPTION.finditer(text) if not m.group(0).startswith("Traceback")]
    if exceptions and rc != 0:
        return f"crashed (exit {rc}: {exceptions[-1][:90]})"
    if exceptions:
        return f"exited (exit {rc}), an exception in its log: {exceptions[-1][:80]}"
    if quit_line:
        return f"exited (exit {rc}: \"{quit_line.group(0).split(' - ')[0].strip()}\")"
    return f"exited (exit {rc})"


def wait_ready(site: Site, timeout: float = READY_TIMEOUT) -> Replica:
    """Both replicas up and tried once, one leading, a run recorded after that: the leader."""
    def problem() -> str | None:
        for r in site.replicas:
            if not r.alive():
                raise BenchmarkError(f"{r.name} exited ({r.popen.returncode if r.popen else None}):\n{r.tail()}")
        leading = [r for r in site.replicas if r.leads()]
        if len(leading) != 1:
            return f"{site.tool.key}: {len(leading)} leaders"
        for r in site.replicas:
            if r not in leading and r.attempts() <= r.attempts_at_start:
                return f"{r.name}: no lease attempt yet"
        return None

    wait_until(lambda: problem() is None, timeout, lambda: problem() or "")
    leader = site.leader()
    assert leader is not None
    n = len(site.runs())
    wait_until(lambda: len(site.runs()) > n, timeout, lambda: f"{site.tool.key}: no run after the leader was known")
    if site.lease_key is None:
        wait_until(lambda: site.find_lease_key() is not None, 10, lambda: f"{site.tool.key}: no lease key")
        site.lease_key = site.find_lease_key()
    return leader


def run_trial(site: Site, fault: str, number: int) -> Trial:
    trial = Trial(site.tool, fault, number)
    leader = wait_ready(site)
    standby = next(r for r in site.replicas if r is not leader)
    leader.beat_children()
    old_pids = set(leader.pids())
    poller = KeyPoller(site)
    try:
        time.sleep(0.1)
        n = len(site.runs())
        wait_until(lambda: len(site.runs()) > n, 20, lambda: f"{site.tool.key}: no run before the fault")
        time.sleep(FAULT_AFTER_RUN)
        old_owner = poller.changes[-1][1] if poller.changes else None
        log_from = leader.log_size()
        client = site.store()
        try:
            t_fault = time.time()
            os.killpg(leader.pid, FAULTS[fault])
            time.sleep(PTTL_AFTER)
            t_read = time.time()
            pttl = client.pttl(site.lease_key or "")
            expiry = t_read + pttl / 1000 if pttl > 0 else None  # SIGTERM: if the old leader does not renew
            if fault in ("kill", "stop") and expiry is not None:
                trial.ttl_left = expiry - t_fault
        finally:
            client.close()
        deadline = t_fault + TAKEOVER_TIMEOUT
        while poller.first_other(old_owner, t_fault) is None and time.time() < deadline:
            if not standby.alive():
                raise BenchmarkError(f"{standby.name} exited during the trial:\n{standby.tail()}")
            time.sleep(0.05)
        t_new = poller.first_other(old_owner, t_fault)
        if t_new is None:
            trial.note = f"no takeover within {TAKEOVER_TIMEOUT:g} s"
        elif fault == "term":
            trial.takeover = t_new - t_fault
            gone = poller.gone(old_owner, t_fault)
            if gone is not None and expiry is not None and gone > expiry - 0.1:
                trial.note = f"lease not released: it expired {gone - t_fault:.2f} s after the signal"
            elif gone is not None and gone < t_new - 2 * POLL:
                trial.note = f"lease released {gone - t_fault:.3f} s after the signal"
            else:
                trial.note = "lease released (another owner at the first poll that saw it go)"
        elif expiry is not None:
            trial.takeover = t_new - expiry
        if fault == "stop":
            time.sleep(max(0.0, t_fault + STOP_FOR - time.time()))
            os.killpg(leader.pid, signal.SIGCONT)
            time.sleep(OBSERVE_AFTER_CONT)
            end = time.time()
        else:
            time.sleep(max(0.0, (t_new or t_fault) + SETTLE - time.time()))
            end = time.time()
        leader.beat_children()
        old_pids |= leader.children_seen
        runs = site.runs()
        trial.gap, trial.duplicates, trial.old_after_new, trial.missed, trial.runs = analyse_runs(
            runs, t_fault, end, old_pids, t_new)
        trial.old_leader = describe_old(leader, fault, log_from, trial.old_after_new)
    finally:
        poller.close()
    # The faulted replica back as a standby.
    stop_group(leader.popen)
    start_replica(leader, site.broker, site.record)
    return trial


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return seconds(values[0])
    return f"{seconds(min(values))} / {seconds(statistics.median(values))} / {seconds(max(values))}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 trial of each fault per tool")
    parser.add_argument("--trials", type=int, help="trials of each fault per tool (default 3, --quick 1)")
    parser.add_argument("--only", help="comma-separated tools: " + ", ".join(t.key for t in TOOLS))
    parser.add_argument("--faults", default="kill,term,stop", help="comma-separated: kill, term, stop")
    parser.add_argument("--seed", type=int, default=0, help="unused beyond shuffling the tool order per trial")
    parser.add_argument("--keep-logs", action="store_true", help="print the temp directory and leave it")
    args = parser.parse_args(argv)
    if args.trials is None:
        args.trials = 1 if args.quick else 3
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    args.tools = choose(parser, args.only, TOOLS, "tool")
    args.fault_list = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not args.fault_list or any(f not in FAULTS for f in args.fault_list):
        parser.error("--faults: a comma-separated subset of kill, term, stop")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started, tmp = begin("failover")
    relays = RelayLoop()
    sites: list[Site] = []
    trials: list[Trial] = []
    rng = random.Random(args.seed)
    try:
        for tool in args.tools:
            node = RedisNode().start()
            replicas = [Replica(tool, i, tmp / f"{tool.key}-{i}", relays.relay(f"{tool.key}-{i} store", node.port),
                                node.port) for i in (1, 2)]
            sites.append(Site(tool, node, replicas))
        print_preamble("failover", argv, redis_version(sites[0].node.port))
        print(f"{len(sites)} tools x 2 beat replicas + 1 solo worker each, a {PERIOD:g}-s schedule; "
              f"{args.trials} trial(s) of {', '.join(args.fault_list)}")
        print()
        for site in sites:
            site.worker_log = tmp / f"{site.tool.key}-worker.log"
            env = bench_env()
            env.update({"FAILOVER_BROKER": site.broker, "FAILOVER_RECORD": site.record})
            site.worker = spawn([sys.executable, "-m", "celery", "-A", "failoverapp", "worker", "-P", "solo", "-c",
                                 "1", "-n", f"{site.tool.key}-worker@localhost", "-l", "info", "--without-gossip",
                                 "--without-mingle", "--without-heartbeat"], site.worker_log, tmp, env)
            for replica in site.replicas:
                start_replica(replica, site.broker, site.record)
                time.sleep(0.5)  # the first one usually leads: index 1
        for site in sites:
            wait_ready(site)
        print(f"every tool has a leader, a standby that tried and runs recorded, "
              f"{time.monotonic() - started:.1f} s after the start")
        for number in range(1, args.trials + 1):
            for fault in args.fault_list:
                order = list(sites)
                rng.shuffle(order)
                for site in order:
                    if site.worker is not None and site.worker.poll() is not None:
                        raise BenchmarkError(f"{site.tool.key} worker exited")
                    trial = run_trial(site, fault, number)
                    trials.append(trial)
                    print(f"trial {number} {fault:4} {site.tool.key:11}: takeover {seconds(trial.takeover)}"
                          f" (TTL left {seconds(trial.ttl_left)}), gap {seconds(trial.gap)}, "
                          f"{trial.duplicates + trial.old_after_new} duplicate(s), {trial.missed} missed; old leader: {trial.old_leader}"
                          + (f"; {trial.note}" if trial.note else ""), flush=True)
        report(args, trials)
    except BaseException:
        for site in sites:
            for replica in site.replicas:
                if replica.popen is not None and replica.popen.poll() is not None:
                    print(f"----- {replica.name} exited {replica.popen.returncode}:\n{replica.tail()}",
                          file=sys.stderr)
        raise
    finally:
        finish(tmp, args.keep_logs, [site.node for site in sites], relays.close)
    left = [f"{r.name} (pids {group_members(r.pid)})" for s in sites for r in s.replicas
            if r.popen is not None and group_members(r.pid)]
    left += [f"{s.tool.key} worker" for s in sites if s.worker is not None and group_members(s.worker.pid)]
    left += [f"redis-server {s.node.port}" for s in sites if s.node.running]
    all_stopped(left, started, "redis-server, beat and worker")
    return 0


def report(args: argparse.Namespace, trials: list[Trial]) -> None:
    n = args.trials
    print(f"\n## Failover: 2 `celery beat` replicas per tool, a 1-s schedule, {n} trial(s) per fault\n")
    print("Takeover: for SIGKILL and SIGSTOP, from the dead lease's expiry to another owner in Redis; for "
          "SIGTERM, from the signal to another owner. Gap: the longest interval between two runs "
          "(1 s = no extra gap). min / median / max over the trials.\n")
    ours = {f: [t.gap for t in trials if t.tool.tool == OURS and t.fault == f] for f in args.fault_list}
    rows = []
    for fault in args.fault_list:
        for tool in args.tools:
            ts = [t for t in trials if t.tool is tool and t.fault == fault]
            gaps = [t.gap for t in ts]
            gap_cell = spread(gaps)
            if tool.tool != OURS and ours.get(fault) and gaps:
                gap_cell += f" ({statistics.median(ours[fault]) / statistics.median(gaps):.2f}x)"
            takeovers = [t.takeover for t in ts if t.takeover is not None]
            ttl = [t.ttl_left for t in ts if t.ttl_left is not None]
            olds = sorted({t.old_leader for t in ts})
            rows.append([FAULT_LABEL[fault], tool.label, spread(takeovers) if fault != "term" else "",
                         spread(takeovers) if fault == "term" else "", spread(ttl) if fault != "term" else "",
                         gap_cell, " / ".join(str(t.duplicates + t.old_after_new) for t in ts),
                         " / ".join(str(t.missed) for t in ts), "; ".join(olds)])
    markdown(("fault", "tool", "takeover after expiry", "handover (signal to new owner)", "TTL left at the fault",
              "gap between runs", "duplicates per trial", "missed slots per trial", "old leader"), rows,
             {2, 3, 4, 5, 6, 7})
    print("In parentheses: singleton-tasks' median gap divided by that tool's (below 1: ours recovers sooner).")
    print("Duplicates: intervals under half a period plus runs sent by the old leader after the new leader's "
          "first; missed: periods with no run, round(interval / 1 s) - 1 per interval.")
    notes = [f"trial {t.number} {t.fault} {t.tool.key}: {t.note}" for t in trials if t.note]
    if notes:
        print("Notes: " + "; ".join(notes))
    print()
    try:
        from celery.beat import DEFAULT_MAX_INTERVAL
        from redbeat.schedulers import RedBeatScheduler
        lock = RedBeatScheduler.lock_timeout
        print(f"RedBeat {version('celery-redbeat')} at its defaults (computed, not measured): lock timeout "
              f"{lock} s (5 x `beat_max_loop_interval` {DEFAULT_MAX_INTERVAL} s), and a standby retries once "
              f"per max loop interval, so a crashed leader is replaced {lock} s to {lock + DEFAULT_MAX_INTERVAL} s "
              f"({lock / 60:.0f}-{(lock + DEFAULT_MAX_INTERVAL) / 60:.0f} min) after its last lock extension; "
              f"singleton-tasks' default lease TTL is 5 s.")
    except ImportError:
        pass
    print()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
