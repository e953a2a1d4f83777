"""django-celery-beat's DatabaseScheduler made highly available by two settings, with real parts.

A Django project (``apps/dbeat_settings.py``, ``apps/dbeatapp.py``) keeps its periodic tasks in
django-celery-beat's tables, on SQLite and on a PostgreSQL server started here. Three real
``celery beat`` replicas run with ``CELERY_BEAT_SCHEDULER = "singleton"`` and
``CELERY_SINGLETON_BEAT_SCHEDULER = "...:DatabaseScheduler"`` (no ``-S``), a real worker runs the
tasks, and rows are edited through the ORM as the admin does (``apps/dbeat_ctl.py``).
PostgreSQL logs every data-modifying statement with the client's application_name (one per
replica), which proves that standbys, and a leader once it lost the lease, write nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from db_beat import CHANGE_TIMEOUT, MAX_GAP, START_TIMEOUT, TTL, DbBeatProject, assert_each_slot_once, closed_with_report
from pg import PostgresServer, find_binary
from procs import APPS, wait_for


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if not find_binary("initdb"):
        pytest.skip("PostgreSQL is not installed (initdb, postgres)")
    server = PostgresServer()
    yield server
    server.stop()


class Project(DbBeatProject):
    """The Django project's processes, database and task log for one test."""

    app = "dbeatapp"

    def __init__(self, db_url: str, redis_node: Any, directory: Path) -> None:
        super().__init__(db_url, redis_node, directory)
        self.ctl("migrate")

    def process_env(self, name: str) -> dict[str, str]:
        return {"SINGLETON_TEST_DB_APP": name}  # PostgreSQL's application_name: who wrote what

    def ctl(self, *args: str) -> str:
        done = subprocess.run([sys.executable, str(APPS / "dbeat_ctl.py"), *args], capture_output=True, text=True,
                              env={**self.env, **self.process_env("ctl")}, timeout=120)
        assert done.returncode == 0, f"dbeat_ctl {args}: {done.stderr}"
        return done.stdout

    def rows(self) -> dict[str, Any]:
        return json.loads(self.ctl("rows"))  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgresql", "sqlite, one class path"])
def project(request: pytest.FixtureRequest, redis_nodes_factory: Callable[..., Any], tmp_path: Path) -> Iterator[Project]:
    if request.param.startswith("sqlite"):
        db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        name = f"t{os.getpid()}_{int(time.monotonic() * 1000)}"
        server.execute("postgres", f"CREATE DATABASE {name}")
        db_url = server.url(name)
    proj = Project(db_url, redis_nodes_factory(1)[0], tmp_path / "procs")
    if "one class" in request.param:  # CELERY_BEAT_SCHEDULER = "singleton_tasks.django_beat:DatabaseScheduler"
        proj.env["SINGLETON_TEST_ONE_CLASS"] = "1"
    with closed_with_report(request, proj.procs):
        yield proj


def writes_by(postgres: PostgresServer, app_name: str, after: float = 0.0) -> list[str]:
    """The data-modifying statements client ``app_name`` sent, from ``after`` (Unix time) on."""
    return [sql for at, app, sql in postgres.statements() if app == app_name and at >= after]


