"""``celery singleton ...`` through the real ``celery`` command."""

from __future__ import annotations

import json
import os
import signal
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


def test_status_shows_every_lease_each_node_s_answer_and_the_schedule(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    idle = celery(nodes.urls, "status", "--json")
    assert idle.returncode == 0, idle.stderr
    report = json.loads(idle.stdout)
    assert report["nodes"] == [f"redis://127.0.0.1:{n.port}/0" for n in nodes] and report["prefix"] == "singleton:"
    [beat_idle] = report["leases"]
    assert beat_idle["name"] == "beat:beat" and beat_idle["holder"] is None, "the beat lease is shown, even free"
    assert [e["name"] for e in report["schedule"]["entries"]] == ["tick"], report["schedule"]

    beat, task = Lease("beat:beat", nodes.urls, ttl=30), Lease("task:beatapp.work:job-1", nodes.urls, ttl=30)
    assert beat.acquire(blocking=False) and task.acquire(blocking=False)
    assert beat.token is not None
    backend = open_backend(parse_urls("singleton_backend_url", nodes.urls))
    records = backend.records("beat")
    last = "2026-01-01T00:00:00+00:00"
    records.write(beat.token, {"tick": {"last_run_at": last, "total_run_count": 7, "pending": None}})
    records.write(beat.token, {"gone": {"last_run_at": last, "total_run_count": 1, "pending": None}})
    backend.close()
    nodes[2].kill()  # one node does not answer: shown, the majority still decides

    report = json.loads(celery(nodes.urls, "status", "--json").stdout)
    leases = {lease["name"]: lease for lease in report["leases"]}
    assert sorted(leases) == ["beat:beat", "task:beatapp.work:job-1"], "every lease under the prefix"
    for lease in (beat, task):
        shown = leases[lease.name]
        assert shown["holder"]["pid"] == os.getpid() and shown["holder"]["token"] == lease.token
        assert 0 < shown["holder"]["ttl"] <= 30
        answers = list(shown["nodes"].values())
        assert [a["owner"] for a in answers[:2]] == [shown["holder"]["id"]] * 2 and answers[2]["owner"] is None
        assert "Connection refused" in answers[2]["error"], answers[2]
    entries = {entry["name"]: entry for entry in report["schedule"]["entries"]}
    assert entries["tick"]["last_run_at"] == last and entries["tick"]["token"] == beat.token
    assert entries["tick"]["next_due"] == "2026-01-01T00:00:01+00:00", "tick runs every second"
    assert entries["gone"]["last_run_at"] == last and entries["gone"]["next_due"] is None, "not in beat_schedule"

    table = celery(nodes.urls, "status")
    assert table.returncode == 0, table.stderr
    assert "2 of 3 hold it, 1 did not answer" in table.stdout and "task:beatapp.work:job-1" in table.stdout
    assert f"pid {os.getpid()} id " in table.stdout and "Connection refused" in table.stdout, table.stdout

    one = json.loads(celery(nodes.urls, "status", "--json", "--name", task.name).stdout)
    assert [lease["name"] for lease in one["leases"]] == [task.name] and "schedule" not in one
    beat.release()
    task.release()


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


def singleton_cli(store: str, *args: str, stdin: str | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER="memory://", SINGLETON_TEST_NODES=store,
               SINGLETON_TEST_LOG="redis://127.0.0.1:1/0", **env_vars)
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


def test_health_max_age_fails_a_paused_leader_and_passes_it_resumed(redis_node, tmp_path) -> None:
    from singleton_tasks.cli import HEALTHY, NOT_LEADER, STALE

    from procs import Procs, wait_for

    store = redis_node.url
    ttl = 6.0  # renewed every 2 s: a leader renewed within 3.5 s is healthy, its key outlives that by 2.5 s
    procs = Procs(tmp_path / "procs", dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER=store,
                                            SINGLETON_TEST_NODES=store, SINGLETON_TEST_LOG=store,
                                            SINGLETON_TEST_TTL=str(ttl)))

    def probe() -> subprocess.CompletedProcess[str]:
        # The probe reads the replicas' own settings (their TTL), as a probe in their pod would.
        return singleton_cli(store, "health", "--leader", "--max-age", "3.5", SINGLETON_TEST_TTL=str(ttl))

    try:
        replica = procs.beat("beat")
        ok = wait_for(lambda: (r := probe()).returncode == HEALTHY and r, 30, "the replica to lead")
        assert "this host leads" in ok.stdout and f"pid {replica.pid}" in ok.stdout, ok.stdout
        replica.send(signal.SIGSTOP)
        wait_for(lambda: replica.state() == "T", 5, "the replica to be stopped")
        stale = wait_for(lambda: (r := probe()).returncode == STALE and r, ttl + 5,
                         "the paused leader's probe to fail")
        assert "last renewed it" in stale.stderr and f"pid {replica.pid}" in stale.stderr, stale.stderr
        assert replica.state() == "T", "still paused: the probe saw a leader that stopped renewing"
        replica.send(signal.SIGCONT)
        resumed = wait_for(lambda: (r := probe()).returncode == HEALTHY and r, 3 * ttl, "the resumed replica to lead")
        assert f"pid {replica.pid}" in resumed.stdout
        replica.send(signal.SIGTERM)
        replica.wait(15)
        assert probe().returncode == NOT_LEADER, "released at exit: nobody leads"
    finally:
        procs.close()


def test_health_max_age_without_leader_waits_for_a_holder(redis_node) -> None:
    from singleton_tasks.cli import HEALTHY, STALE

    store = redis_node.url
    started = time.monotonic()
    nobody = singleton_cli(store, "health", "--max-age", "1")
    assert nobody.returncode == STALE and "no replica is leading" in nobody.stderr, nobody.stderr
    assert time.monotonic() - started >= 1, "it waited the whole --max-age for a holder"
    lease = Lease("beat:beat", store, ttl=30)
    assert lease.acquire(blocking=False)
    held = singleton_cli(store, "health", "--max-age", "1")
    assert held.returncode == HEALTHY and f"pid {os.getpid()}" in held.stdout, held.stdout + held.stderr
    lease.release()
