"""Singleton tasks run through Celery's real tracer (``apply``) and an in-process worker.

The lease lives in a real redis-server; multi-process behaviour is in test_task_workers.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun

from procs import wait_for
from singleton_tasks import ConfigurationError, Lease, LeaseLost, SingletonTask, TaskBusy, lease_lost, singleton_task
from singleton_tasks.task import close_backends


@pytest.fixture
def app(redis_node):
    app = Celery("task-test", set_as_current=False)
    app.conf.update(
        broker_url="memory://", result_backend="cache+memory://",
        singleton_redis_url=redis_node.url, singleton_task_ttl=2.0,
    )
    yield app
    close_backends()


def holder_of(app: Celery, name: str):
    return Lease(f"task:{name}", app.conf.singleton_redis_url).holder()


def test_runs_with_a_token_and_releases_after_success_failure_and_retry(app) -> None:
    seen = []

    @singleton_task(app=app, name="t.ok")
    def ok(self, fail=None):
        seen.append((self.singleton.token, self.singleton.valid_for(), holder_of(app, "t.ok")))
        if fail == "error":
            raise RuntimeError("boom")
        if fail == "retry":
            raise self.retry(countdown=60, max_retries=1)
        return "done"

    assert ok.apply().get() == "done"
    token, valid_for, holder = seen[-1]
    assert isinstance(token, int) and 1.5 < valid_for <= 2.0 and holder["token"] == token
    assert holder_of(app, "t.ok") is None, "released after success"
    assert ok.apply(kwargs={"fail": "error"}).state == "FAILURE"
    assert holder_of(app, "t.ok") is None, "released after failure"
    with start_worker(app, pool="solo", perform_ping_check=False):  # eager mode retries inline
        retried = ok.apply_async(kwargs={"fail": "retry"})
        wait_for(lambda: retried.state == "RETRY", 10, "the retry to be recorded")
    assert holder_of(app, "t.ok") is None, "released after retry"
    tokens = [t for t, _, _ in seen]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, "each run is a new grant"


@pytest.mark.parametrize("policy, state", [("skip", "IGNORED"), ("retry", "RETRY"), ("raise", "FAILURE")])
def test_a_busy_lease_follows_on_busy(app, policy, state) -> None:
    ran = []

    @singleton_task(app=app, name=f"t.busy.{policy}", on_busy=policy)
    def busy(self):
        ran.append(1)

    other = Lease(f"task:{busy.name}", app.conf.singleton_redis_url, ttl=30)
    assert other.acquire(blocking=False)
    if policy == "retry":  # eager mode would retry inline; a worker records the RETRY
        with start_worker(app, pool="solo", perform_ping_check=False):
            result = busy.delay()
            wait_for(lambda: result.state == "RETRY", 10, "the busy retry to be recorded")
    else:
        result = busy.apply()
    assert result.state == state and not ran
    if policy == "raise":
        assert isinstance(result.result, TaskBusy)
    assert other.held and holder_of(app, busy.name)["token"] == other.token, "the holder was left alone"
    other.release()
    assert busy.apply().state == "SUCCESS" and ran == [1]


def test_the_key_function_gives_one_lease_per_key(app) -> None:
    @singleton_task(app=app, name="t.keyed", key=lambda account, amount=0: account)
    def keyed(self, account, amount=0):
        return self.singleton.name

    blocker = Lease("task:t.keyed:alice", app.conf.singleton_redis_url, ttl=5)
    assert blocker.acquire(blocking=False)
    assert keyed.apply(("alice",), {"amount": 3}).state == "IGNORED"
    assert keyed.apply(("bob",)).get() == "task:t.keyed:bob"


def test_a_beat_slot_delivered_twice_runs_once(app) -> None:
    ran = []

    @singleton_task(app=app, name="t.slot")
    def slotted(self):
        ran.append(self.request.headers["singleton_slot"])

    headers = {"singleton_slot": "t.slot@1000", "singleton_token": 7}
    assert slotted.apply(headers=headers).state == "SUCCESS"
    assert slotted.apply(headers=headers).state == "IGNORED"
    assert slotted.apply(headers={**headers, "singleton_slot": "t.slot@2000"}).state == "SUCCESS"
    assert ran == ["t.slot@1000", "t.slot@2000"]


def test_a_stolen_lease_stops_the_run_at_its_next_checkpoint(app) -> None:
    started, stolen = threading.Event(), threading.Event()
    calls: list[int] = []
    signalled = []
    lease_lost.connect(lambda sender, **kw: signalled.append(kw["name"]), weak=False)

    @singleton_task(app=app, name="t.stolen", ttl=1.0)
    def victim(self):
        started.set()
        while True:
            with self.singleton.guard(budget=0.2) as token:
                calls.append(token)  # the "third-party call"
            if stolen.is_set():
                self.singleton.checkpoint()
            time.sleep(0.01)

    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("r", victim.apply()))
    runner.start()
    assert started.wait(5)
    client = app.conf.singleton_redis_url
    import redis
    redis.Redis.from_url(client).delete("singleton:{task:t.stolen}:lease")
    thief = Lease("task:t.stolen", client, ttl=10)
    assert thief.acquire(blocking=False)
    calls_at_theft = len(calls)
    stolen.set()
    runner.join(10)
    assert not runner.is_alive()
    result = outcome["r"]
    assert result.state == "IGNORED" and isinstance(result.result, LeaseLost)
    assert len(calls) <= calls_at_theft + 1, "at most the call already past its guard"
    assert all(t < thief.token for t in calls), "every call the victim made carried an older token"
    assert thief.held and holder_of(app, "t.stolen")["token"] == thief.token, "the victim did not release the thief"
    assert signalled == ["task:t.stolen"]


def test_the_guard_refuses_a_call_longer_than_the_validity_left(app) -> None:
    @singleton_task(app=app, name="t.guard", ttl=1.0)
    def guarded(self):
        with self.singleton.guard(budget=5.0):
            raise AssertionError("the call must not start")

    result = guarded.apply()
    assert result.state == "IGNORED" and "budget" in str(result.result)


def test_works_in_a_real_in_process_worker(app) -> None:
    @singleton_task(app=app, name="t.worker")
    def in_worker(self, x):
        return (x, self.singleton.token)

    with start_worker(app, pool="solo", perform_ping_check=False):
        x, token = in_worker.delay(21).get(timeout=10)
        assert x == 21 and token > 0
        # send_task bypasses no check: it still needs the lease
        blocker = Lease("task:t.worker", app.conf.singleton_redis_url, ttl=5)
        assert blocker.acquire(blocking=False)
        finished: dict[str, str] = {}

        def record(task_id=None, state=None, **_):
            finished[task_id] = state

        task_postrun.connect(record, weak=False)
        try:
            result = app.send_task("t.worker", (1,))
            assert wait_for(lambda: finished.get(result.id), 10, "the run to finish") == "IGNORED"
        finally:
            task_postrun.disconnect(record)


def test_decorator_composes_with_a_custom_app_task(app) -> None:
    class Audited(app.Task):  # type: ignore[name-defined]
        calls: list[str] = []

        def __call__(self, *args, **kwargs):
            Audited.calls.append(self.name)
            return super().__call__(*args, **kwargs)

    app.Task = Audited

    @singleton_task(app=app, name="t.audited")
    def audited(self):
        return self.singleton.token

    assert isinstance(audited, SingletonTask) and isinstance(audited, Audited)
    assert audited.apply().get() > 0 and Audited.calls == ["t.audited"]


def test_as_a_base_class(app) -> None:
    @app.task(base=SingletonTask, bind=True, name="t.based", singleton_on_busy="raise")
    def based(self):
        return self.singleton.token

    assert based.apply().get() > 0


@pytest.mark.parametrize(
    "options, setting",
    [({"on_busy": "wait"}, "on_busy"), ({"ttl": 0.1}, "ttl"), ({"key": "account"}, "key")],
)
def test_bad_decorator_options_fail_when_applied(app, options, setting) -> None:
    with pytest.raises(ConfigurationError) as err:
        singleton_task(app=app, **options)
    assert err.value.setting == setting


def test_a_beat_slot_may_be_retried_by_its_body_but_not_delivered_again(app) -> None:
    attempts: list[int] = []
    finished: list[tuple[str, int, str]] = []

    @singleton_task(app=app, name="t.slot.retry")
    def flaky(self):
        attempts.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=3)

    def record(task_id=None, state=None, task=None, **_):
        finished.append((task_id, task.request.retries, state))

    headers = {"singleton_slot": "t.slot.retry@1000", "singleton_token": 7}
    task_postrun.connect(record, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            first = flaky.apply_async(headers=headers, task_id="slot-task")
            wait_for(lambda: ("slot-task", 1, "SUCCESS") in finished, 10, "the retried attempt")
            flaky.apply_async(headers=headers, task_id="slot-task")  # the broker delivers it again
            wait_for(lambda: len(finished) == 3, 10, "the second delivery")
    finally:
        task_postrun.disconnect(record)
    assert attempts == [0, 1], "the retry ran, the second delivery did not"
    assert finished[-1] == ("slot-task", 0, "IGNORED") and first.id == "slot-task"
