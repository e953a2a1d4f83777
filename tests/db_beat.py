"""What the database-scheduler process tests share (``test_django_beat``, ``test_sqlalchemy_beat``).

A project there is a Celery app under ``apps/`` whose periodic tasks live in a database, run by
real ``celery beat`` replicas and one solo worker. Its tasks record each run with
``apps/runlog.py``: ``name|slot|beat token|time`` on the Redis list ``ran`` (db 2); the broker is
db 1 and the beat lease's store db 0 of the same redis-server.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from procs import APPS, Proc, Procs, wait_for
from singleton_tasks import Lease

TTL = 2.0
START_TIMEOUT = 60.0
#: A change to the rows reaches the leader at its next tick (the host compares its change
#: marker's last_update every tick; beat_max_loop_interval is 1 s here).
CHANGE_TIMEOUT = 10.0
#: The largest gap between runs of a 1 s entry across a fault: period + TTL + a retry + load.
MAX_GAP = 1.0 + TTL + 0.5 + 1.5

#: (periodic task name, slot, beat token, time) of one run.
Run = tuple[str, str, int, float]


class DbBeatProject:
    """The processes, task log and beat lease of one test; subclasses add the database."""

    #: The Celery app module the replicas and the worker run (``celery -A``).
    app = ""

    def __init__(self, db_url: str, redis_node: Any, directory: Path) -> None:
        self.db_url = db_url
        base = f"redis://127.0.0.1:{redis_node.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "SINGLETON_TEST_DB": db_url,
            "SINGLETON_TEST_BROKER": f"{base}/1",
            "SINGLETON_TEST_NODES": f"{base}/0",
            "SINGLETON_TEST_LOG": f"{base}/2",
            "SINGLETON_TEST_TTL": str(TTL),
        }
        self.procs = Procs(directory, self.env)
        self.log = redis_node.client(db=2)
        self.lease = Lease("beat:beat", f"{base}/0", ttl=TTL)

    def process_env(self, name: str) -> dict[str, str]:
        """What process ``name`` gets on top of ``self.env``."""
        return {}

    def celery(self, name: str, *args: str) -> Proc:
        self.procs.env = {**self.env, **self.process_env(name)}
        return self.procs.start(name, [sys.executable, "-m", "celery", "-A", self.app, *args])

    def beat(self, name: str) -> Proc:
        return self.celery(name, "beat", "-l", "info", "-s", str(self.procs.dir / f"{name}.schedule"))

    def worker(self) -> Proc:
        return self.celery("worker", "worker", "-P", "solo", "-l", "info", "--without-gossip", "--without-mingle",
                           "--without-heartbeat")

    def runs(self) -> list[Run]:
        """Every run, in order."""
        out = []
        for raw in self.log.lrange("ran", 0, -1):
            name, slot, token, at = raw.decode().split("|")
            out.append((name, slot, int(token or 0), float(at)))
        return out

    def runs_of(self, name: str, token: int | None = None) -> list[Run]:
        return [run for run in self.runs() if run[0] == name and (token is None or run[2] == token)]

    def leader(self, beats: list[Proc]) -> Proc | None:
        holder = self.lease.holder()
        by_pid = {b.pid: b for b in beats}
        return by_pid.get(holder["pid"]) if holder else None

    def token(self) -> int:
        """The holder's fencing token, once recorded (a grant's first read may show no fence yet)."""
        def recorded() -> int | None:
            holder = self.lease.holder()
            return int(holder["token"]) if holder is not None and holder["token"] is not None else None
        return wait_for(recorded, 10, "the beat lease holder's token")


@contextmanager
def closed_with_report(request: pytest.FixtureRequest, procs: Procs, lines: int = 60) -> Iterator[None]:
    """Kill the test's processes at the end; if the test failed, print their logs' last lines."""
    failed_before = request.session.testsfailed
    try:
        yield
    finally:
        procs.close()
        if request.session.testsfailed > failed_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(procs.report(lines))


def assert_each_slot_once(runs: list[Run], faults: list[float], deduplicated: tuple[str, ...]) -> None:
    """No slot sent twice, but for a plain task's slot due just before a fault (SIGKILL, SIGSTOP):
    a slot the old leader reserved and had not confirmed as sent is sent again by the next one (it
    cannot know whether the publish happened); only a singleton task deduplicates that.
    ``deduplicated``: the slot prefixes (``beat/NAME@``) of the entries whose task is a singleton task."""
    slots = Counter(slot for _, slot, _, _ in runs if slot)
    twice = [s for s, n in slots.items() if n > 1]
    allowed = [s for s in twice if not s.startswith(deduplicated)
               and any(-0.5 < fault - int(s.rsplit("@", 1)[1]) / 1000 < 1.5 for fault in faults)]
    assert twice == allowed, f"slots run twice: {twice}"
