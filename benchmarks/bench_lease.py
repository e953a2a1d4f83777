"""Latency of ``singleton_tasks.Lease`` against peer Redis locks, in one run, side by side.

Measured, per implementation and node count N (real loopback redis-server processes):

* acquire: one non-blocking acquire of a free lock (the lock is released between samples);
* renew:   resetting the lock's expiry to the full ttl while it is held;
* release: giving the held lock up.

Each sample is one call, timed with ``time.perf_counter_ns``. Implementations run in
shuffled round-robin batches so that machine noise falls on all of them alike. Separately,
``Lease.held`` (a local check, no I/O) is timed with ``timeit``.

Peers: redis-py ``redis.lock.Lock`` (N=1; renew = ``reacquire()``), pottery ``Redlock``
(N=1, 3, 5; its per-call thread pool is measured as is) and python-redis-lock
``redis_lock.Lock`` (N=1). Every client, ours included, uses a 1 s socket timeout.

Run: ``bash scripts/bench.sh`` (``--quick`` for a short run, ``--iterations N``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import random
import shlex
import statistics
import sys
import time
import timeit
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import redis
import redis_lock  # type: ignore[import-untyped]
from pottery import Redlock

from interleave import run_interleaved
from singleton_tasks import Lease
from singleton_tasks.backends.redis.nodes import NodeSet
from singleton_tasks.testing import RedisNode, RedisNodes

TTL = 10  # seconds, for every implementation
SOCKET_TIMEOUT = 1.0  # what Lease picks for itself at ttl=10 (op_timeout)
NODE_COUNTS = (1, 3, 5)
OPERATIONS = ("acquire", "renew", "release")
OURS = "singleton-tasks"
REDIS_PY = "redis-py Lock"
POTTERY = "pottery Redlock"
PY_REDIS_LOCK = "python-redis-lock"
SEQUENTIAL = "ours, one node at a time"
HELD_TARGET_NS = 1000.0
RENEW_SCALING_TARGET = 2.0

Operation = Callable[[], bool]


class BenchmarkError(RuntimeError):
    """An operation did not succeed, so its timing would mean nothing."""


@dataclass
class Subject:
    """One implementation on one node set. Each operation returns True when it succeeded;
    an operation the implementation lacks is None and is reported as n/a."""

    impl: str
    n: int
    acquire: Operation
    renew: Operation | None
    release: Operation
    close: Callable[[], None]
    samples: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    cpu: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})  # client CPU ns


@dataclass(frozen=True)
class Stats:
    median_us: float
    p99_us: float


# -- the implementations -----------------------------------------------------------------


def _peer_client(node: RedisNode) -> redis.Redis:
    """A client configured like the ones Lease builds from a URL (same socket timeouts)."""
    return redis.Redis(
        host="127.0.0.1", port=node.port, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )


def ours(nodes: RedisNodes, name: str) -> Subject:
    """singleton_tasks.Lease: two rounds to acquire (grant, then fencing token), one to renew or release."""
    lease = Lease(name, nodes.urls, ttl=TTL)

    def release() -> bool:
        lease.release()
        return not lease.held

    return Subject(OURS, len(nodes), lambda: lease.acquire(blocking=False), lease.renew, release, lease.close)


class OneNodeAtATime(NodeSet):
    """The reference for the fan-out: each node's round trip waits for the previous one."""

    def run_script(self, script: Any, keys: Sequence[str], args: Sequence[Any],
                   only: Sequence[int] | None = None) -> list[Any]:
        indexes = range(len(self)) if only is None else only
        return [super(OneNodeAtATime, self).run_script(script, keys, args, only=[i])[0] for i in indexes]


def ours_sequential(nodes: RedisNodes, name: str) -> Subject:
    """The same Lease over a NodeSet that visits the nodes one after another (N > 1 only)."""
    lease = Lease(name, OneNodeAtATime(nodes.urls, SOCKET_TIMEOUT), ttl=TTL)

    def release() -> bool:
        lease.release()
        return not lease.held

    return Subject(SEQUENTIAL, len(nodes), lambda: lease.acquire(blocking=False), lease.renew, release,
                   lease.nodes.close)


