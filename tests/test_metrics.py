"""Prometheus metrics served by real ``celery beat`` and ``celery worker`` processes (real Redis)."""

from __future__ import annotations

import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

from procs import APPS, Procs, wait_for
from singleton_tasks import Lease, settings_for
from singleton_tasks.errors import ConfigurationError
from singleton_tasks.testing import free_port

import pytest
import redis
from celery import Celery


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return None


def value(text: str | None, metric: str, **labels: str) -> float | None:
    """The sample of ``metric`` with exactly these labels, or None."""
    if text is None:
        return None
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as prometheus-client prints them
    found = re.search(rf"^{re.escape(metric)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found[1]) if found else None


def env_for(redis_node, port: int) -> dict[str, str]:
    base = f"redis://127.0.0.1:{redis_node.port}"
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
            "SINGLETON_TEST_BROKER": f"{base}/1", "SINGLETON_TEST_NODES": f"{base}/0",
            "SINGLETON_TEST_LOG": f"{base}/2", "SINGLETON_TEST_METRICS_PORT": str(port)}


def test_a_beat_replica_and_a_worker_serve_their_metrics(redis_node, tmp_path: Path) -> None:
    beat_port, worker_port = free_port(), free_port()
    beats, workers = Procs(tmp_path / "beat", env_for(redis_node, beat_port)), Procs(tmp_path / "worker",
                                                                                     env_for(redis_node, worker_port))
    blocker = Lease("beat:beat", f"redis://127.0.0.1:{redis_node.port}/0", ttl=30)
    assert blocker.acquire(blocking=False), "the test holds the beat lease: the replica stands by"
    try:
        beat = beats.beat("beat")
        text = wait_for(lambda: scrape(beat_port), 60, "the beat replica's metrics endpoint")
        assert value(text, "singleton_is_leader", lease="beat:beat") in (None, 0.0), "a standby does not lead"
        blocker.release()
        leading = wait_for(lambda: (t := scrape(beat_port)) and value(t, "singleton_dispatches_total",
                                                                      lease="beat:beat") and t, 30, "dispatches")
        assert value(leading, "singleton_is_leader", lease="beat:beat") == 1.0
        assert value(leading, "singleton_transitions_total", lease="beat:beat", kind="elected") == 1.0
        renewed = wait_for(lambda: (t := scrape(beat_port)) and value(t, "singleton_renew_seconds_count",
                                                                      lease="beat:beat") and t, 10, "a renewal")
        assert 0 < value(renewed, "singleton_lease_time_left_seconds", lease="beat:beat") <= 2.0
        assert value(renewed, "singleton_renewals_total", lease="beat:beat", result="ok") >= 1

        # A worker: a run that finds its lease held is skipped (beatapp.work retries), counted.
        job = Lease("task:beatapp.work:busy", f"redis://127.0.0.1:{redis_node.port}/0", ttl=30)
        assert job.acquire(blocking=False)
        workers.worker("worker")
        wait_for(lambda: scrape(worker_port), 60, "the worker's metrics endpoint")
        Celery("producer", broker=f"redis://127.0.0.1:{redis_node.port}/1",
               set_as_current=False).send_task("beatapp.work", ("busy",), {"seconds": 0.1})
        wait_for(lambda: value(scrape(worker_port), "singleton_skips_total", lease="task:beatapp.work:busy",
                               reason="busy"), 30, "the busy run counted by the worker")
        job.release()
    finally:
        beats.close()
        workers.close()


def test_a_prefork_worker_serves_the_events_of_its_pool_children(redis_node, tmp_path: Path) -> None:
    # Task events happen in the pool's children: the main process's endpoint must count them.
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**env_for(redis_node, port), "TMPDIR": str(temp), "SINGLETON_TEST_TASK_TTL": "5"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    workers = Procs(tmp_path / "worker", env)
    base = f"redis://127.0.0.1:{redis_node.port}"
    record = redis.Redis.from_url(f"{base}/2")
    try:
        worker = workers.start("prefork", [sys.executable, "-m", "celery", "-A", "workapp", "worker", "-P", "prefork",
                                           "-c", "2", "-n", "prefork@localhost", "-l", "info", "--without-gossip",
                                           "--without-mingle", "--without-heartbeat"])
        wait_for(lambda: worker.log_has(r" ready\.") or None, 60, "the prefork worker ready")
        assert value(scrape(port), "singleton_skips_total", lease="task:workapp.work:same", reason="busy") is None
        [made] = [p for p in temp.iterdir() if p.name.startswith("singleton-metrics-")]
        producer = Celery("producer", broker=f"{base}/1", set_as_current=False)
        for _ in range(2):  # two at once on one lease, one per child: the second is busy (and retried)
            producer.send_task("workapp.work", ("same",), {"seconds": 1.5})
        skipped = wait_for(lambda: value(scrape(port), "singleton_skips_total", lease="task:workapp.work:same",
                                         reason="busy"), 30, "the busy skips counted by the worker")
        assert skipped >= 1
        wait_for(lambda: record.llen("finished") == 2 or None, 30, "both runs finished")
        pids = {line.split(b"|")[1] for line in record.lrange("started", 0, -1)}
        assert str(worker.pid).encode() not in pids, "the runs were in the pool's children"
        retries = int(record.get("retries") or 0)
        assert retries >= 1
        final = value(scrape(port), "singleton_skips_total", lease="task:workapp.work:same", reason="busy")
        assert final is not None and final >= retries, "every busy attempt counted, from the child that saw it"
        # A warm shutdown removes the worker's multiprocess directory.
        worker.send(signal.SIGTERM)
        worker.wait(30)
        assert not made.exists(), "the multiprocess directory outlives its worker"
    finally:
        workers.close()
        record.close()


def test_a_metrics_port_needs_a_port_number() -> None:
    app = Celery("bad-metrics", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:6399/0", singleton_metrics_port="9100")
    with pytest.raises(ConfigurationError, match="singleton_metrics_port"):
        settings_for(app)
