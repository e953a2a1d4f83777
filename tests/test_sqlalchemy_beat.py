"""sqlalchemy-celery-beat's DatabaseScheduler made highly available by two settings, with real parts.

``apps/sqlabeatapp.py`` keeps its periodic tasks in sqlalchemy-celery-beat's tables on SQLite
(``beat_dburi``). Two real ``celery beat`` replicas run with ``beat_scheduler = "singleton"`` and
``singleton_beat_scheduler = "sqlalchemy_celery_beat.schedulers:DatabaseScheduler"`` (no ``-S``),
a real solo worker runs the tasks, and rows are written through sqlalchemy-celery-beat's own
models and session, as its README shows.

The host has django-celery-beat's shape (``_dirty``, ``_initial_read``, ``_schedule``, entries
carrying their row as ``.model``, ``reserve`` marking names dirty, ``sync`` saving them), and it
composes without code of its own. Two differences once broke it, and these tests keep them fixed:

* its ``DatabaseScheduler.__init__`` reads ``kwargs['app']``: the mixin passes ``app`` on as a
  keyword (it passed it positionally, and every replica died at start with ``KeyError: 'app'``);
* its ``ModelEntry`` replaces a NULL ``last_run_at`` (a row never synced) with the load time,
  where django-celery-beat's uses ``date_changed``: the row looked later than the fenced record
  and won, and the run count started again from 0 on a new leader.
  ``scheduler_hosts.row_is_later`` now also asks whether the row changed after the recorded run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("sqlalchemy_celery_beat")

from celery import Celery  # noqa: E402
from sqlalchemy_celery_beat.models import IntervalSchedule, Period, PeriodicTask  # noqa: E402
from sqlalchemy_celery_beat.session import SessionManager, session_cleanup  # noqa: E402

from db_beat import (  # noqa: E402
    CHANGE_TIMEOUT, MAX_GAP, START_TIMEOUT, TTL, DbBeatProject, assert_each_slot_once, closed_with_report,
)
from procs import Proc, wait_for  # noqa: E402
from singleton_tasks.beat import LeaderMixin, LeaderScheduler  # noqa: E402


class HostDoesNotStart(AssertionError):
    """The composed scheduler cannot be built: DatabaseScheduler.__init__ finds no ``app`` keyword."""


class RunStateLost(AssertionError):
    """A new leader did not continue an entry's run count from the fenced record."""


class Project(DbBeatProject):
    """The processes, database and task log of one test."""

    app = "sqlabeatapp"

    def __init__(self, db_url: str, redis_node: Any, directory: Path) -> None:
        super().__init__(db_url, redis_node, directory)
        # The tables are created here, once, before any replica starts (each replica's
        # DatabaseScheduler.__init__ would otherwise race to create them).
        self.sessions = SessionManager()
        self.sessions.session_factory(db_url).close()

    def session(self) -> Any:
        return self.sessions.session_factory(self.db_url)

    def add(self, name: str, task: str, seconds: int, one_off: bool = False) -> None:
        """A row added through sqlalchemy-celery-beat's models, as its README shows."""
        session = self.session()
        with session_cleanup(session):
            every = session.query(IntervalSchedule).filter_by(every=seconds, period=Period.SECONDS).first()
            if every is None:
                every = IntervalSchedule(every=seconds, period=Period.SECONDS)
                session.add(every)
                session.commit()
            session.add(PeriodicTask(name=name, task=task, schedule_model=every, one_off=one_off))
            session.commit()

    def rows(self) -> dict[str, dict[str, Any]]:
        session = self.session()
        with session_cleanup(session):
            return {row.name: {"enabled": row.enabled, "total_run_count": row.total_run_count,
                               "last_run_at": row.last_run_at} for row in session.query(PeriodicTask).all()}

    def start(self, replicas: int) -> tuple[list[Proc], Proc]:
        """The beat replicas and a worker, once one replica leads (HostDoesNotStart if they die)."""
        beats = [self.beat(f"beat{i}") for i in range(replicas)]
        self.worker()
        wait_for(lambda: self.leader(beats) or [b for b in beats if not b.alive], START_TIMEOUT,
                 "a beat replica to lead")
        for b in beats:
            if not b.alive and b.log_has(r"KeyError: 'app'"):
                raise HostDoesNotStart(f"{b.name} exited at start:\n{b.tail(8)}")
        assert all(b.alive for b in beats), self.procs.report(30, beats)
        return beats, wait_for(lambda: self.leader(beats), 5, "the leader")


@pytest.fixture
def project(request: pytest.FixtureRequest, redis_nodes_factory: Callable[..., Any], tmp_path: Path) -> Iterator[Project]:
    proj = Project(f"sqlite:///{tmp_path / 'beat.sqlite3'}", redis_nodes_factory(1)[0], tmp_path / "procs")
    with closed_with_report(request, proj.procs):
        yield proj


