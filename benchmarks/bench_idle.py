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
import asyncio
import atexit
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import redis

from singleton_tasks.testing import RedisNode, die_with_parent

HERE = Path(__file__).resolve().parent
WARMUP = 10.0  # s after every subject has a leader and a standby that tried once
READY_TIMEOUT = 90.0  # s for every replica to start, one per subject to lead, the other to try
SAMPLE_EVERY = 1.0  # s between CPU samples in the window (keeps a thread's last value if it ends)
KILL_TIMEOUT = 10.0  # s to wait for a killed process group's leader
MONITOR_LINGER = 0.5  # s after the replicas are killed, for MONITOR lines of their last commands

#: single-beat's wrapped command runs through this, so it dies with its wrapper (the kernel's
#: parent-death signal) even if nothing else is left to kill it; exec replaces it at once.
DIE_WITH_PARENT_EXEC = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                        "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")

OURS, REDBEAT, SINGLEBEAT = "singleton-tasks", "RedBeat", "single-beat"


class BenchmarkError(RuntimeError):
    """A wait ran out or a subject misbehaved (two leaders, a crash), so the figures would mean nothing."""


@dataclass(frozen=True)
class Subject:
    key: str
    tool: str
    label: str
    env: dict[str, str]
    attempt: frozenset[str]  # the store commands a standby's attempt sends: it has tried once
    reference: bool = False  # ours at its defaults: what the ratios divide


SUBJECTS = (
    Subject("ours", OURS, "singleton-tasks, defaults (lease ttl 5 s)", {}, frozenset({"EVALSHA", "EVAL"}), True),
    Subject("ours-ttl2", OURS, "singleton-tasks, `singleton_lease_ttl = 2`", {"IDLE_LEASE_TTL": "2"},
            frozenset({"EVALSHA", "EVAL"})),
    Subject("redbeat", REDBEAT, "RedBeat, lock 5 s (`redbeat_lock_timeout = 5`, `beat_max_loop_interval = 1`)",
            {"IDLE_REDBEAT_LOCK_TIMEOUT": "5", "IDLE_MAX_LOOP": "1"}, frozenset({"SET"})),
    Subject("redbeat-default", REDBEAT, "RedBeat, defaults (lock 1500 s, standby retries every 300 s)", {},
            frozenset({"SET"})),
    Subject("single-beat", SINGLEBEAT, "single-beat, `SINGLE_BEAT_LOCK_TIME=5`, `SINGLE_BEAT_HEARTBEAT_INTERVAL=1`",
            {"SINGLE_BEAT_LOCK_TIME": "5", "SINGLE_BEAT_HEARTBEAT_INTERVAL": "1"}, frozenset({"SET"})),
)


# -- counting relays -----------------------------------------------------------------------------


