"""Scheduler scale: singleton-tasks, RedBeat and Celery's PersistentScheduler with 100 to 10,000 entries.

Each scheduler runs one real ``celery beat`` (no standby, no worker: the messages queue in a
broker redis-server of its own) of ``benchmarks/scaleapp.py``: E interval entries of one no-op
task, each with its phase set by its ``last_run_at``. Every run has a fresh store redis-server
(singleton-tasks' ``singleton_backend_url``, RedBeat's ``redbeat_redis_url``; PersistentScheduler
keeps its state in a local shelve file) and a fresh broker. Beats log at ``-l warning`` (Celery's
base scheduler would log a line per message at info). The subjects:

* singleton-tasks: ``celery beat -S singleton``, default settings;
* RedBeat: ``-S redbeat.RedBeatScheduler``, default settings;
* Celery's own ``PersistentScheduler`` (``celery beat``, no HA): the reference of what Celery costs.

Publish times: an ``after_task_publish`` handler in the beat process appends ``time.time()`` and
the entry's index to a file (one line-buffered write, a few µs per message); the broker's queue
length at the end is checked against the count.

1. Burst, one scheduler at a time: all E entries due at the same instant (a few seconds after
   the start, later for more entries so set-up is done). Time from the first publish to the last,
   dispatches per second ((n - 1) / that time), and the first publish's lateness (set-up overrun).
   A burst that has not finished within its limit (90 s; 30 s with ``--quick``) is reported as far
   as it got. The store is reached directly (no relay), so nothing slows the dispatch.
2. Steady state, the three schedulers at the same time (so they share the machine, as
   ``bench_idle`` does): E entries every 60 s, entry ``i`` due at ``base + i * 60 / E`` (spread
   evenly over each minute), over a window from ``base`` (a start-up margin after launch) of 2
   minutes for 100 and 1,000 entries and 3 minutes for 10,000 (1 minute each with ``--quick``).
   - dispatched of expected: publishes before the window's end, of the due times inside it;
   - lateness: entry ``i``'s k-th publish against its k-th due time (so a scheduler that falls
     behind accumulates lateness, and a slot never sent counts as missing, not as late): p50,
     p99, max, and the age of the oldest due time not sent by the end;
   - beat CPU s/min over the window: ``/proc/PID/task/*/schedstat`` (``harness.ProcCpu``);
   - store round trips and commands per dispatch (all the store traffic in the window divided by
     the dispatches in it): by default the store server's own counters, ``INFO stats``
     ``total_reads_processed`` (one per request the server read off a socket: a pipeline or a
     script is one) and ``total_commands_processed`` (which also counts the commands a Lua script
     runs inside the server), less our own ``INFO``. With ``--relay`` each
     beat reaches its store through a loopback relay like bench_idle's (``harness.Relay``: it
     parses the client's RESP stream and counts a round trip whenever the client writes after the
     server's last reply). Not the default: every message then crosses this Python process, and
     RedBeat makes about a hundred round trips per dispatch, so at 10,000 entries the relay itself
     would become the bottleneck (it slowed RedBeat visibly already at 1,000 entries). The two
     agree on round trips (100 entries, 20 s: relay 3.03 and 41.5 per dispatch for ours and
     RedBeat, server 3.03 and 40.5); on commands the server's count is higher for ours (8.2 against
     3.0 the client sent): its scripts' own calls;
   - memory: the store's ``used_memory`` after the window minus before the beat started, and the
     sum of ``MEMORY USAGE`` over every key in it (the store holds the scheduler's keys only);
     PersistentScheduler: the size of its shelve file.

``--etcd``: our scheduler on each of its stores instead, so the etcd backend has the same figures.
The subjects are singleton-tasks on Redis (``ours``, as above) and singleton-tasks on a 1-member etcd
cluster (``etcd``: ``singleton_backend_url=etcd://127.0.0.1:PORT``, a fresh
``singleton_tasks.etcd_servers.EtcdCluster(1)`` per run, etcd's default flags: no auto-compaction;
the broker stays a redis-server); RedBeat and PersistentScheduler are left out (they have no etcd).
The same burst and steady state (the two beats at once, beside both store servers), ratios etcd /
Redis, and on both stores the store server's own CPU s/min (redis-server, etcd member) and a summary
of each beat log's warnings and errors. On etcd:

- round trips: the member's ``grpc_server_started_total`` (``/metrics``; every request through the
  HTTP gateway reaches it as one gRPC call, a keepalive or a watch as one too, and reading
  ``/metrics`` is none), as ``bench_etcd_idle`` reads it, over the window divided by the
  dispatches, with the calls per method; "commands": the operations its MVCC store ran
  (``etcd_mvcc_range_total + etcd_mvcc_put_total + etcd_mvcc_delete_total``, those inside a Txn
  too);
- store size: ``etcd_mvcc_db_total_size_in_use_in_bytes`` after the window minus before the beat
  (every revision stays until a compaction, so it grows with the writes), the database file
  (``etcd_mvcc_db_total_size_in_bytes``), and the live keys with their key and value bytes (a range
  read of the whole keyspace at the latest revision).

Every process started here (redis-servers, etcd members, beats) is killed at the end of its run
(beats by process group, etcd members by pid), at interpreter exit and by the kernel if this
process dies.

Run: ``bash scripts/bench.sh scale`` (about 14 minutes; ``--quick``: 100 and 1,000 entries, about
3 minutes; ``--entries 100,1000``, ``--only ours,redbeat,persistent``, ``--relay``, ``--skip-burst``,
``--skip-steady``; ``--etcd``, with ``--only ours,etcd``, not with ``--relay``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import redis

from harness import (
    OURS, REDBEAT, BenchmarkError, ProcCpu, Relay, RelayLoop, Spawned, begin, bench_env, choose, finish, fmt,
    machine_cpu, markdown, percentile, print_preamble, redis_version, sample_tree, spawn, stop_group,
)
from singleton_tasks.etcd_servers import EtcdCluster, EtcdMember, http_json, opener
from singleton_tasks.testing import RedisNode

PERSISTENT = "PersistentScheduler"
EVERY = 60.0  # s: the steady-state interval of every entry
SAMPLE_EVERY = 1.0  # s between CPU samples in the steady window
#: What every member of ``EtcdCluster`` logs at warn when it starts (no auth: nothing to sign).
MEMBER_LOG_EXPECTED = frozenset({"simple token is not cryptographically signed"})


@dataclass(frozen=True)
class Subject:
    key: str
    tool: str
    label: str
    etcd: bool = False  # its store is a 1-member etcd cluster (``--etcd``), not a redis-server


SUBJECTS = (
    Subject("ours", OURS, "singleton-tasks"),
    Subject("redbeat", REDBEAT, "RedBeat"),
    Subject("persistent", PERSISTENT, "Celery PersistentScheduler (no HA)"),
)

#: ``--etcd``: our scheduler on each store; ratios are etcd / Redis.
ETCD_SUBJECTS = (
    Subject("ours", OURS, "singleton-tasks, Redis (1 node)"),
    Subject("etcd", OURS, "singleton-tasks, etcd (1 member)", etcd=True),
)


@dataclass
class Beat(Spawned):
    """One ``celery beat`` with its own store, broker and publish log."""

    subject: Subject
    entries: int
    directory: Path
    store: RedisNode | None  # None on etcd
    broker: RedisNode
    relay: Relay | None
    cluster: EtcdCluster | None = None  # the store with ``--etcd``: one member
    popen: subprocess.Popen[bytes] | None = None
    used_before: int = 0
    cpu: dict[int, ProcCpu] = field(default_factory=dict)
    server_cpu: dict[int, ProcCpu] = field(default_factory=dict)  # the store server's (``--etcd`` runs)

    @property
    def member(self) -> EtcdMember:
        assert self.cluster is not None
        return self.cluster.members[0]

    @property
    def redis_store(self) -> RedisNode:
        assert self.store is not None
        return self.store

    @property
    def store_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.etcd_url
        return self.relay.url if self.relay is not None else self.redis_store.url

    @property
    def server_pid(self) -> int | None:
        if self.cluster is not None:
            return self.member.pid
        process = self.store.process if self.store is not None else None
        return process.pid if process is not None else None

    @property
    def publish_log(self) -> Path:
        return self.directory / "published.txt"

    @property
    def schedule_file(self) -> Path:
        return self.directory / "celerybeat-schedule"

    @property
    def log_path(self) -> Path:
        return self.directory / "beat.log"

    def published(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        try:
            text = self.publish_log.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out.append((float(parts[0]), int(parts[1])))
                except ValueError:
                    pass
        return out

    def published_count(self) -> int:
        try:
            with open(self.publish_log, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def sample(self, start: bool, server: bool = False) -> None:
        if self.popen is not None:
            sample_tree(self.cpu, self.popen.pid, start, lambda _pid: "beat")
        pid = self.server_pid if server else None
        if pid is not None:
            sample_tree(self.server_cpu, pid, start, lambda _pid: "store server")

    def cpu_s(self) -> float:
        return sum(p.run_ns() for p in self.cpu.values()) / 1e9

    def server_cpu_s(self) -> float | None:
        return sum(p.run_ns() for p in self.server_cpu.values()) / 1e9 if self.server_cpu else None

    def log_problems(self) -> tuple[int, str | None]:
        """(the beat log's lines logged at WARNING or above, and tracebacks, and on etcd the member
        log's at warn or above; their distinct messages, digits as N, with their counts, most
        frequent first: a summary)."""
        seen: Counter[str] = Counter()
        for line in self.log().splitlines():
            found = re.match(r"\[[^\]]*: (WARNING|ERROR|CRITICAL)/[^\]]*\] (.*)", line)
            if found:
                message = f"{found.group(1)} {found.group(2)}"
            elif line.startswith("Traceback"):
                message = "Traceback"
            else:
                continue
            seen[re.sub(r"\d+", "N", message)[:120]] += 1
        if self.cluster is not None:
            for line in self.member.log_tail(1 << 24).splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (isinstance(record, dict) and record.get("level") in ("warn", "error", "panic", "fatal")
                        and record.get("msg") not in MEMBER_LOG_EXPECTED):
                    seen[f"etcd member {record['level']}: {record.get('msg', '')}"[:120]] += 1
        if not seen:
            return 0, None
        return sum(seen.values()), "; ".join(f"{m!r} x{n}" for m, n in seen.most_common(4)) + (
            f"; {len(seen) - 4} more kinds" if len(seen) > 4 else "")


def used_memory(node: RedisNode) -> int:
    client = node.client(socket_timeout=10)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def key_memory(node: RedisNode) -> tuple[int, int]:
    """(keys, sum of MEMORY USAGE) over every key of the store."""
    client = node.client(socket_timeout=30)
    try:
        total = count = 0
        for key in client.scan_iter(count=1000):
            total += int(client.memory_usage(key, samples=0) or 0)
            count += 1
        return count, total
    finally:
        client.close()


def server_counts(node: RedisNode) -> tuple[int, int]:
    """(reads processed, commands processed) of a redis-server: its round trips and commands so far."""
    client = node.client(socket_timeout=10)
    try:
        stats = client.info("stats")
        return int(stats["total_reads_processed"]), int(stats["total_commands_processed"])
    finally:
        client.close()


def etcd_metrics(member: EtcdMember) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample on the member's ``/metrics`` (HTTP, not a gRPC call)."""
    with opener().open(member.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out = []
    for found in re.finditer(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", text, re.M):
        try:
            out.append((found.group(1), found.group(2) or "", float(found.group(3))))
        except ValueError:
            pass
    return out


def etcd_counts(member: EtcdMember) -> tuple[int, int, dict[str, float]]:
    """(gRPC calls started: the member's round trips so far; operations its MVCC store ran: ranges,
    puts and deletes, those inside a Txn too; calls started by gRPC method)."""
    calls: dict[str, float] = defaultdict(float)
    ops = 0.0
    for name, labels, value in etcd_metrics(member):
        if name == "grpc_server_started_total":
            method = re.search(r'grpc_method="([^"]*)"', labels)
            calls[method.group(1) if method else "?"] += value
        elif name in ("etcd_mvcc_range_total", "etcd_mvcc_put_total", "etcd_mvcc_delete_total"):
            ops += value
    return int(sum(calls.values())), int(ops), dict(calls)


def etcd_db_size(member: EtcdMember) -> tuple[int, int]:
    """(bytes of the backend database in use, the database file's size): history included until compacted."""
    values = {name: value for name, _, value in etcd_metrics(member)
              if name in ("etcd_mvcc_db_total_size_in_use_in_bytes", "etcd_mvcc_db_total_size_in_bytes")}
    return (int(values.get("etcd_mvcc_db_total_size_in_use_in_bytes", 0)),
            int(values.get("etcd_mvcc_db_total_size_in_bytes", 0)))


def etcd_keys(member: EtcdMember) -> tuple[int, int]:
    """(keys, sum of key and value bytes) over every key the member holds now (its latest revision)."""
    every = base64.b64encode(b"\0").decode()
    answer: Any = http_json(member.url + "/v3/kv/range", {"key": every, "range_end": every}, timeout=60)
    kvs = answer.get("kvs", []) if isinstance(answer, dict) else []
    total = sum(len(base64.b64decode(kv.get("key", ""))) + len(base64.b64decode(kv.get("value", ""))) for kv in kvs)
    return len(kvs), total


def store_used(beat: Beat) -> int:
    """The store's memory (Redis ``used_memory``) or database in use (etcd) now."""
    return etcd_db_size(beat.member)[0] if beat.cluster is not None else used_memory(beat.redis_store)


def queue_length(node: RedisNode) -> int:
    client = node.client(socket_timeout=10)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


def start_beat(beat: Beat, base: float, spread: float) -> None:
    env = bench_env()
    env.update({
        "SCALE_BROKER": beat.broker.url, "SCALE_ENTRIES": str(beat.entries), "SCALE_EVERY": f"{EVERY:g}",
        "SCALE_BASE": f"{base:.6f}", "SCALE_SPREAD": f"{spread:g}", "SCALE_LOG": str(beat.publish_log),
    })
    if beat.subject.tool != PERSISTENT:
        env["SCALE_STORE"] = beat.store_url
    command = [sys.executable, "-m", "celery", "-A", "scaleapp", "beat", "-l", "warning", "-s",
               str(beat.schedule_file)]
    if beat.subject.tool == OURS:
        command += ["-S", "singleton"]
    elif beat.subject.tool == REDBEAT:
        command += ["-S", "redbeat.RedBeatScheduler"]
    beat.used_before = store_used(beat)
    beat.popen = spawn(command, beat.log_path, beat.directory, env)


def new_beat(subject: Subject, entries: int, directory: Path, relays: RelayLoop | None,
             nodes: list[RedisNode]) -> Beat:
    if subject.etcd:
        cluster = EtcdCluster(1)
        _clusters.append(cluster)
        broker = RedisNode().start()
        nodes.append(broker)
        directory.mkdir(parents=True, exist_ok=True)
        return Beat(subject, entries, directory, None, broker, None, cluster)
    store, broker = RedisNode().start(), RedisNode().start()
    nodes += [store, broker]
    relay = relays.relay(f"{subject.key}-{entries} store", store.port) if relays is not None else None
    directory.mkdir(parents=True, exist_ok=True)
    return Beat(subject, entries, directory, store, broker, relay)


_clusters: list[EtcdCluster] = []  # every etcd cluster started here and not yet closed


def close_clusters() -> None:
    while _clusters:
        _clusters.pop().close()


def end_beat(beat: Beat, nodes: list[RedisNode]) -> None:
    stop_group(beat.popen)
    for node in (beat.store, beat.broker):
        if node is None:
            continue
        node.cleanup()
        if node in nodes:
            nodes.remove(node)
    if beat.cluster is not None:
        try:  # kept beside the beat's log (``--keep-logs``)
            (beat.directory / "etcd.log").write_bytes(beat.member.log_path.read_bytes())
        except OSError:
            pass
        beat.cluster.close()
        if beat.cluster in _clusters:
            _clusters.remove(beat.cluster)


def margin_for(entries: int, beats: int) -> float:
    """Seconds from launch to the first due time: Celery's start-up plus the set-up of E entries."""
    return 6.0 + 1.5 * beats * entries / 1000


# -- burst ---------------------------------------------------------------------------------------


@dataclass
class Burst:
    subject: Subject
    entries: int
    sent: int
    first_late: float | None
    duration: float | None
    rate: float | None
    finished: bool
    queued: int
    log_problems: tuple[int, str | None] = (0, None)  # the beat log's warnings and errors (``--etcd``)


def run_burst(subject: Subject, entries: int, tmp: Path, limit: float, nodes: list[RedisNode]) -> Burst:
    beat = new_beat(subject, entries, tmp / f"burst-{subject.key}-{entries}", None, nodes)
    try:
        base = time.time() + margin_for(entries, 1)
        start_beat(beat, base, 0.0)
        give_up = base + limit
        last_count, last_change = 0, time.time()
        while time.time() < give_up:
            if not beat.alive():
                raise BenchmarkError(f"{subject.key} beat exited during the burst:\n{beat.tail()}")
            count = beat.published_count()
            if count >= entries:
                break
            if count != last_count:
                last_count, last_change = count, time.time()
            elif count and time.time() - last_change > 15:
                break  # stalled
            time.sleep(0.2)
        time.sleep(0.3)
        published = sorted(at for at, _ in beat.published())
        queued = queue_length(beat.broker)
        problems = beat.log_problems()
        if not published:
            return Burst(subject, entries, 0, None, None, None, False, queued, problems)
        duration = published[-1] - published[0]
        rate = (len(published) - 1) / duration if duration > 0 else None
        return Burst(subject, entries, len(published), published[0] - base, duration, rate,
                     len(published) >= entries, queued, problems)
    finally:
        end_beat(beat, nodes)


# -- steady state --------------------------------------------------------------------------------


@dataclass
class Steady:
    subject: Subject
    entries: int
    window: float
    expected: int
    dispatched: int
    late_p50: float
    late_p99: float
    late_max: float
    oldest_unsent: float | None
    cpu_s_min: float
    round_trips: int | None
    commands: int | None
    used_delta: int | None
    keys: int | None
    key_bytes: int | None
    file_bytes: int | None
    queued: int
    early: int  # publishes more than 1 s before their due time (should be none)
    relay_counted: bool = False
    # ``--etcd`` runs only:
    server_cpu_s_min: float | None = None  # the store server's CPU (redis-server, etcd member)
    calls_by_method: dict[str, float] | None = None  # etcd: gRPC calls started in the window, per method
    db_file_bytes: int | None = None  # etcd: the database file's size at the end
    log_problems: tuple[int, str | None] = (0, None)


def due_times(index: int, entries: int, base: float, end: float) -> list[float]:
    first = base + index * EVERY / entries
    out = []
    t = first
    while t < end:
        out.append(t)
        t += EVERY
    return out


def analyse(beat: Beat, base: float, end: float, cpu_window: float, rt: int | None, cmds: int | None,
            calls_by_method: dict[str, float] | None = None) -> Steady:
    per_entry: dict[int, list[float]] = defaultdict(list)
    for at, index in beat.published():
        if at < end:
            per_entry[index].append(at)
    expected = dispatched = early = 0
    lateness: list[float] = []
    oldest: float | None = None
    for i in range(beat.entries):
        dues = due_times(i, beat.entries, base, end)
        sent = sorted(per_entry.get(i, []))
        expected += len(dues)
        for k, due in enumerate(dues):
            if k < len(sent):
                late = sent[k] - due
                lateness.append(late)
                early += late < -1.0
                dispatched += 1
            else:
                age = end - due
                oldest = age if oldest is None else max(oldest, age)
    file_bytes = db_file_bytes = None
    if beat.subject.tool == PERSISTENT:
        file_bytes = sum(p.stat().st_size for p in beat.directory.glob("celerybeat-schedule*") if p.is_file())
        used = keys = key_bytes = None
    elif beat.cluster is not None:
        in_use, db_file_bytes = etcd_db_size(beat.member)
        used = in_use - beat.used_before
        keys, key_bytes = etcd_keys(beat.member)
    else:
        used = used_memory(beat.redis_store) - beat.used_before
        keys, key_bytes = key_memory(beat.redis_store)
    server_s = beat.server_cpu_s()
    return Steady(beat.subject, beat.entries, end - base, expected, dispatched,
                  percentile(lateness, 0.5), percentile(lateness, 0.99), max(lateness, default=float("nan")),
                  oldest, beat.cpu_s() / cpu_window * 60, rt, cmds, used, keys, key_bytes, file_bytes,
                  queue_length(beat.broker), early, beat.relay is not None,
                  None if server_s is None else server_s / cpu_window * 60, calls_by_method, db_file_bytes,
                  beat.log_problems())


def run_steady(subjects: Sequence[Subject], entries: int, window: float, tmp: Path, relays: RelayLoop | None,
               nodes: list[RedisNode], server_cpu: bool = False) -> tuple[list[Steady], float]:
    beats = [new_beat(s, entries, tmp / f"steady-{s.key}-{entries}", relays if s.tool != PERSISTENT else None,
                      nodes) for s in subjects]
    try:
        base = time.time() + margin_for(entries, len(beats))
        for beat in beats:
            start_beat(beat, base, EVERY)
        while time.time() < base:
            for beat in beats:
                if not beat.alive():
                    raise BenchmarkError(f"{beat.subject.key} beat exited before the window:\n{beat.tail()}")
            time.sleep(0.2)
        for beat in beats:
            beat.sample(start=True, server=server_cpu)
        methods: dict[str, list[dict[str, float]]] = defaultdict(list)  # etcd: calls by method, per snapshot
        def counts() -> dict[str, tuple[int, int]]:
            out = {}
            for b in beats:
                if b.relay is not None:
                    out[b.subject.key] = (b.relay.round_trips, sum(b.relay.snapshot().values()))
                elif b.cluster is not None:
                    calls, ops, by_method = etcd_counts(b.member)
                    out[b.subject.key] = (calls, ops)
                    methods[b.subject.key].append(by_method)
                elif b.subject.tool != PERSISTENT:
                    out[b.subject.key] = server_counts(b.redis_store)
            return out

        count0 = counts()
        cpu0, mono0 = machine_cpu(), time.monotonic()
        end = base + window
        while time.time() < end:
            time.sleep(max(0.0, min(SAMPLE_EVERY, end - time.time())))
            for beat in beats:
                if not beat.alive():
                    raise BenchmarkError(f"{beat.subject.key} beat exited in the window:\n{beat.tail()}")
                beat.sample(start=False, server=server_cpu)
        cpu1, mono1 = machine_cpu(), time.monotonic()
        count1 = counts()
        # The server's counters include our own INFO: one read and one command per snapshot. An etcd
        # member's /metrics is plain HTTP: no gRPC call, no MVCC operation.
        own = {b.subject.key: 0 if b.relay is not None or b.cluster is not None else 1 for b in beats}
        for beat in beats:  # what was sent by the end, then nothing more
            stop_group(beat.popen)
        busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
        results = []
        for beat in beats:
            key = beat.subject.key
            by_method = None
            if len(methods.get(key, [])) == 2:
                first, last = methods[key]
                by_method = {m: last[m] - first.get(m, 0.0) for m in last if last[m] - first.get(m, 0.0)}
            results.append(analyse(beat, base, end, mono1 - mono0,
                                   count1[key][0] - count0[key][0] - own[key] if key in count0 else None,
                                   count1[key][1] - count0[key][1] - own[key] if key in count0 else None,
                                   by_method))
            for relay in [beat.relay] if beat.relay is not None else []:
                if relay.broken:
                    raise BenchmarkError(f"{relay.name}: {relay.broken}")
        return results, busy
    finally:
        for beat in beats:
            end_beat(beat, nodes)


# -- reporting -----------------------------------------------------------------------------------


def secs(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    if abs(value) >= 10:
        return f"{value:.1f} s"
    if abs(value) >= 0.1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def size(value: int | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    if abs(value) >= 1 << 10:
        return f"{value / (1 << 10):.0f} KiB"
    return f"{value} B"


def versus(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0 or ours != ours or peer != peer:
        return ""
    return f" ({ours / peer:.2f}x)"


def report_bursts(bursts: list[Burst], limit: float) -> None:
    print("\n## Burst: E entries due at the same instant, one beat at a time\n")
    rows = []
    for b in bursts:
        ours = next((o for o in bursts if o.entries == b.entries and o.subject.tool == OURS), None)
        rate = "n/a" if b.rate is None else f"{b.rate:.0f}"
        if b.subject.tool != OURS and ours is not None:
            rate += versus(ours.rate, b.rate)
        done = f"{b.sent:,} of {b.entries:,}" + ("" if b.finished else f" (stopped after {limit:g} s)")
        rows.append([f"{b.entries:,}", b.subject.label, done, secs(b.duration), rate, secs(b.first_late),
                     f"{b.queued:,}"])
    markdown(("entries", "scheduler", "published", "first -> last publish", "dispatches/s",
              "first publish after due", "messages in the broker"), rows, {0, 2, 3, 4, 5, 6})
    print("In parentheses: singleton-tasks' dispatches/s divided by that scheduler's (below 1: ours is slower).\n")


def report_steady(results: list[Steady], busy: dict[int, float]) -> None:
    print("\n## Steady state: E entries every 60 s, spread evenly over the minute, the three beats at once\n")
    rows = []
    for r in results:
        ours = next((o for o in results if o.entries == r.entries and o.subject.tool == OURS), None)
        cpu = fmt(r.cpu_s_min)
        p99 = secs(r.late_p99)
        if r.subject.tool != OURS and ours is not None:
            cpu += versus(ours.cpu_s_min, r.cpu_s_min)
            p99 += versus(ours.late_p99, r.late_p99)
        rt = "n/a (no store)" if r.round_trips is None else f"{r.round_trips / max(1, r.dispatched):.2f}"
        cmds = "n/a" if r.commands is None else f"{r.commands / max(1, r.dispatched):.2f}"
        memory = (f"shelve file {size(r.file_bytes)}" if r.file_bytes is not None else
                  f"{size(r.used_delta)} used_memory; {r.keys:,} keys, {size(r.key_bytes)}")
        rows.append([f"{r.entries:,}", r.subject.label, f"{r.window:.0f} s",
                     f"{r.dispatched:,} of {r.expected:,} ({r.dispatched / max(1, r.expected):.1%})",
                     cpu, secs(r.late_p50), p99, secs(r.late_max),
                     "none" if r.oldest_unsent is None else secs(r.oldest_unsent), rt, cmds, memory])
    markdown(("entries", "scheduler", "window", "dispatched of expected", "beat CPU s/min", "lateness p50",
              "lateness p99", "lateness max", "oldest unsent due at the end", "store round trips / dispatch",
              "store commands / dispatch", "store memory"), rows, {0, 3, 4, 5, 6, 7, 8, 9, 10})
    print("In parentheses: singleton-tasks divided by that scheduler (below 1: ours costs less / is less late).")
    print("Store round trips and commands: all the store traffic in the window / the dispatches in it; "
          + ("counted by a relay in the path (--relay)." if any(r.relay_counted for r in results) else
             "from the server's own counters (reads processed; commands processed, which include those a Lua "
             "script runs inside the server)."))
    print("Lateness: each entry's k-th publish against its k-th due time in the window; a due time never "
          "sent counts as not dispatched (its age at the end: the oldest unsent), not as late.")
    print("Whole machine during each window: " + "; ".join(f"{e:,} entries {b:.0%} of "
                                                             f"{os.cpu_count()} cores busy"
                                                             for e, b in sorted(busy.items())))
    checks = []
    for r in results:
        if r.queued < r.dispatched:
            checks.append(f"{r.subject.key} {r.entries}: broker holds {r.queued} < {r.dispatched} counted")
        if r.early:
            checks.append(f"{r.subject.key} {r.entries}: {r.early} publishes more than 1 s early")
    print("Checks: " + ("every message counted is in its broker, none sent early" if not checks
                        else "; ".join(checks)))
    print()


def redis_of(results: Sequence[Any], entries: int) -> Any:
    """The Redis subject's result of that size in an ``--etcd`` run (what the ratios divide), or None."""
    return next((o for o in results if o.entries == entries and not o.subject.etcd), None)


def report_log_problems(results: Sequence[Burst] | Sequence[Steady], what: str) -> None:
    lines = []
    for r in results:
        count, first = r.log_problems
        if count:
            lines.append(f"{r.subject.key} {r.entries:,}: {count} lines: {first}")
    print(f"Beat logs ({what}, warnings, errors and tracebacks): " + ("none" if not lines else "; ".join(lines)))


def report_etcd_bursts(bursts: list[Burst], limit: float) -> None:
    print("\n## Burst on each store: E entries due at the same instant, one beat at a time\n")
    rows = []
    for b in bursts:
        reference = redis_of(bursts, b.entries)
        rate = "n/a" if b.rate is None else f"{b.rate:.0f}"
        if b.subject.etcd and reference is not None:
            rate += versus(b.rate, reference.rate)
        done = f"{b.sent:,} of {b.entries:,}" + ("" if b.finished else f" (stopped after {limit:g} s)")
        rows.append([f"{b.entries:,}", b.subject.label, done, secs(b.duration), rate, secs(b.first_late),
                     f"{b.queued:,}"])
    markdown(("entries", "store", "published", "first -> last publish", "dispatches/s",
              "first publish after due", "messages in the broker"), rows, {0, 2, 3, 4, 5, 6})
    print("In parentheses: etcd's dispatches/s divided by Redis' (below 1: etcd is slower).")
    report_log_problems(bursts, "bursts")
    print()


def report_etcd_steady(results: list[Steady], busy: dict[int, float]) -> None:
    print("\n## Steady state on each store: E entries every 60 s, spread evenly over the minute, both beats at once\n")
    rows = []
    for r in results:
        reference = redis_of(results, r.entries) if r.subject.etcd else None
        cpu, p50, p99 = fmt(r.cpu_s_min), secs(r.late_p50), secs(r.late_p99)
        server = "n/a" if r.server_cpu_s_min is None else fmt(r.server_cpu_s_min)
        rt = "n/a" if r.round_trips is None else f"{r.round_trips / max(1, r.dispatched):.2f}"
        ops = "n/a" if r.commands is None else f"{r.commands / max(1, r.dispatched):.2f}"
        if reference is not None:
            cpu += versus(r.cpu_s_min, reference.cpu_s_min)
            p50 += versus(r.late_p50, reference.late_p50)
            p99 += versus(r.late_p99, reference.late_p99)
            server += versus(r.server_cpu_s_min, reference.server_cpu_s_min)
            if r.round_trips is not None and reference.round_trips is not None:
                rt += versus(r.round_trips / max(1, r.dispatched), reference.round_trips / max(1, reference.dispatched))
        if r.subject.etcd:
            memory = (f"{size(r.used_delta)} db in use; file {size(r.db_file_bytes)}; "
                      f"{r.keys or 0:,} keys, {size(r.key_bytes)}")
        else:
            memory = f"{size(r.used_delta)} used_memory; {r.keys or 0:,} keys, {size(r.key_bytes)}"
        rows.append([f"{r.entries:,}", r.subject.label, f"{r.window:.0f} s",
                     f"{r.dispatched:,} of {r.expected:,} ({r.dispatched / max(1, r.expected):.1%})",
                     cpu, p50, p99, secs(r.late_max),
                     "none" if r.oldest_unsent is None else secs(r.oldest_unsent), rt, ops, server, memory])
    markdown(("entries", "store", "window", "dispatched of expected", "beat CPU s/min", "lateness p50",
              "lateness p99", "lateness max", "oldest unsent due at the end", "store round trips / dispatch",
              "store commands / dispatch", "store server CPU s/min", "store size"), rows,
             {0, 3, 4, 5, 6, 7, 8, 9, 10, 11})
    print("In parentheses: etcd divided by Redis (above 1: etcd costs more / is later).")
    print("Round trips: Redis, the server's reads processed (a pipeline or a script is one); etcd, the member's "
          "grpc_server_started_total (every gateway request, a keepalive or a watch too, is one call). "
          "Commands: Redis, commands processed (a script's own calls too); etcd, the ranges, puts and deletes "
          "its MVCC store ran (etcd_mvcc_range/put/delete_total, those inside a Txn too). Each: all the store "
          "traffic in the window / the dispatches in it.")
    print("Store size: Redis, used_memory after the window minus before the beat; etcd, "
          "etcd_mvcc_db_total_size_in_use_in_bytes likewise (the bbolt pages in use: every revision is kept "
          "until a compaction, and this cluster runs etcd's defaults, none) and the file "
          "(etcd_mvcc_db_total_size_in_bytes); then the live keys and their bytes (Redis MEMORY USAGE; etcd "
          "key + value lengths at the latest revision).")
    for r in results:
        if r.calls_by_method:
            print(f"etcd gRPC calls per dispatch by method, {r.entries:,} entries: "
                  + ", ".join(f"{m} {v / max(1, r.dispatched):.3f}"
                              for m, v in sorted(r.calls_by_method.items(), key=lambda kv: -kv[1])))
    print("Lateness: each entry's k-th publish against its k-th due time in the window; a due time never "
          "sent counts as not dispatched (its age at the end: the oldest unsent), not as late.")
    print("Whole machine during each window (both beats and both store servers share it): "
          + "; ".join(f"{e:,} entries {b:.0%} of {os.cpu_count()} cores busy" for e, b in sorted(busy.items())))
    checks = []
    for r in results:
        if r.queued < r.dispatched:
            checks.append(f"{r.subject.key} {r.entries}: broker holds {r.queued} < {r.dispatched} counted")
        if r.early:
            checks.append(f"{r.subject.key} {r.entries}: {r.early} publishes more than 1 s early")
    print("Checks: " + ("every message counted is in its broker, none sent early" if not checks
                        else "; ".join(checks)))
    report_log_problems(results, "steady state")
    print()


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 entries, 1-minute windows")
    parser.add_argument("--entries", help="comma-separated entry counts (default 100,1000,10000; --quick 100,1000)")
    parser.add_argument("--window", type=float, help="steady-state window in s for every size")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(s.key for s in SUBJECTS)
                        + " (with --etcd: " + ", ".join(s.key for s in ETCD_SUBJECTS) + ")")
    parser.add_argument("--etcd", action="store_true",
                        help="compare singleton-tasks on Redis with singleton-tasks on a 1-member etcd cluster "
                             "(RedBeat and PersistentScheduler left out); ratios etcd / Redis")
    parser.add_argument("--relay", action="store_true",
                        help="steady state: reach each store through a counting relay (harness.Relay) and count "
                             "round trips and commands there, instead of the server's own counters")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="print the temp directory and leave it")
    args = parser.parse_args(argv)
    sizes = args.entries or ("100,1000" if args.quick else "100,1000,10000")
    try:
        args.sizes = [int(x.replace("_", "")) for x in sizes.split(",") if x.strip()]
    except ValueError:
        parser.error("--entries: comma-separated whole numbers")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--entries: at least one size, each at least 1")
    if args.etcd and args.relay:
        parser.error("--relay counts Redis commands on the wire; with --etcd the servers' own counters are used")
    args.subjects = choose(parser, args.only, ETCD_SUBJECTS if args.etcd else SUBJECTS, "subject")
    args.burst_limit = 30.0 if args.quick else 90.0
    return args


def window_for(args: argparse.Namespace, entries: int) -> float:
    if args.window:
        return float(args.window)
    if args.quick:
        return 60.0
    return 180.0 if entries >= 10000 else 120.0


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started, tmp = begin("scale")
    relays = RelayLoop() if args.relay else None
    nodes: list[RedisNode] = []
    try:
        probe = RedisNode().start()
        nodes.append(probe)
        version = redis_version(probe.port)
        probe.cleanup()
        nodes.remove(probe)
        print_preamble("scale", argv, version)
        if args.etcd:
            probe_cluster = EtcdCluster(1)
            try:
                print(f"etcd: {probe_cluster.version} ({probe_cluster.binary}), 1 member per run, "
                      f"etcd's defaults (no auto-compaction); broker: a redis-server per beat")
            finally:
                probe_cluster.close()
        print(f"entries {', '.join(f'{e:,}' for e in args.sizes)}; burst limit {args.burst_limit:g} s; steady "
              f"windows {', '.join(f'{window_for(args, e):g} s' for e in args.sizes)}")
        print(flush=True)
        bursts: list[Burst] = []
        if not args.skip_burst:
            for entries in args.sizes:
                for subject in args.subjects:
                    b = run_burst(subject, entries, tmp, args.burst_limit, nodes)
                    bursts.append(b)
                    print(f"burst {entries:>6,} {subject.key:10}: {b.sent:,} published in {secs(b.duration)}, "
                          f"{'n/a' if b.rate is None else f'{b.rate:.0f}'}/s, first {secs(b.first_late)} after due",
                          flush=True)
        steady: list[Steady] = []
        busy: dict[int, float] = {}
        if not args.skip_steady:
            for entries in args.sizes:
                results, busy[entries] = run_steady(args.subjects, entries, window_for(args, entries), tmp,
                                                    relays if args.relay else None, nodes, server_cpu=args.etcd)
                steady += results
                for r in results:
                    print(f"steady {entries:>6,} {r.subject.key:10}: {r.dispatched:,} of {r.expected:,}, "
                          f"p99 {secs(r.late_p99)}, CPU {fmt(r.cpu_s_min)} s/min", flush=True)
        if bursts:
            (report_etcd_bursts if args.etcd else report_bursts)(bursts, args.burst_limit)
        if steady:
            (report_etcd_steady if args.etcd else report_steady)(steady, busy)
    finally:
        finish(tmp, args.keep_logs, nodes, *([relays.close] if relays is not None else []), close_clusters)
    print(f"- total time {time.monotonic() - started:.1f} s; every redis-server"
          f"{', etcd' if args.etcd else ''} and beat process stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
