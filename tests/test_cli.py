"""``celery singleton ...`` through the real ``celery`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from procs import APPS
from singleton_tasks import Lease, open_backend
from singleton_tasks.backends import parse_urls


def celery(nodes_urls: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER=nodes_urls[0],
               SINGLETON_TEST_NODES=",".join(nodes_urls), SINGLETON_TEST_LOG=nodes_urls[0])
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "singleton", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_status_shows_the_holder(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    idle = celery(nodes.urls, "status")
    assert idle.returncode == 0, idle.stderr
    assert json.loads(idle.stdout) == {"lease": "singleton:{beat:beat}:lease", "holder": None}
    lease = Lease("beat:beat", nodes.urls, ttl=30)
    assert lease.acquire(blocking=False)
    held = json.loads(celery(nodes.urls, "status").stdout)["holder"]
    assert held["pid"] == os.getpid() and held["token"] == lease.token


def test_check_reaches_every_node_and_fails_without_a_majority(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    ok = celery(nodes.urls, "check")
    assert ok.returncode == 0 and ok.stdout.count("ok    ") == 3, ok.stdout + ok.stderr
    nodes[0].kill()
    nodes[1].kill()
    down = celery(nodes.urls, "check")
    assert down.returncode != 0 and down.stdout.count("FAIL  ") == 2
    assert "no majority" in down.stderr


def store_of(kind: str, redis_nodes_factory, etcd_cluster_factory) -> tuple[str, Any]:
    """The SINGLETON_TEST_NODES value of a fresh store, and something whose ``kill()`` stops it."""
    if kind == "redis":
        nodes = redis_nodes_factory(1)
        return nodes.urls[0], nodes[0]
    cluster = etcd_cluster_factory(1)
    return cluster.etcd_url, cluster[0]


def singleton_cli(store: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER="memory://", SINGLETON_TEST_NODES=store,
               SINGLETON_TEST_LOG="redis://127.0.0.1:1/0")
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "singleton", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_release_takes_a_stuck_lease_away_after_confirmation(kind, redis_nodes_factory, etcd_cluster_factory) -> None:
    store, _ = store_of(kind, redis_nodes_factory, etcd_cluster_factory)
    backend = open_backend(parse_urls("singleton_backend_url", store))
    stuck, standby = backend.lease("beat:beat", 30), backend.lease("beat:beat", 30)
    assert stuck.acquire(blocking=False)
    woken = threading.Event()
    stop = standby.on_release(woken.set)
    try:
        declined = singleton_cli(store, "release", "beat:beat", stdin="n\n")
        assert declined.returncode != 0 and "Release it?" in declined.stdout and stuck.renew(), "asked, and kept"
        time.sleep(0.2)  # the standby's listener subscribes (not the point here)
        done = singleton_cli(store, "release", "beat:beat", "--yes")
        assert done.returncode == 0 and f"pid {os.getpid()}" in done.stdout, done.stdout + done.stderr
        assert woken.wait(5), "the standby was told at once"
        assert not stuck.renew() and not stuck.held, "the holder lost it at its next renewal"
        assert standby.acquire(blocking=False), "and the standby takes it"
        assert "not held" in singleton_cli(store, "release", "task:nobody", "--yes").stdout
    finally:
        stop()
        backend.close()


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_health_exit_codes_for_probes(kind, redis_nodes_factory, etcd_cluster_factory) -> None:
    from singleton_tasks.cli import HEALTHY, NOT_LEADER, STORE_UNREACHABLE

    store, server = store_of(kind, redis_nodes_factory, etcd_cluster_factory)
    assert singleton_cli(store, "health").returncode == HEALTHY
    assert singleton_cli(store, "health", "--leader").returncode == NOT_LEADER, "nobody leads"
    backend = open_backend(parse_urls("singleton_backend_url", store))
    lease = backend.lease("beat:beat", 30)
    assert lease.acquire(blocking=False)
    leading = singleton_cli(store, "health", "--leader")
    assert leading.returncode == HEALTHY and "this host leads" in leading.stdout, "a beat on this host leads"
    lease.release()
    backend.close()
    server.kill()
    down = singleton_cli(store, "health")
    assert down.returncode == STORE_UNREACHABLE and "cannot be read" in down.stderr and "Traceback" not in down.stderr
