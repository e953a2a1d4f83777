"""Shared pieces of the benchmarks that run real beat replicas (``bench_idle``, ``bench_failover``,
``bench_scale``; ``bench_backends`` takes its tables): counting relays, MONITOR, process groups killed
at the end, CPU from /proc, the replicas' commands and logs, a run's start and end, Markdown tables.

Every process a benchmark starts goes through ``spawn()``: its own session (so its process group id
is its pid), the kernel's parent-death signal (``die_with_parent``), and a place in the list that
``kill_groups()`` SIGCONTs and SIGKILLs by group id at the end, at interpreter exit (``atexit``) and
on SIGTERM (``install_sigterm()``). Nothing is ever killed by name. Every address is loopback.
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
from typing import Callable, Iterable, Protocol, Sequence, TypeVar

import redis

from singleton_tasks.testing import RedisNode, die_with_parent

HERE = Path(__file__).resolve().parent
KILL_TIMEOUT = 10.0  # s to wait for a killed process group's leader

#: single-beat's wrapped command runs through this, so it dies with its wrapper (the kernel's
#: parent-death signal) even if nothing else is left to kill it; exec replaces it at once.
DIE_WITH_PARENT_EXEC = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                        "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")

OURS, REDBEAT, SINGLEBEAT = "singleton-tasks", "RedBeat", "single-beat"

#: The log line of a replica that takes the lead (single-beat's leader is the one running beat).
LEAD_PATTERNS = {OURS: re.compile(r"beat: leading with token"), REDBEAT: re.compile(r"beat: Acquired lock")}


@dataclass(frozen=True)
class HaSubject:
    """One highly available beat under test (``bench_idle``, ``bench_failover``): a tool and its settings."""

    key: str
    tool: str  # OURS, REDBEAT or SINGLEBEAT
    label: str
    env: dict[str, str]  # the app's settings (``IDLE_*``, ``FAILOVER_*``) and single-beat's
    attempt: frozenset[str]  # the store commands of a lease attempt: a standby has tried once
    reference: bool = False  # ours at its defaults: what the ratios divide


class BenchmarkError(RuntimeError):
    """A wait ran out or a subject misbehaved (two leaders, a crash), so the figures would mean nothing."""


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
        #: Round trips: a client write after the server's last reply (or the first one) on a
        #: connection starts one, so a pipeline or a script is one, a reply in several reads too.
        self.round_trips = 0
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
        waiting = [False]  # this connection has sent a request that the server has not answered yet
        await asyncio.gather(self._pump(client_r, server_w, counter, waiting),
                             self._pump(server_r, client_w, None, waiting))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    counter: RespCounter | None, waiting: list[bool]) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if counter is None:
                    waiting[0] = False
                elif not waiting[0]:
                    waiting[0] = True
                    with self._lock:
                        self.round_trips += 1
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
    """SIGKILL every process group started here (resumed first), by id; wait for each leader.

    A leader already reaped is skipped: its pid may since name another process (its own
    children die with it: ``die_with_parent``)."""
    for popen in _groups:
        if popen.returncode is None:
            _kill_group(popen)
    for popen in _groups:
        try:
            popen.wait(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


def stop_group(popen: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL one process group started by ``spawn`` (resumed first) unless its leader was reaped; wait."""
    if popen is None:
        return
    if popen.returncode is None:
        _kill_group(popen)
        try:
            popen.wait(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return
    if popen in _groups:
        _groups.remove(popen)


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGCONT, then SIGKILL, the process group of ``popen`` (its leader not yet reaped)."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


atexit.register(kill_groups)


class Spawned:
    """A process started by ``spawn`` and its log file: a base for the benchmarks' dataclasses,
    which give it a ``popen`` field and a ``log_path``."""

    popen: subprocess.Popen[bytes] | None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, start: int = 0) -> str:
        """The log from byte ``start`` on ("" while there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


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


def celery_children(pid: int) -> list[int]:
    """The ``celery`` processes below ``pid`` (single-beat's wrapped beat, while it leads)."""
    return [p for p in tree(pid)[1:] if "celery" in " ".join(cmdline(p))]


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


def sample_tree(cpu: dict[int, ProcCpu], pid: int, start: bool, what: Callable[[int], str]) -> None:
    """Read the CPU counters of ``pid`` and its descendants into ``cpu`` (``start``: the window's
    baseline); a process first seen is named ``what(pid)``."""
    for p in tree(pid):
        entry = cpu.get(p)
        if entry is None:
            entry = cpu[p] = ProcCpu(p, what(p), seen_from_start=start)
        ticks, threads = stat_ticks(p), thread_samples(p)
        if ticks is None:
            continue
        if start:
            entry.first_ticks, entry.first = ticks, threads
        entry.last_ticks = ticks
        entry.last.update(threads)


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


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks and atexit: every process is killed



def install_sigterm() -> None:
    """Make SIGTERM run the finally blocks and atexit handlers, so every process started is killed."""
    signal.signal(signal.SIGTERM, _terminate)


def begin(bench: str) -> tuple[float, Path]:
    """The start of a run: SIGTERM made to clean up (``install_sigterm``); (its monotonic start time,
    a new temporary directory for its logs)."""
    install_sigterm()
    return time.monotonic(), Path(tempfile.mkdtemp(prefix=f"bench-{bench}-"))


def all_stopped(left: list[str], started: float, what: str) -> None:
    """The run's last check and line: ``BenchmarkError`` naming ``left`` (processes still running
    after ``finish``), else the total time since ``started`` and that every one of ``what`` stopped."""
    if left:
        raise BenchmarkError(f"still running after the run: {left}")
    print(f"- total time {time.monotonic() - started:.1f} s; every {what} process stopped")


def finish(tmp: Path, keep_logs: bool, nodes: Iterable[RedisNode], *close: Callable[[], None]) -> None:
    """The end of a run, whatever happened: every process group killed, ``close`` called in turn
    (monitors, relays), every redis-server in ``nodes`` removed, ``tmp`` deleted (or kept and named)."""
    kill_groups()
    for call in close:
        call()
    for node in nodes:
        node.cleanup()
    if keep_logs:
        print(f"logs kept in {tmp}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def spawn(args: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own (group id = pid), output to ``log_path``; killed at the end."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )
    _groups.append(popen)
    return popen


def ha_beat(tool: str, app: str, schedule: Path, store_url: str, prefix: str, identifier: str,
            ) -> tuple[list[str], dict[str, str]]:
    """The command and the environment (``bench_env()`` plus the store) of one ``celery -A app beat``
    replica of ``tool``: ours (``-S singleton``) and RedBeat read the store from ``{prefix}STORE``;
    single-beat wraps a beat on Celery's default scheduler and holds its lock ``identifier`` there."""
    beat = [sys.executable, "-m", "celery", "-A", app, "beat", "-l", "info", "-s", str(schedule)]
    env = bench_env()
    if tool == SINGLEBEAT:
        env["SINGLE_BEAT_REDIS_SERVER"] = store_url
        env["SINGLE_BEAT_IDENTIFIER"] = identifier
        single_beat = Path(sys.executable).with_name("single-beat")
        return [str(single_beat), sys.executable, "-c", DIE_WITH_PARENT_EXEC, *beat[1:]], env
    env[f"{prefix}STORE"] = store_url
    return [*beat, "-S", "singleton" if tool == OURS else "redbeat.RedBeatScheduler"], env


def bench_env(prefixes: Sequence[str] = ("IDLE_", "SCALE_", "FAILOVER_", "SINGLE_BEAT_", "CELERY_")) -> dict[str, str]:
    """This process's environment without the benchmark apps' settings, ``benchmarks/`` on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


K = TypeVar("K", bound=Keyed)


def choose(parser: argparse.ArgumentParser, only: str | None, items: Sequence[K], kind: str) -> list[K]:
    """The ``items`` whose ``key`` is named in ``--only`` (comma-separated), all of them without it."""
    if not only:
        return list(items)
    keys = [item.key for item in items]
    wanted = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        parser.error(f"unknown {kind}(s) {unknown}; choose from {keys}")
    return [item for item in items if item.key in wanted]


def print_preamble(bench: str, argv: Sequence[str], redis_version: str) -> None:
    """How to run this again, the machine and the tools' versions."""
    extra = "".join(" " + shlex.quote(a) for a in argv)
    print(f"reproduce: bash scripts/bench.sh {bench}{extra}")
    print(f"       or: .venv/bin/python benchmarks/bench_{bench}.py{extra}")
    print(machine_line(redis_version))
    print(tools_line())


def redis_version(port: int) -> str:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def machine_line(redis_version: str) -> str:
    return (f"machine: {platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs; "
            f"python {sys.version.split()[0]}, celery {version('celery')}, kombu {version('kombu')}, redis-py "
            f"{version('redis')}, hiredis {version('hiredis')}, redis-server {redis_version}")


def tools_line() -> str:
    return (f"tools: singleton-tasks {version('singleton-tasks')}, celery-redbeat {version('celery-redbeat')}, "
            f"single-beat {version('single-beat')}")


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T stopped, Z zombie...), None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()[0]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]
