"""Singleton tasks across real ``celery worker`` processes on the prefork, threads and solo pools,
with the lease on 3 Redis nodes and on a 3-member etcd cluster (the broker stays on Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from procs import APPS, is_dead, wait_for
from singleton_tasks import open_backend
from singleton_tasks.backends import parse_urls

CELERY = [sys.executable, "-m", "celery", "-A", "workapp"]
POOLS = {"w1": ["-P", "prefork", "-c", "1"], "w2": ["-P", "threads", "-c", "2"],
         "w3": ["-P", "solo"], "w4": ["-P", "prefork", "-c", "1"]}
TASK_TTL = 2.0
#: How long after its TTL a dead holder's lease may still be seen: Redis expires keys on access
#: (about at once); etcd's lessor checks every 500 ms and rounds the TTL up to whole seconds.
EXPIRY_SLACK = {"redis": 0.5, "etcd": 1.0}


@pytest.fixture(params=["redis", "etcd"])
def cluster(request, redis_nodes_factory, etcd_cluster_factory, tmp_path):
    nodes = redis_nodes_factory(3)
    store = ",".join(nodes.urls) if request.param == "redis" else etcd_cluster_factory(3).etcd_url
    backend = open_backend(parse_urls("singleton_backend_url", store), timeout=1.0)
    backend.kind = request.param  # type: ignore[attr-defined]
    env = dict(
        os.environ,
        PYTHONPATH=str(APPS),
        SINGLETON_TEST_BROKER=nodes[0].url[:-1] + "1",
        SINGLETON_TEST_NODES=store,
        SINGLETON_TEST_LOG=nodes[0].url[:-1] + "2",
        SINGLETON_TEST_TASK_TTL=str(TASK_TTL),
    )
    workers: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    for name, pool in POOLS.items():
        logs[name] = tmp_path / f"{name}.log"
        workers[name] = subprocess.Popen(
            [*CELERY, "worker", *pool, "-n", f"{name}@%h", "-Q", f"celery,{name}", "-l", "info", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env=env, stdout=logs[name].open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        for name in POOLS:
            wait_for(lambda: b" ready." in logs[name].read_bytes(), 60, f"worker {name} ready")
        producer = Celery("producer", broker=env["SINGLETON_TEST_BROKER"], set_as_current=False)

        def send(task: str, *args, queue: str = "celery", **options) -> None:
            producer.send_task(task, args, queue=queue, **options)

        send.revoke = producer.control.revoke  # type: ignore[attr-defined]
        yield backend, workers, redis.Redis.from_url(env["SINGLETON_TEST_LOG"]), send
    except BaseException:
        for name, path in logs.items():
            print(f"--- {name} log tail ---\n{path.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for proc in workers.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        backend.close()




def test_one_body_at_a_time_across_four_workers_and_three_pools(cluster) -> None:
    backend, workers, log, send = cluster
    for name in POOLS:
        send("workapp.whoami", POOLS[name][1], name, queue=name)
    pools = wait_for(lambda: len(log.lrange("pools", 0, -1)) == 4 and log.lrange("pools", 0, -1), 30, "whoami")
    assert sorted(p.split(b"|")[0] for p in pools) == [b"prefork", b"prefork", b"solo", b"threads"]

    runs = 8
    for _ in range(runs):
        send("workapp.work", "same", 0.3)
    wait_for(lambda: log.llen("finished") == runs, 90, "all runs finished")
    started = [row.split(b"|") for row in log.lrange("started", 0, -1)]
    finished = [row.split(b"|") for row in log.lrange("finished", 0, -1)]
    assert len(started) == runs
    spans = sorted(zip((float(s[2]) for s in started), (float(f[2]) for f in finished)))
    for (start_a, end_a), (start_b, _) in zip(spans, spans[1:]):
        assert start_b >= end_a, f"two bodies overlapped: one ran until {end_a}, the next began at {start_b}"
    tokens = [int(s[3]) for s in started]
    assert tokens == sorted(tokens) and len(set(tokens)) == runs, "each run had its own, larger token"
    assert int(log.get("retries") or 0) > 0, "the workers really did contend: busy runs were retried"


def test_a_sigkilled_worker_lease_expires_within_its_ttl(cluster) -> None:
    backend, workers, log, send = cluster
    send("workapp.work", "long", 60, queue="w3")
    wait_for(lambda: log.llen("started") == 1, 30, "long task started")
    lease = backend.lease("task:workapp.work:long", TASK_TTL)
    holder = lease.holder()
    assert holder is not None and holder["pid"] == workers["w3"].pid, "the solo worker holds the lease"
    os.killpg(workers["w3"].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    workers["w3"].wait(10)
    slack = EXPIRY_SLACK[backend.kind]
    wait_for(lambda: lease.holder() is None, TASK_TTL + slack + 0.5, "lease expired after the SIGKILL")
    freed_after = time.monotonic() - killed_at
    assert freed_after <= TASK_TTL + slack, f"lease held {freed_after:.2f}s after the worker died"
    send("workapp.work", "long", 0.1)
    wait_for(lambda: log.llen("finished") == 1, 30, "another worker ran the job")


def test_revoke_terminate_releases_the_lease_before_the_pool_process_ends(cluster) -> None:
    backend, workers, log, send = cluster
    task_id = "hold-1"
    send("workapp.hold", 60, queue="w1", task_id=task_id)
    row = wait_for(lambda: log.lrange("holding", 0, -1), 30, "the long task started")
    child_pid, token = (int(x) for x in row[0].split(b"|"))
    lease = backend.lease("task:workapp.hold", 30)
    holder = lease.holder()
    assert holder is not None and holder["pid"] == child_pid != workers["w1"].pid, "a pool process holds it"
    assert holder["ttl"] > 20, "its TTL is 30 s: expiry cannot explain a release within seconds"
    revoked_at = time.monotonic()
    send.revoke(task_id, terminate=True)
    wait_for(lambda: lease.holder() is None, 10, "lease released after revoke(terminate=True)")
    released_after = time.monotonic() - revoked_at
    wait_for(lambda: is_dead(child_pid), 10, "the pool process ended")
    assert log.llen("held") == 0, "the body was interrupted, it did not finish"
    assert released_after < 10, f"released {released_after:.2f}s after the revoke"
    send("workapp.hold", 0.1, queue="w1")
    wait_for(lambda: log.llen("held") == 1, 30, "the worker runs the task again, in a new pool process")
    assert int(log.lrange("holding", -1, -1)[0].split(b"|")[1]) > token