class RespCounter:
    """Counts the complete commands in a client's RESP byte stream, by command name."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken: str | None = None  # set if the stream stops parsing: counts are then void

    def feed(self, data: bytes) -> list[str]:
        """Take more bytes; return the names of the commands they completed."""
        if self.broken:
            return []
        buf = self._buf
        buf += data
        names: list[str] = []
        pos = 0
        try:
            while pos < len(buf):
                parsed = self._one(buf, pos)
                if parsed is None:
                    break
                pos, name = parsed
                names.append(name)
        except ValueError as exc:
            self.broken = f"unparsable client stream at byte {pos}: {exc}"
        del buf[:pos]
        return names

    @staticmethod
    def _one(buf: bytearray, pos: int) -> tuple[int, str] | None:
        """(the end of the command starting at ``pos``, its name), or None while incomplete."""
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        if buf[pos] != ord("*"):  # an inline command: one line
            words = bytes(buf[pos:end]).split()
            return end + 2, (words[0].decode(errors="replace").upper() if words else "")
        count = int(buf[pos + 1:end])
        p, name = end + 2, ""
        for i in range(count):
            if p >= len(buf):
                return None
            if buf[p] != ord("$"):
                raise ValueError(f"expected a bulk string, got {bytes(buf[p:p + 10])!r}")
            head = buf.find(b"\r\n", p)
            if head < 0:
                return None
            start = head + 2
            stop = start + int(buf[p + 1:head])
            if stop + 2 > len(buf):
                return None
            if i == 0:
                name = bytes(buf[start:stop]).decode(errors="replace").upper()
            p = stop + 2
        return p, name


class Relay:
    """A loopback TCP relay to one Redis for one replica: forwards bytes, counts its commands."""

    def __init__(self, name: str, target_port: int) -> None:
        self.name = name
        self.target_port = target_port
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.opened: list[float] = []  # monotonic times of the connections accepted
        self.upstream: set[str] = set()  # "127.0.0.1:PORT" of our sockets to the server: MONITOR's view
        self.broken: list[str] = []
        self._lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        host, port = server_w.get_extra_info("sockname")[:2]
        counter = RespCounter()
        with self._lock:
            self.opened.append(time.monotonic())
            self.upstream.add(f"{host}:{port}")
        await asyncio.gather(self._pump(client_r, server_w, counter), self._pump(server_r, client_w, None))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    counter: RespCounter | None) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if counter is not None:
                    names = counter.feed(data)
                    if names:
                        with self._lock:
                            self.counts.update(names)
                    if counter.broken and counter.broken not in self.broken:
                        self.broken.append(counter.broken)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()  # one side ended: end the other too


class RelayLoop:
    """The event loop every relay runs on, in a daemon thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="relays", daemon=True)
        self._thread.start()
        self.relays: list[Relay] = []

    def relay(self, name: str, target_port: int) -> Relay:
        relay = Relay(name, target_port)
        asyncio.run_coroutine_threadsafe(relay.start(), self.loop).result(timeout=10)
        self.relays.append(relay)
        return relay

    def close(self) -> None:
        if not self.loop.is_running():
            return
        for relay in self.relays:
            try:
                asyncio.run_coroutine_threadsafe(relay.stop(), self.loop).result(timeout=5)
            except Exception:
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


# -- MONITOR: the server's own count ------------------------------------------------------------

#: Commands MONITOR never shows: administrative ones (CLIENT, CONFIG...) and AUTH. redis-py sends
#: CLIENT SETINFO twice on connecting; our start-up check sends CONFIG GET.
MONITOR_HIDDEN = frozenset({"CLIENT", "CONFIG", "AUTH", "DEBUG", "SHUTDOWN", "SLAVEOF", "REPLICAOF"})

_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"')


class Monitor:
    """Every command one redis-server executes, with its time and client address (MONITOR)."""

    def __init__(self, port: int) -> None:
        self.lines: list[tuple[float, str, str]] = []  # (server time, client address, command)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"monitor-{port}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._sock.settimeout(0.5)
        pending = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            pending += data
            *complete, pending = pending.split(b"\r\n")
            for line in complete:
                found = _MONITOR_LINE.match(line)
                if found:
                    self.lines.append((float(found.group(1)), found.group(2).decode(),
                                       found.group(3).decode(errors="replace").upper()))

    def count(self, addresses: set[str], start: float, end: float) -> Counter[str]:
        """The commands of the clients at ``addresses`` executed from ``start`` to ``end`` (server time)."""
        return Counter(name for at, addr, name in list(self.lines) if start <= at < end and addr in addresses)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# -- processes -----------------------------------------------------------------------------------

_groups: list[subprocess.Popen[bytes]] = []  # every process group started here, killed at the end


