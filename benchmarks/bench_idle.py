"""The idle cost of a highly available beat: singleton-tasks, RedBeat and single-beat side by side.

Each tool runs 2 real ``celery beat`` replicas of one app (``benchmarks/idleapp.py``: a trivial
task every second, no worker, the messages just queue), one of them leading. All tools run at
the same time, in one window, on this machine; what is measured per process:

1. Redis commands per second, the leader's and the standby's apart. Every replica reaches each
   Redis through a TCP relay of its own (started here, on loopback): the relay forwards bytes
   both ways and parses the client's stream as RESP, counting one command per complete request
   array (``*N`` then N bulk strings; an inline command is one line), so a pipeline counts every
   command in it and a bulk string that happens to hold ``*3\\r\\n`` counts nothing. The counts
   are checked against the server's own view: a MONITOR connection on each store shows every
   command the server executed with its client's address (the relay's upstream socket); over
   each replica's whole life the two counts must be equal (MONITOR never shows CLIENT, CONFIG and
   other administrative commands, so those are left out of the check; commands a script runs
   inside Redis are not client commands: MONITOR's ``lua`` lines are not counted).
2. CPU seconds per minute of each process, children included (single-beat's wrapper runs
   ``celery beat`` as its child only while it leads): the sum over the process's threads of
   ``/proc/PID/task/TID/schedstat`` (run time in ns; a thread's last value is kept if it ends
   mid-window), beside ``/proc/PID/stat`` utime+stime (10 ms ticks) as a cross-check. Wake-ups
   are the threads' voluntary context switches.

The subjects, each on its own store redis-server and its own broker redis-server (one per
subject, so nothing mixes; the broker's commands are shown apart, they are the same work for
every tool):

* singleton-tasks: ``celery beat -S singleton``, default settings (``singleton_lease_ttl`` 5 s),
  and again with ``singleton_lease_ttl = 2`` to show how the standby's rate follows the TTL;
* RedBeat (``-S redbeat.RedBeatScheduler``) tuned for a 5 s failover: ``redbeat_lock_timeout = 5``
  and ``beat_max_loop_interval = 1`` (its standby retries the lock every max loop interval, so
  without the second setting it would retry every 300 s whatever the lock timeout), and at its
  defaults (lock timeout 5 x beat_max_loop_interval = 1500 s; the standby retries every 300 s);
* single-beat (``single-beat celery -A idleapp beat``) with ``SINGLE_BEAT_LOCK_TIME=5`` and
  ``SINGLE_BEAT_HEARTBEAT_INTERVAL=1``; its wrapped beat uses Celery's default scheduler.

All replicas log at ``-l info``. After every subject has a leader and its standby has tried once,
a warm-up (10 s) passes, then the window (60 s, 15 s with ``--quick``). Every process started
here (redis-servers, relays' peers, beat replicas and single-beat's children) is killed by
process group at the end, at interpreter exit, and by the kernel if this process dies.

Run: ``bash scripts/bench.sh idle`` (``--quick`` for a short run, ``--window S``, ``--only KEY,...``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import redis

from harness import (
    LEAD_PATTERNS, MONITOR_HIDDEN, OURS, REDBEAT, SINGLEBEAT, BenchmarkError, HaSubject, Monitor, ProcCpu, Relay,
    RelayLoop, Spawned, all_stopped, begin, celery_children, choose, finish, fmt, group_members, ha_beat, kill_groups,
    machine_cpu, markdown, print_preamble, ratio, redis_version, sample_tree, spawn, thread_names, version,
    wait_until,
)
from singleton_tasks.testing import RedisNode

WARMUP = 10.0  # s after every subject has a leader and a standby that tried once
READY_TIMEOUT = 90.0  # s for every replica to start, one per subject to lead, the other to try
SAMPLE_EVERY = 1.0  # s between CPU samples in the window (keeps a thread's last value if it ends)
MONITOR_LINGER = 0.5  # s after the replicas are killed, for MONITOR lines of their last commands

SUBJECTS = (
    HaSubject("ours", OURS, "singleton-tasks, defaults (lease ttl 5 s)", {}, frozenset({"EVALSHA", "EVAL"}), True),
    HaSubject("ours-ttl2", OURS, "singleton-tasks, `singleton_lease_ttl = 2`", {"IDLE_LEASE_TTL": "2"},
              frozenset({"EVALSHA", "EVAL"})),
    HaSubject("redbeat", REDBEAT, "RedBeat, lock 5 s (`redbeat_lock_timeout = 5`, `beat_max_loop_interval = 1`)",
              {"IDLE_REDBEAT_LOCK_TIMEOUT": "5", "IDLE_MAX_LOOP": "1"}, frozenset({"SET"})),
    HaSubject("redbeat-default", REDBEAT, "RedBeat, defaults (lock 1500 s, standby retries every 300 s)", {},
              frozenset({"SET"})),
    HaSubject("single-beat", SINGLEBEAT, "single-beat, `SINGLE_BEAT_LOCK_TIME=5`, `SINGLE_BEAT_HEARTBEAT_INTERVAL=1`",
              {"SINGLE_BEAT_LOCK_TIME": "5", "SINGLE_BEAT_HEARTBEAT_INTERVAL": "1"}, frozenset({"SET"})),
)


@dataclass
class Replica(Spawned):
    subject: HaSubject
    index: int
    directory: Path
    store: Relay
    broker: Relay
    popen: subprocess.Popen[bytes] | None = None
    cpu: dict[int, ProcCpu] = field(default_factory=dict)
    leader: bool = False
    led_children: set[int] = field(default_factory=set)  # single-beat: the beat children seen

    @property
    def name(self) -> str:
        return f"{self.subject.key}-{self.index}"

    @property
    def log_path(self) -> Path:
        return self.directory / "replica.log"

    def beat_children(self) -> list[int]:
        return celery_children(self.pid)

    def describe(self, pid: int) -> str:
        if self.subject.tool == SINGLEBEAT:
            return "single-beat wrapper" if pid == self.pid else "its `celery beat` child"
        return "`celery beat`"

    def sample(self, start: bool) -> None:
        """Read the CPU counters of this replica's process tree (``start``: the window's baseline)."""
        sample_tree(self.cpu, self.pid, start, self.describe)
        if self.subject.tool == SINGLEBEAT:
            self.led_children.update(self.beat_children())


def start_replica(replica: Replica) -> None:
    command, env = ha_beat(replica.subject.tool, "idleapp", replica.directory / "celerybeat-schedule",
                           replica.store.url, "IDLE_", "idle-bench")
    env["IDLE_BROKER"] = replica.broker.url
    env.update(replica.subject.env)
    replica.popen = spawn(command, replica.log_path, replica.directory, env)


def leads(replica: Replica) -> bool:
    """Whether this replica has led (ours, RedBeat: its log says so) or leads (single-beat: it runs beat)."""
    if replica.subject.tool == SINGLEBEAT:
        return bool(replica.beat_children())
    return bool(LEAD_PATTERNS[replica.subject.tool].search(replica.log()))


def lead_count(replica: Replica) -> int:
    if replica.subject.tool == SINGLEBEAT:
        return len(replica.led_children | set(replica.beat_children()))
    return len(LEAD_PATTERNS[replica.subject.tool].findall(replica.log()))


# -- reporting -----------------------------------------------------------------------------------



@dataclass
class Figures:
    cpu_s_min: float  # the whole process tree
    ticks_s_min: float | None
    store_per_s: float
    store_by_name: Counter[str]
    broker_per_s: float
    opened: int  # store connections opened in the window


def figures(replica: Replica, window: float, store_delta: Counter[str], broker_delta: Counter[str],
            opened: int) -> Figures:
    run_ns = sum(p.run_ns() for p in replica.cpu.values())
    ticks = [p.ticks() for p in replica.cpu.values()]
    tick_total = None if any(t is None for t in ticks) else sum(t for t in ticks if t is not None)
    clk = os.sysconf("SC_CLK_TCK")
    return Figures(run_ns / 1e9 / window * 60, None if tick_total is None else tick_total / clk / window * 60,
                   sum(store_delta.values()) / window, store_delta, sum(broker_delta.values()) / window,
                   opened)



# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a 15 s window instead of 60 s")
    parser.add_argument("--window", type=float, help="seconds measured (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds between readiness and the window")
    parser.add_argument("--only", help="comma-separated subject keys: " + ", ".join(s.key for s in SUBJECTS))
    parser.add_argument("--keep-logs", action="store_true", help="print the temp directory and leave it")
    args = parser.parse_args(argv)
    if args.window is None:
        args.window = 15.0 if args.quick else 60.0
    if args.window <= 0 or args.warmup < 0:
        parser.error("--window must be positive and --warmup not negative")
    args.subjects = choose(parser, args.only, SUBJECTS, "subject")
    return args



def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started, tmp = begin("idle")
    nodes: list[RedisNode] = []
    monitors: dict[str, Monitor] = {}
    relays = RelayLoop()
    replicas: list[Replica] = []
    try:
        # One store and one broker redis-server per subject; one relay per replica and server.
        for subject in args.subjects:
            store, broker = RedisNode().start(), RedisNode().start()
            nodes += [store, broker]
            monitors[subject.key] = Monitor(store.port)
            for i in (1, 2):
                replicas.append(Replica(subject, i, tmp / f"{subject.key}-{i}",
                                        relays.relay(f"{subject.key}-{i} store", store.port),
                                        relays.relay(f"{subject.key}-{i} broker", broker.port)))
        print_preamble("idle", argv, redis_version(nodes[0].port))
        print(f"{len(replicas)} replicas ({len(args.subjects)} subjects x 2), all at once; warm-up {args.warmup:g} s, "
              f"window {args.window:g} s")
        print()

        for replica in replicas:
            start_replica(replica)

        def not_ready() -> list[str]:
            missing = []
            for subject in args.subjects:
                pair = [r for r in replicas if r.subject is subject]
                for r in pair:
                    if not r.alive():
                        raise BenchmarkError(f"{r.name} exited ({r.popen.returncode if r.popen else None}):\n"
                                             f"{r.tail()}")
                leading = [r for r in pair if leads(r)]
                if len(leading) > 1:
                    raise BenchmarkError(f"{subject.key}: both replicas lead")
                if not leading:
                    missing.append(f"{subject.key}: no leader yet")
                for r in pair:
                    if r not in leading and not subject.attempt & set(r.store.snapshot()):
                        missing.append(f"{r.name}: no attempt yet")
            return missing

        wait_until(lambda: not not_ready(), READY_TIMEOUT, lambda: "; ".join(not_ready()))
        for replica in replicas:
            replica.leader = leads(replica)
        ready_at = time.monotonic()
        print(f"every subject has a leader and a standby that tried, {ready_at - started:.1f} s after the start")
        time.sleep(args.warmup)

        # The window.
        for replica in replicas:
            replica.sample(start=True)
        cpu0 = machine_cpu()
        store0 = {r.name: r.store.snapshot() for r in replicas}
        broker0 = {r.name: r.broker.snapshot() for r in replicas}
        mono0 = time.monotonic()
        end = mono0 + args.window
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(SAMPLE_EVERY, left))
            for replica in replicas:
                if not replica.alive():
                    raise BenchmarkError(f"{replica.name} exited during the window:\n{replica.tail()}")
                replica.sample(start=False)
        store1 = {r.name: r.store.snapshot() for r in replicas}
        broker1 = {r.name: r.broker.snapshot() for r in replicas}
        mono1 = time.monotonic()
        cpu1 = machine_cpu()
        busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
        window = mono1 - mono0
        names = {r.name: {t: n for p in r.cpu for t, n in thread_names(p).items()} for r in replicas}

        # Checks: one leader per subject all along, and each relay's stream parsed.
        problems: list[str] = []
        for replica in replicas:
            count = lead_count(replica)
            if replica.leader and count != 1:
                problems.append(f"{replica.name} (leader) led {count} times")
            if not replica.leader and count:
                problems.append(f"{replica.name} (standby) led {count} times")
            for relay in (replica.store, replica.broker):
                problems += [f"{relay.name}: {b}" for b in relay.broken]

        results: dict[str, Figures] = {}
        for r in replicas:
            opened = sum(1 for at in r.store.opened if mono0 <= at < mono1)
            results[r.name] = figures(r, window, store1[r.name] - store0[r.name], broker1[r.name] - broker0[r.name],
                                      opened)

        def role(subject: HaSubject, leader: bool) -> tuple[Replica, Figures]:
            r = next(r for r in replicas if r.subject is subject and r.leader == leader)
            return r, results[r.name]

        print(f"\n## Idle cost over {window:.0f} s: 2 replicas per tool, one leading, a 1-s task, loopback Redis\n")
        reference = next((s for s in args.subjects if s.reference), None)
        ref_standby = role(reference, False)[1] if reference else None
        ref_leader = role(reference, True)[1] if reference else None
        rows = []
        for subject in args.subjects:
            (_, standby), (leader_r, leader) = role(subject, False), role(subject, True)
            cells = [fmt(standby.cpu_s_min), fmt(standby.store_per_s, 2), fmt(leader.cpu_s_min),
                     fmt(leader.store_per_s, 2)]
            if ref_standby and ref_leader and subject.tool != OURS:
                ours = [ref_standby.cpu_s_min, ref_standby.store_per_s, ref_leader.cpu_s_min, ref_leader.store_per_s]
                peer = [standby.cpu_s_min, standby.store_per_s, leader.cpu_s_min, leader.store_per_s]
                cells = [f"{c} ({ratio(o, p)})" for c, o, p in zip(cells, ours, peer)]
            rows.append([subject.label, *cells])
        markdown(("tool", "standby CPU s/min", "standby Redis commands/s", "leader CPU s/min",
                  "leader Redis commands/s"), rows, {1, 2, 3, 4})
        print("In parentheses: singleton-tasks at its defaults divided by that tool (below 1: ours costs less).")
        print("CPU: the process and its children (single-beat's leader: the wrapper plus its `celery beat`).")
        print("Redis commands: to the election/schedule store only; the broker's are below, per process.\n")

        if ref_standby is not None:
            cpu_ok = "met" if ref_standby.cpu_s_min <= 0.03 else "NOT met"
            cmd_ok = "met" if ref_standby.store_per_s <= 1 else "NOT met"
            print(f"Targets for our standby: at most 1 Redis command/s per node: {fmt(ref_standby.store_per_s, 2)} "
                  f"({cmd_ok}); at most 0.03 CPU s/min: {fmt(ref_standby.cpu_s_min)} ({cpu_ok}).")
        for subject in args.subjects:
            if subject.tool == OURS:
                _, f = role(subject, False)
                ttl = float(subject.env.get("IDLE_LEASE_TTL", "5"))
                attempts = f.store_by_name["EVALSHA"] + f.store_by_name["EVAL"]
                rate = attempts / window
                print(f"- {subject.label}: the standby tried {attempts} times in {window:.0f} s: {rate:.3f}/s, "
                      f"{rate * ttl:.2f} attempts per TTL (one every {window / attempts if attempts else float('inf'):.2f} s)")
        print()

        # RedBeat's defaults, from its source as installed.
        try:
            from celery.beat import DEFAULT_MAX_INTERVAL
            from redbeat.schedulers import RedBeatScheduler
            print(f"RedBeat {version('celery-redbeat')} defaults, from its source: `lock_timeout = redbeat_lock_timeout "
                  f"or max_interval * 5`, max_interval = `beat_max_loop_interval` or Celery's {DEFAULT_MAX_INTERVAL} s, "
                  f"so {RedBeatScheduler.lock_timeout} s unless set; its standby blocks in redis-py's "
                  f"`Lock.acquire(sleep=max_interval)`: one `SET NX` per max loop interval.")
        except ImportError:
            pass
        seen_ttls = []
        for subject in args.subjects:
            if subject.tool == REDBEAT:
                store_port = next(r.store.target_port for r in replicas if r.subject is subject)
                client = redis.Redis(host="127.0.0.1", port=store_port, socket_timeout=5)
                try:
                    pttl = client.pttl("redbeat::lock")
                finally:
                    client.close()
                seen_ttls.append(f"{subject.key}: {pttl / 1000:.1f} s")
        if seen_ttls:
            print(f"RedBeat lock TTL left in Redis just after the window (`PTTL redbeat::lock`): {'; '.join(seen_ttls)}")
        print()

        print("### Per process\n")
        rows = []
        for r in replicas:
            f = results[r.name]
            top = ", ".join(f"{n} {c / window:.2f}" for n, c in f.store_by_name.most_common(6))
            for p in sorted(r.cpu.values(), key=lambda p: p.pid):
                ticks = p.ticks()
                clk = os.sysconf("SC_CLK_TCK")
                first = p is min(r.cpu.values(), key=lambda p: p.pid)
                rows.append([
                    r.subject.key if first else "", ("leader" if r.leader else "standby") if first else "",
                    f"{p.what} {p.pid}" + ("" if p.seen_from_start else " (started in the window)"),
                    fmt(p.run_ns() / 1e9 / window * 60), "n/a" if ticks is None else fmt(ticks / clk / window * 60),
                    f"{p.wakeups() / window:.1f}", str(len(p.last)),
                    f"{f.store_per_s:.2f}" if first else "", top if first else "",
                    str(f.opened) if first else "", f"{f.broker_per_s:.2f}" if first else ""])
        markdown(("subject", "role", "process", "CPU s/min", "CPU s/min (ticks)", "wake-ups/s", "threads",
                  "store commands/s", "store commands/s by name", "store connections opened", "broker commands/s"),
                 rows, {3, 4, 5, 6, 7, 9, 10})

        print("### Threads\n")
        rows = []
        for r in sorted(replicas, key=lambda r: r.leader):
            for p in r.cpu.values():
                for tid, run_ns, wakeups in sorted(p.per_thread(), key=lambda t: -t[1]):
                    label = names.get(r.name, {}).get(tid) or ("main thread" if tid == p.pid else "")
                    rows.append([r.subject.key, "leader" if r.leader else "standby", p.what,
                                 f"{tid}{' ' + label if label else ''}", f"{wakeups / window:.2f}",
                                 f"{run_ns / 1e6 / window * 60:.1f}"])
        markdown(("subject", "role", "process", "thread (`py-spy dump` after the window: name, where it waits)",
                  "wake-ups/s", "CPU ms/min"), rows, {4, 5})

        print("Checks:")
        print(f"- one leader per subject, the same all along: {'yes' if not problems else 'NO: ' + '; '.join(problems)}")
        print(f"- the whole machine's CPU during the window (every process, this one and its relays included): "
              f"{busy:.1%} of {os.cpu_count()} cores busy")
        if problems:
            raise BenchmarkError("; ".join(problems))

        # The relays against the servers, over each replica's whole life: every command a
        # relay counted was forwarded, so once the replicas are gone MONITOR has seen them all.
        kill_groups()
        time.sleep(MONITOR_LINGER)
        counted: list[str] = []
        same, hidden_names = True, set[str]()
        for r in replicas:
            total = r.store.snapshot()
            hidden_names |= MONITOR_HIDDEN & set(total)
            shown = sum(c for n, c in total.items() if n not in MONITOR_HIDDEN)
            seen = sum(monitors[r.subject.key].count(r.store.upstream, 0, float("inf")).values())
            same &= shown == seen
            if shown == seen:
                counted.append(f"{r.name} {shown}")
            else:  # by name, to see which
                shown_by_name = {n: c for n, c in sorted(total.items()) if n not in MONITOR_HIDDEN}
                seen_by_name = dict(sorted(monitors[r.subject.key].count(r.store.upstream, 0, float("inf")).items()))
                counted.append(f"{r.name} {shown} {shown_by_name} vs MONITOR {seen} {seen_by_name}")
        print(f"- over each replica's whole life, its relay's count equals what the store's MONITOR showed of "
              f"that replica's connections" + (f" (leaving out {', '.join(sorted(hidden_names))}, which MONITOR "
                                               f"never shows)" if hidden_names else "")
              + f": {'yes' if same else 'NO'}: " + "; ".join(counted))
    except BaseException:
        for replica in replicas:
            if replica.popen is not None and replica.popen.poll() is not None:
                print(f"----- {replica.name} exited {replica.popen.returncode}:\n{replica.tail()}", file=sys.stderr)
        raise
    finally:
        finish(tmp, args.keep_logs, nodes, *(monitor.close for monitor in monitors.values()), relays.close)
    left = [f"{r.name} (pids {group_members(r.pid)})" for r in replicas
            if r.popen is not None and group_members(r.pid)]
    left += [f"redis-server {n.port}" for n in nodes if n.running]
    all_stopped(left, started, "redis-server and beat")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