def test_database_schedule_fails_over(project: Project, request: pytest.FixtureRequest) -> None:
    pg: PostgresServer | None = request.getfixturevalue("postgres") if "postgres" in project.env["SINGLETON_TEST_DB"] \
        else None
    project.ctl("add", "every-second", "dbeat.single", "1")
    project.ctl("add", "plain", "dbeat.plain", "1")
    beats = [project.beat(f"beat{i}") for i in range(3)]
    project.worker()
    a = wait_for(lambda: project.leader(beats), START_TIMEOUT, "a beat replica to lead")
    assert "scheduler -> singleton_tasks.beat.LeaderDatabaseScheduler" in a.log(), "leadership over the host class"
    first = project.token()
    wait_for(lambda: len([r for r in project.runs_of("every-second") if r[2] == first]) >= 3, START_TIMEOUT,
             "3 runs of every-second sent by the first leader")
    assert all(r[1].startswith("beat/every-second@") for r in project.runs_of("every-second")), \
        "every message carries the slot header, whatever the scheduler class"
    if pg is not None:
        standbys = [b.name for b in beats if b is not a]
        wait_for(lambda: writes_by(pg, a.name), 20, "the leader's first write (its static entries, its syncs)")
        assert not any(writes_by(pg, name) for name in standbys), \
            f"standbys wrote to the database: {[writes_by(pg, n) for n in standbys]}"

    # A one-off entry added, then the leader SIGKILLed; an entry added while nobody leads.
    project.ctl("add", "once", "dbeat.once", "1", "--one-off")
    wait_for(lambda: project.runs_of("once"), CHANGE_TIMEOUT, "the one-off entry to run")
    crashed_at = time.time()
    a.send(signal.SIGKILL)
    project.ctl("add", "added-while-down", "dbeat.plain", "1")
    b = wait_for(lambda: (lead := project.leader(beats)) is not None and lead is not a and lead, TTL + 15,
                 "a new leader after the SIGKILL")
    second = project.token()
    assert second > first
    wait_for(lambda: len([r for r in project.runs_of("added-while-down") if r[2] == second]) >= 2, CHANGE_TIMEOUT + 5,
             "the entry added while no replica led, run by the new leader")
    wait_for(lambda: len([r for r in project.runs_of("every-second") if r[2] == second]) >= 2, 15,
             "every-second run by the new leader")

    # Disabled in the "admin": the leader stops sending it within the change detection.
    project.ctl("set", "plain", "enabled=false")
    disabled_at = time.time()
    wait_for(lambda: [r for r in project.runs_of("every-second") if r[3] > disabled_at + 3], 15,
             "every-second to keep running after plain was disabled")
    late = [r for r in project.runs_of("plain") if r[3] > disabled_at + 3]
    assert not late, f"plain ran after it was disabled: {late}"

    # SIGSTOP the leader past its TTL; the third replica leads; the resumed one steps down and writes nothing.
    stopped_at = time.time()
    b.send(signal.SIGSTOP)
    # Edited in the "admin" while the leader is frozen: the next leader runs the edited row.
    project.ctl("set", "added-while-down", 'kwargs="{\\"label\\": \\"v2\\"}"')
    c = wait_for(lambda: (lead := project.leader(beats)) not in (None, a, b) and lead, TTL + 15,
                 "the third replica to lead while the second is stopped")
    third = project.token()
    wait_for(lambda: [r for r in project.runs_of("added-while-down#v2") if r[2] == third], CHANGE_TIMEOUT,
             "the entry edited while the leader was stopped, run with its new arguments by the next leader")
    wait_for(lambda: len([r for r in project.runs_of("every-second") if r[2] == third]) >= 2, 15,
             "every-second run by the third leader")
    resumed_at, log_at = time.time(), b.log_size()
    b.send(signal.SIGCONT)
    wait_for(lambda: b.log_has("no longer the leader|not dispatching", log_at), 15, "the resumed replica to step down")
    assert b.alive, "the resumed replica stays up"
    wait_for(lambda: len([r for r in project.runs_of("every-second") if r[2] == third and r[3] > time.time() - 1]),
             10, "the third leader to keep sending after the resume")
    if pg is not None:
        assert not writes_by(pg, b.name, after=resumed_at), \
            f"the resumed ex-leader wrote: {writes_by(pg, b.name, after=resumed_at)}"
        assert writes_by(pg, c.name), "the new leader writes (its sync), so the log would show a stale write"

    # SIGTERM the leader: it syncs, hands over at once, nothing lost.
    before_term = project.rows()["every-second"]["total_run_count"]
    c.send(signal.SIGTERM)
    c.wait(30)
    wait_for(lambda: (lead := project.leader(beats)) is b and lead, 10, "the resumed replica to lead after SIGTERM")
    fourth = project.token()
    wait_for(lambda: len([r for r in project.runs_of("every-second") if r[2] == fourth]) >= 2, 15,
             "every-second run by the fourth leader")
    rows = project.rows()
    assert rows["every-second"]["total_run_count"] >= before_term, "the run count in the row never goes back"

    runs = project.runs()
    assert_each_slot_once(runs, [crashed_at, stopped_at], deduplicated=("beat/every-second@",))
    once = project.runs_of("once")
    assert len(once) == 1, f"a one-off entry runs once across replicas: {once}"
    assert rows["once"]["enabled"] is False, "and is disabled after its run"
    times = [r[3] for r in project.runs_of("every-second")]
    worst = max(b_ - a_ for a_, b_ in zip(times, times[1:]))
    assert worst < MAX_GAP, f"largest gap between runs of every-second: {worst:.2f}s"