def redis_py(nodes: RedisNodes, name: str) -> Subject:
    """redis-py's single-node Lock; renew is reacquire() (expiry reset to the full timeout)."""
    client = _peer_client(nodes[0])
    lock = client.lock(name, timeout=TTL)

    def release() -> bool:
        lock.release()  # raises LockNotOwnedError when not ours
        return True

    return Subject(REDIS_PY, 1, lambda: bool(lock.acquire(blocking=False)), lock.reacquire, release, client.close)


def pottery(nodes: RedisNodes, name: str) -> Subject:
    """pottery's Redlock over all N nodes, fanned out by its own thread pool on every call."""
    clients = [_peer_client(node) for node in nodes]
    # num_extensions defaults to 3 and the benchmark renews on every cycle.
    lock = Redlock(key=name, masters=clients, auto_release_time=TTL, num_extensions=sys.maxsize)

    def renew() -> bool:
        lock.extend()  # raises ExtendUnlockedLock when no quorum extended
        return True

    def release() -> bool:
        lock.release()  # raises ReleaseUnlockedLock when no quorum released
        return True

    def close() -> None:
        for client in clients:
            client.close()

    return Subject(POTTERY, len(nodes), lambda: lock.acquire(blocking=False), renew, release, close)


def python_redis_lock(nodes: RedisNodes, name: str) -> Subject:
    """python-redis-lock's single-node Lock (its acquire reads the key before setting it)."""
    client = _peer_client(nodes[0])
    lock = redis_lock.Lock(client, name, expire=TTL)

    def acquire() -> bool:
        return bool(lock.acquire(blocking=False))

    def renew() -> bool:
        lock.extend()  # raises NotAcquired when not ours
        return True

    def release() -> bool:
        lock.release()  # raises NotAcquired when not ours
        return True

    return Subject(PY_REDIS_LOCK, 1, acquire, renew, release, client.close)


# -- measuring ---------------------------------------------------------------------------


def run_cycle(subject: Subject, record: bool) -> None:
    """Time one acquire, one renew (while held) and one release, each call on its own."""
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    timings: list[tuple[str, int, int]] = []
    for op_name, op in (("acquire", subject.acquire), ("renew", subject.renew), ("release", subject.release)):
        if op is None:
            continue
        cpu_start, start = cpu_clock(), clock()
        ok = op()
        elapsed, cpu = clock() - start, cpu_clock() - cpu_start
        if not ok:
            raise BenchmarkError(f"{subject.impl} N={subject.n}: {op_name} did not succeed")
        timings.append((op_name, elapsed, cpu))
    if record:
        for op_name, elapsed, cpu in timings:
            subject.samples[op_name].append(elapsed)
            subject.cpu[op_name].append(cpu)


def stats(samples_ns: Sequence[int]) -> Stats:
    """Median and nearest-rank 99th percentile, in microseconds."""
    ordered = sorted(samples_ns)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return Stats(statistics.median(ordered) / 1000.0, p99 / 1000.0)


def time_local_call(stmt: str, namespace: dict[str, Any], calls: int, repeats: int = 5) -> float:
    """Nanoseconds per evaluation of ``stmt``: the best of ``repeats`` timeit runs."""
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=repeats, number=calls)) / calls * 1e9


def time_held(lease: Lease, calls: int) -> tuple[float, float]:
    """Cost of ``lease.held`` on a held lease, and of ``time.monotonic()`` alone for scale (ns)."""
    if not lease.acquire(blocking=False):
        raise BenchmarkError("could not acquire the lease for the held check")
    try:
        held_ns = time_local_call("lease.held", {"lease": lease}, calls)
        if not lease.held:
            raise BenchmarkError("the lease stopped being held while `held` was timed")
        clock_ns = time_local_call("monotonic()", {"monotonic": time.monotonic}, calls)
    finally:
        lease.release()
    return held_ns, clock_ns