def test_composes_with_the_mixin(redis_url: str, tmp_path: Path) -> None:
    """The minimal reproduction: build the scheduler as ``celery beat`` does (keywords, lazy)."""
    app = Celery("compose", set_as_current=False)
    app.conf.update(beat_scheduler="singleton", singleton_backend_url=redis_url,
                    singleton_beat_scheduler="sqlalchemy_celery_beat.schedulers:DatabaseScheduler",
                    beat_dburi=f"sqlite:///{tmp_path / 'beat.sqlite3'}")
    scheduler = LeaderScheduler(app=app, lazy=True)
    try:
        from sqlalchemy_celery_beat.schedulers import DatabaseScheduler
        assert isinstance(scheduler, LeaderMixin) and isinstance(scheduler, DatabaseScheduler)
        assert scheduler.schedule == {}, "a scheduler not leading shows no schedule"
    finally:
        scheduler.close()


def test_sqlalchemy_schedule_fails_over(project: Project) -> None:
    project.add("every-second", "sqlabeat.single", 1)
    project.add("plain", "sqlabeat.plain", 1)
    beats, a = project.start(2)
    (standby,) = [b for b in beats if b is not a]
    first = project.token()
    wait_for(lambda: len(project.runs_of("every-second", first)) >= 3, START_TIMEOUT,
             "3 runs of every-second sent by the first leader")
    assert all(r[1].startswith("beat/every-second@") for r in project.runs_of("every-second")), \
        "every message carries the slot header, whatever the scheduler class"
    assert project.runs_of("plain", first), "the plain entry runs too"
    # The host's setup_schedule (which writes its static and default entries) ran on the leader
    # only: a standby loads no schedule.
    assert a.log_has("setup_schedule"), "the leader ran the host's setup_schedule"
    assert not standby.log_has("setup_schedule"), f"the standby ran setup_schedule:\n{standby.tail()}"

    # Rows added while leading reach the leader through the host's change detection; a one-off
    # runs once, and the host disables its row.
    project.add("added-while-leading", "sqlabeat.plain", 1)
    project.add("once", "sqlabeat.single", 1, one_off=True)
    wait_for(lambda: project.runs_of("added-while-leading", first), CHANGE_TIMEOUT, "the added row to run")
    wait_for(lambda: project.runs_of("once"), CHANGE_TIMEOUT, "the one-off row to run")
    wait_for(lambda: not project.rows()["once"]["enabled"], CHANGE_TIMEOUT, "the one-off row to be disabled")

    # SIGKILL the leader; a row added while nobody leads.
    crashed_at = time.time()
    a.send(signal.SIGKILL)
    project.add("added-while-down", "sqlabeat.plain", 1)
    b = wait_for(lambda: (lead := project.leader(beats)) is not None and lead is not a and lead, TTL + 15,
                 "the standby to lead after the SIGKILL")
    second = project.token()
    assert second > first
    wait_for(lambda: len(project.runs_of("every-second", second)) >= 3, 15, "every-second run by the new leader")
    wait_for(lambda: len(project.runs_of("added-while-down", second)) >= 2, CHANGE_TIMEOUT,
             "the row added while no replica led, run by the new leader")
    assert project.runs_of("plain", second), "plain run by the new leader"
    assert b.log_has("setup_schedule"), "the new leader loaded the host's schedule on promotion"

    # SIGTERM the leader: it syncs its rows while still leading, then hands over.
    term_at = time.time()
    b.send(signal.SIGTERM)
    assert b.wait(30) == 0
    rows = project.rows()
    assert rows["every-second"]["total_run_count"] > 0 and rows["every-second"]["last_run_at"] is not None, \
        f"the leader synced its rows at exit: {rows['every-second']}"

    assert_each_slot_once(project.runs(), [crashed_at], deduplicated=("beat/every-second@", "beat/once@"))
    assert len(project.runs_of("once")) == 1, f"a one-off runs once across replicas: {project.runs_of('once')}"
    assert not rows["once"]["enabled"], "and stays disabled"
    times = [r[3] for r in project.runs_of("every-second") if r[3] < term_at]
    worst = max(y - x for x, y in zip(times, times[1:]))
    assert worst < MAX_GAP, f"largest gap between runs of every-second: {worst:.2f}s"


def test_run_state_of_rows_never_synced_survives_failover(project: Project) -> None:
    """The leader dies before its first sync (beat_sync_every is 180 s by default): the next
    leader continues the run count from the fenced record, and syncs it to the row at exit."""
    project.add("every-second", "sqlabeat.single", 1)
    beats, a = project.start(2)
    first = project.token()
    wait_for(lambda: len(project.runs_of("every-second", first)) >= 3, START_TIMEOUT,
             "3 runs of every-second sent by the first leader")
    a.send(signal.SIGKILL)
    # The fault fell before the host synced: the row knows nothing of those runs.
    row = project.rows()["every-second"]
    assert row["last_run_at"] is None and row["total_run_count"] == 0, row
    b = wait_for(lambda: (lead := project.leader(beats)) is not None and lead is not a and lead, TTL + 15,
                 "the standby to lead after the SIGKILL")
    second = project.token()
    wait_for(lambda: len(project.runs_of("every-second", second)) >= 3, 15, "every-second run by the new leader")
    b.send(signal.SIGTERM)
    assert b.wait(30) == 0
    slots = {r[1] for r in project.runs_of("every-second")}
    count = project.rows()["every-second"]["total_run_count"]
    if count < len(slots):
        raise RunStateLost(f"the row's run count after two leaders is {count}, for {len(slots)} slots run "
                           f"({len(project.runs_of('every-second', first))} by the first leader)")
