"""``celery singleton ...`` through the real ``celery`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from procs import APPS
from singleton_tasks import Lease


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