# -- reporting ---------------------------------------------------------------------------


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_header(args: argparse.Namespace, argv: Sequence[str], server: str) -> None:
    extra = "".join(" " + shlex.quote(a) for a in argv)
    print(f"reproduce: bash scripts/bench.sh{extra}")
    print(f"       or: .venv/bin/python benchmarks/bench_lease.py{extra}")
    print(
        f"python {sys.version.split()[0]}, redis-py {version('redis')}, hiredis {version('hiredis')}, "
        f"pottery {version('pottery')}, python-redis-lock {version('python-redis-lock')}, "
        f"redis-server {server}, {os.cpu_count()} CPUs"
    )
    print(
        f"ttl={TTL}s, {args.iterations} samples per operation and implementation, "
        f"{args.warmup} warm-up cycles, batches of {args.batch}, shuffled round-robin"
    )
    print()


def print_table(subjects: Sequence[Subject]) -> None:
    """One row per operation, implementation and N; ratio = peer median / our median at that N."""
    ours_at = {s.n: s for s in subjects if s.impl == OURS}
    headers = ("operation", "implementation", "N", "median µs", "p99 µs", "peer/ours")
    rows: list[tuple[str, ...]] = []
    for op in OPERATIONS:
        for n in NODE_COUNTS:
            reference = stats(ours_at[n].samples[op]).median_us
            for subject in (s for s in subjects if s.n == n):
                if not subject.samples[op]:
                    rows.append((op, subject.impl, str(n), "n/a", "n/a", "n/a"))
                    continue
                result = stats(subject.samples[op])
                ratio = "(ours)" if subject.impl == OURS else f"{result.median_us / reference:.2f}x"
                rows.append((op, subject.impl, str(n), f"{result.median_us:.1f}", f"{result.p99_us:.1f}", ratio))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = {2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    previous = ""
    for row in rows:
        if previous and row[0] != previous:
            print()
        previous = row[0]
        print(line(row))
    print()


def round_ratios(numerator: Sequence[int], denominator: Sequence[int], batch: int) -> list[float]:
    """Ratio of batch medians, round by round: every subject gets one equal-sized batch per round,
    so slices of ``batch`` samples line up in time and see the same machine load."""
    return [
        statistics.median(numerator[i : i + batch]) / statistics.median(denominator[i : i + batch])
        for i in range(0, min(len(numerator), len(denominator)), batch)
    ]


def renew_cpu_scaling(subjects: Sequence[Subject], impl: str) -> str:
    """The client's own CPU time per renew, 5 nodes over 1: the fan-out's cost, without the
    servers' scheduling (5 redis-servers share this machine's cores; in production they do not)."""
    by_n = {s.n: s.cpu["renew"] for s in subjects if s.impl == impl and s.cpu["renew"]}
    if 1 not in by_n or 5 not in by_n:
        return "n/a"
    one, five = statistics.mean(by_n[1]) / 1000, statistics.mean(by_n[5]) / 1000
    return f"{five / one:.2f}x ({five:.1f} / {one:.1f} µs of client CPU per renew)"


def sequential_scaling(subjects: Sequence[Subject]) -> str:
    """Renew on 5 nodes, one at a time, over our renew on 1 node."""
    five = next((s for s in subjects if s.impl == SEQUENTIAL and s.n == 5), None)
    one = next((s for s in subjects if s.impl == OURS and s.n == 1), None)
    if five is None or one is None or not five.samples["renew"] or not one.samples["renew"]:
        return "n/a"
    return f"{statistics.median(five.samples['renew']) / statistics.median(one.samples['renew']):.2f}x"


def steady_renew_scaling(subjects: Sequence[Subject], rounds: int) -> str:
    """Ours, renew on 5 nodes over 1 when renewals come back to back (the servers stay awake),
    in alternating runs of 10."""
    by_n = {s.n: s for s in subjects if s.impl == OURS and s.n in (1, 5)}
    samples: dict[int, list[int]] = {1: [], 5: []}
    for subject in by_n.values():
        if not subject.acquire():
            raise BenchmarkError(f"{OURS} N={subject.n}: acquire did not succeed")
    for _ in range(rounds):
        for n, subject in by_n.items():
            for _ in range(10):
                start = time.perf_counter_ns()
                if not subject.renew():  # type: ignore[misc]
                    raise BenchmarkError(f"{OURS} N={n}: renew did not succeed")
                samples[n].append(time.perf_counter_ns() - start)
    for subject in by_n.values():
        subject.release()
    one, five = statistics.median(samples[1]) / 1000, statistics.median(samples[5]) / 1000
    return f"{five / one:.2f}x ({five:.1f} / {one:.1f} µs)"


def renew_scaling(subjects: Sequence[Subject], impl: str, batch: int) -> str:
    """Median renew latency on 5 nodes over that on 1 node, then the spread of per-round ratios."""
    by_n = {s.n: s.samples["renew"] for s in subjects if s.impl == impl and s.samples["renew"]}
    if 1 not in by_n or 5 not in by_n:
        return "n/a"
    overall = statistics.median(by_n[5]) / statistics.median(by_n[1])
    per_round = round_ratios(by_n[5], by_n[1], batch)
    if len(per_round) < 4:
        return f"{overall:.2f}x"
    q1, q2, q3 = statistics.quantiles(per_round, n=4)
    return f"{overall:.2f}x (per round: median {q2:.2f}x, middle half {q1:.2f}-{q3:.2f}x)"


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about 15 s)")
    parser.add_argument("--iterations", type=int, help="samples per operation and implementation")
    parser.add_argument("--batch", type=int, default=25, help="cycles per implementation before switching")
    parser.add_argument("--seed", type=int, default=1, help="seed of the round-robin shuffle")
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 1000 if args.quick else 6000
    args.warmup = 50 if args.quick else 200
    args.held_calls = 200_000 if args.quick else 1_000_000
    if args.iterations < 1 or args.batch < 1:
        parser.error("--iterations and --batch must be positive")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with ExitStack() as stack:
        groups = {n: stack.enter_context(RedisNodes(n)) for n in NODE_COUNTS}
        probe = _peer_client(groups[1][0])
        server = str(probe.info("server")["redis_version"])
        probe.close()
        print_header(args, argv, server)

        run_id = os.urandom(4).hex()
        subjects: list[Subject] = []
        for n, nodes in groups.items():
            subjects.append(ours(nodes, f"bench-{run_id}-ours-{n}"))
            subjects.append(pottery(nodes, f"bench-{run_id}-pottery-{n}"))
            if n > 1:
                subjects.append(ours_sequential(nodes, f"bench-{run_id}-sequential-{n}"))
            if n == 1:
                subjects.append(redis_py(nodes, f"bench-{run_id}-redis-py"))
                subjects.append(python_redis_lock(nodes, f"bench-{run_id}-redis-lock"))
        for subject in subjects:
            stack.callback(subject.close)

        rng = random.Random(args.seed)
        run_interleaved(subjects, args.warmup, args.batch, rng, lambda subject: run_cycle(subject, False))
        gc.collect()
        run_interleaved(subjects, args.iterations, args.batch, rng, lambda subject: run_cycle(subject, True))
        print_table(subjects)

        print(f"renew on 5 nodes / renew on 1 node (target for ours <= {RENEW_SCALING_TARGET:.0f}x):")
        for impl in (OURS, POTTERY):
            print(f"  {impl:<24} {renew_scaling(subjects, impl, args.batch)}")
        print(f"  {SEQUENTIAL:<24} {sequential_scaling(subjects)} (the same lease without the fan-out)")
        print(f"  {OURS:<24} {steady_renew_scaling(subjects, args.iterations // 20)} back to back")
        print("client CPU per renew, 5 nodes / 1 node (the fan-out's own cost):")
        for impl in (OURS, POTTERY):
            print(f"  {impl:<24} {renew_cpu_scaling(subjects, impl)}")

        held_lease = Lease(f"bench-{run_id}-held", groups[1].urls, ttl=TTL)
        stack.callback(held_lease.close)
        held_ns, clock_ns = time_held(held_lease, args.held_calls)
        print(
            f"Lease.held: {held_ns:.0f} ns per call over {args.held_calls:,} calls, best of 5 "
            f"(target < {HELD_TARGET_NS:.0f} ns; time.monotonic() alone: {clock_ns:.0f} ns)"
        )
    print(f"\ntotal time {time.monotonic() - started:.1f} s; all redis-server processes stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
