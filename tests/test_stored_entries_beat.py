"""Entries stored at run time (``celery singleton schedule ...``) run by real ``celery beat`` replicas.

Two replicas of ``apps/beatapp.py`` and a solo worker, on Redis and on etcd. Entries are added,
edited, disabled and removed with the real CLI while beat runs; a leader is SIGKILLed in between.
The task ``beatapp.note`` records ``label|slot|beat token|time`` of every run in ``notes``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

from procs import APPS, Proc, Procs, wait_for
from singleton_tasks import open_backend
from singleton_tasks.backends import parse_urls

TTL = 2.0
START_TIMEOUT = 60.0
#: A change is announced and picked up at the leader's next wake-up (at most TTL/3); a 1 s entry then runs
#: one period later; the rest is this 2-core machine's scheduling and the CLI's own start-up.
PICKUP = 1.0 + 1.0 + 2.0  # a 3 s entry's first run: PICKUP + 2


class Beat:
    def __init__(self, store: str, log_node: Any, directory: Path) -> None:
        base = f"redis://127.0.0.1:{log_node.port}"
        self.store = store
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
                    "SINGLETON_TEST_BROKER": f"{base}/1", "SINGLETON_TEST_NODES": store,
                    "SINGLETON_TEST_LOG": f"{base}/2", "SINGLETON_TEST_TTL": str(TTL),
                    "SINGLETON_TEST_EVERY": "3600"}  # the static entry stays out of the way
        self.procs = Procs(directory, self.env)
        self.log: redis.Redis = log_node.client(db=2)
        self.backend = open_backend(parse_urls("singleton_backend_url", store))
        self.lease = self.backend.lease("beat:beat", TTL)

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "singleton", "schedule", *args],
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def notes(self, label: str | None = None) -> list[tuple[str, int, int, float]]:
        """(label, due ms, beat token, time) of every run of ``beatapp.note``."""
        out = []
        for raw in self.log.lrange("notes", 0, -1):
            lab, slot, token, at = raw.decode().split("|")
            if label is None or lab == label:
                out.append((lab, int(slot.rsplit("@", 1)[1]), int(token), float(at)))
        return out

    def leader(self, beats: list[Proc]) -> Proc | None:
        holder = self.lease.holder()
        return {b.pid: b for b in beats}.get(holder["pid"]) if holder else None


@pytest.fixture(params=["redis", "etcd"])
def beat(request: pytest.FixtureRequest, redis_nodes_factory: Callable[..., Any],
         etcd_cluster_factory: Callable[..., Any], tmp_path: Path) -> Iterator[Beat]:
    log_node = redis_nodes_factory(1)[0]
    store = f"redis://127.0.0.1:{log_node.port}/0" if request.param == "redis" \
        else str(etcd_cluster_factory(1).etcd_url)
    b = Beat(store, log_node, tmp_path / "procs")
    failed_before = request.session.testsfailed
    try:
        yield b
    finally:
        b.procs.close()
        b.backend.close()
        if request.session.testsfailed > failed_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(b.procs.report(50))


def test_stored_entries_are_run_edited_in_place_and_survive_failover(beat: Beat) -> None:
    beats = [beat.procs.celery(f"beat{i}", "beat", "-S", "singleton", "-l", "info",
                               "-s", str(beat.procs.dir / f"beat{i}.schedule")) for i in range(2)]
    beat.procs.worker("worker")
    first = wait_for(lambda: beat.leader(beats), START_TIMEOUT, "a beat replica to lead")

    beat.cli("add", "fast", "--task", "beatapp.note", "--every", "3s", "--kwargs", '{"label": "v1"}')
    added_at = time.time()
    wait_for(lambda: beat.notes("v1"), START_TIMEOUT, "the added entry's first run")
    assert beat.notes("v1")[0][3] - added_at < PICKUP + 2, "picked up within a poll and one period"
    wait_for(lambda: len(beat.notes("v1")) >= 2, 10, "two runs of v1")

    # An edit keeps the entry's place: made 1 s after a run, the next slot is still one period
    # after that run (3 s), not a period after the edit (4 s; RedBeat #313).
    last_run = beat.notes("v1")[-1][3]
    wait_for(lambda: time.time() > last_run + 1.0, 3, "a second after the last run")
    beat.cli("add", "fast", "--task", "beatapp.note", "--every", "3s", "--kwargs", '{"label": "v2"}')
    wait_for(lambda: beat.notes("v2"), PICKUP + 5, "a run with the edited arguments")
    last_v1 = max(due for _, due, _, _ in beat.notes("v1"))
    first_v2 = min(due for _, due, _, _ in beat.notes("v2"))
    assert 3000 <= first_v2 - last_v1 < 3500, f"the edited entry kept its place ({first_v2 - last_v1} ms after the last)"

    # The leader dies: the other replica reads the stored entries and goes on.
    token = wait_for(lambda: (h := beat.lease.holder()) is not None and h["token"], 10, "the holder's token")
    first.send(signal.SIGKILL)
    wait_for(lambda: [n for n in beat.notes("v2") if n[2] > token], TTL + 15, "the new leader running the entry")
    assert beat.leader(beats) is not first

    beat.cli("disable", "fast")
    disabled_at = time.time()
    beat.cli("add", "other", "--task", "beatapp.note", "--every", "1s", "--kwargs", '{"label": "other"}')
    wait_for(lambda: [n for n in beat.notes("other") if n[3] > disabled_at + PICKUP], 20,
             "another entry running after fast was disabled")
    late = [n for n in beat.notes("v2") if n[3] > disabled_at + PICKUP]
    assert not late, f"a disabled entry ran: {late}"
    beat.cli("remove", "other")
    removed_at = time.time()
    wait_for(lambda: time.time() > removed_at + PICKUP, PICKUP + 1, "the removal to be picked up")
    seen = len(beat.notes("other"))
    wait_for(lambda: time.time() > removed_at + PICKUP + 2, 4, "two more periods")
    assert len(beat.notes("other")) == seen, "a removed entry no longer runs"

    dues = Counter((lab, due) for lab, due, _, _ in beat.notes())
    assert all(n == 1 for n in dues.values()), f"a slot ran twice: {[k for k, n in dues.items() if n > 1]}"