def kill_groups() -> None:
    """SIGKILL every process group started here (resumed first), by id; wait for each leader."""
    for popen in _groups:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    for popen in _groups:
        try:
            popen.wait(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


atexit.register(kill_groups)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's), from /proc."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo += children(p)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def stat_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU together, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - fields[3] - fields[4], total


def thread_samples(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of ``pid``: (run time in ns from schedstat, voluntary context switches)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for name in tids:
        try:
            run_ns = int(Path(f"/proc/{pid}/task/{name}/schedstat").read_text().split()[0])
            status = Path(f"/proc/{pid}/task/{name}/status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        out[int(name)] = (run_ns, int(found.group(1)) if found else 0)
    return out


@dataclass
class ProcCpu:
    """One process's CPU over the window."""

    pid: int
    what: str
    first_ticks: int | None = None
    last_ticks: int | None = None
    first: dict[int, tuple[int, int]] = field(default_factory=dict)  # at the window's start
    last: dict[int, tuple[int, int]] = field(default_factory=dict)  # the last value seen per thread
    seen_from_start: bool = True

    def run_ns(self) -> int:
        return sum(v[0] - self.first.get(t, (0, 0))[0] for t, v in self.last.items())

    def wakeups(self) -> int:
        return sum(v[1] - self.first.get(t, (0, 0))[1] for t, v in self.last.items())

    def ticks(self) -> int | None:
        if self.last_ticks is None:
            return None
        return self.last_ticks - (self.first_ticks or 0)

    def per_thread(self) -> list[tuple[int, int, int]]:
        """(tid, run ns, wake-ups) over the window."""
        return [(t, v[0] - self.first.get(t, (0, 0))[0], v[1] - self.first.get(t, (0, 0))[1])
                for t, v in sorted(self.last.items())]


@dataclass
class Replica:
    subject: Subject
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
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def log_path(self) -> Path:
        return self.directory / "replica.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def beat_children(self) -> list[int]:
        return [p for p in tree(self.pid)[1:] if "celery" in " ".join(cmdline(p))]

    def describe(self, pid: int) -> str:
        if self.subject.tool == SINGLEBEAT:
            return "single-beat wrapper" if pid == self.pid else "its `celery beat` child"
        return "`celery beat`"

    def sample(self, start: bool) -> None:
        """Read the CPU counters of this replica's process tree (``start``: the window's baseline)."""
        for pid in tree(self.pid):
            entry = self.cpu.get(pid)
            if entry is None:
                entry = self.cpu[pid] = ProcCpu(pid, self.describe(pid), seen_from_start=start)
            ticks, threads = stat_ticks(pid), thread_samples(pid)
            if ticks is None:
                continue
            if start:
                entry.first_ticks, entry.first = ticks, threads
            entry.last_ticks = ticks
            entry.last.update(threads)
        if self.subject.tool == SINGLEBEAT:
            self.led_children.update(self.beat_children())


def replica_command(replica: Replica) -> list[str]:
    subject, schedule = replica.subject, str(replica.directory / "celerybeat-schedule")
    beat = [sys.executable, "-m", "celery", "-A", "idleapp", "beat", "-l", "info", "-s", schedule]
    if subject.tool == OURS:
        return [*beat, "-S", "singleton"]
    if subject.tool == REDBEAT:
        return [*beat, "-S", "redbeat.RedBeatScheduler"]
    single_beat = Path(sys.executable).with_name("single-beat")
    return [str(single_beat), sys.executable, "-c", DIE_WITH_PARENT_EXEC, *beat[1:]]


def start_replica(replica: Replica) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDLE_", "SINGLE_BEAT_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["IDLE_BROKER"] = replica.broker.url
    if replica.subject.tool == SINGLEBEAT:
        env["SINGLE_BEAT_REDIS_SERVER"] = replica.store.url
        env["SINGLE_BEAT_IDENTIFIER"] = "idle-bench"
    else:
        env["IDLE_STORE"] = replica.store.url
    env.update(replica.subject.env)
    replica.directory.mkdir(parents=True, exist_ok=True)
    with open(replica.log_path, "wb") as log:
        replica.popen = subprocess.Popen(
            replica_command(replica), cwd=replica.directory, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
    _groups.append(replica.popen)


LEAD_PATTERNS = {OURS: re.compile(r"beat: leading with token"), REDBEAT: re.compile(r"beat: Acquired lock")}


def leads(replica: Replica) -> bool:
    """Whether this replica has led (ours, RedBeat: its log says so) or leads (single-beat: it runs beat)."""
    if replica.subject.tool == SINGLEBEAT:
        return bool(replica.beat_children())
    return bool(LEAD_PATTERNS[replica.subject.tool].search(replica.log()))


def lead_count(replica: Replica) -> int:
    if replica.subject.tool == SINGLEBEAT:
        return len(replica.led_children | set(replica.beat_children()))
    return len(LEAD_PATTERNS[replica.subject.tool].findall(replica.log()))


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise BenchmarkError(f"not within {timeout:.0f} s: {what()}")
        time.sleep(0.2)


# -- reporting -----------------------------------------------------------------------------------


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def markdown(headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---:" if i in right else "---" for i in range(len(headers))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def ratio(ours: float, peer: float) -> str:
    if peer == 0:
        return "n/a: 0"
    return f"{ours / peer:.2f}x"


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


def thread_names(pid: int) -> dict[int, str]:
    """Per native thread id: its Python name and where it waits (its three innermost frames and
    its outermost one below threading's bootstrap), from ``py-spy dump`` if it is installed
    beside this interpreter; else nothing."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {}
    try:
        out = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    stacks: dict[int, tuple[str, list[str]]] = {}
    frames: list[str] = []
    for line in out.splitlines():
        found = re.match(r'Thread (0x[0-9A-Fa-f]+|\d+) \((\w+)\): "([^"]*)"', line)
        if found:
            raw = found.group(1)
            frames = []
            stacks[int(raw, 16) if raw.startswith("0x") else int(raw)] = (found.group(3), frames)
        elif line.startswith("    ") and stacks:
            function = line.strip().split(" (")[0]
            if not function.startswith("Thread._bootstrap"):
                frames.append(function)
    names = {}
    for tid, (name, stack) in stacks.items():
        where = stack[:3] + (["…", stack[-1]] if len(stack) > 4 else stack[3:])
        names[tid] = f"{name}: {' ← '.join(where)}" if where else name
    return names


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that are not zombies, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(name))
    return found


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
    keys = [s.key for s in SUBJECTS]
    args.subjects = list(SUBJECTS)
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in keys]
        if unknown:
            parser.error(f"unknown subject(s) {unknown}; choose from {keys}")
        args.subjects = [s for s in SUBJECTS if s.key in wanted]
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks and atexit: every process is killed


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
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
        probe = nodes[0].client(socket_timeout=5)
        try:
            redis_version = str(probe.info("server")["redis_version"])
        finally:
            probe.close()
        extra = "".join(" " + shlex.quote(a) for a in argv)
        print(f"reproduce: bash scripts/bench.sh idle{extra}")
        print(f"       or: .venv/bin/python benchmarks/bench_idle.py{extra}")
        print(f"machine: {platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}, celery {version('celery')}, kombu {version('kombu')}, redis-py "
              f"{version('redis')}, hiredis {version('hiredis')}, redis-server {redis_version}")
        print(f"tools: singleton-tasks {version('singleton-tasks')}, celery-redbeat {version('celery-redbeat')}, "
              f"single-beat {version('single-beat')}")
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

        def role(subject: Subject, leader: bool) -> tuple[Replica, Figures]:
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
        kill_groups()
        for monitor in monitors.values():
            monitor.close()
        relays.close()
        for node in nodes:
            node.cleanup()
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    left = [f"{r.name} (pids {group_members(r.pid)})" for r in replicas
            if r.popen is not None and group_members(r.pid)]
    left += [f"redis-server {n.port}" for n in nodes if n.running]
    if left:
        raise BenchmarkError(f"still running after the run: {left}")
    print(f"- total time {time.monotonic() - started:.1f} s; every redis-server and beat process stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
