"""The library as the example projects use it: Django settings, a Flask app factory on
Celery, the fenced "third-party API", and the demo end to end (real processes, real Redis).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from celery import Celery, _state

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # example_project is run from the repository root, not installed
    sys.path.insert(0, str(REPO))

from example_project.api import APIError, FencedAPI, StaleTokenRejected, charge, ledger  # noqa: E402
from singleton_tasks import ConfigurationError, SingletonTask, settings_for  # noqa: E402

LEASE_NODES = ["redis://127.0.0.1:6391/0", "redis://127.0.0.1:6392/0", "redis://127.0.0.1:6393/0"]


@pytest.fixture
def fenced_api() -> Iterator[FencedAPI]:
    with FencedAPI() as api:
        yield api


@pytest.fixture
def keep_celery_current_app() -> Iterator[None]:
    """The Flask factory calls ``set_default()`` and the embedded worker ``set_current()``."""
    default, current = _state.default_app, _state._tls.current_app
    yield
    _state.default_app = default
    _state._set_current_app(current)


# -- Django --------------------------------------------------------------------------------


@pytest.fixture
def django_project() -> Iterator[None]:
    # Django reads its settings module once per process: these values hold for every test.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_SETTINGS_MODULE", "example_project.djangoproj.settings")
        mp.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6390/0")
        mp.setenv("SINGLETON_REDIS_URL", ",".join(LEASE_NODES))
        mp.setenv("SINGLETON_LEASE_TTL", "3")
        mp.setenv("SINGLETON_TASK_TTL", "7")
        mp.setenv("SINGLETON_MISSED_RUNS", "skip")
        yield


def test_django_settings_configure_the_library(django_project, keep_celery_current_app) -> None:
    import django
    from celery.utils.imports import load_extension_class_names

    from example_project.djangoproj.celery import app

    s = settings_for(app)
    assert s.backend_urls == tuple(LEASE_NODES)
    assert (s.lease_ttl, s.renew_interval, s.task_ttl, s.missed_runs) == (3.0, 1.0, 7.0, "skip")
    assert app.conf.broker_url == "redis://127.0.0.1:6390/0"
    assert app.conf.beat_scheduler == "singleton"
    assert dict(load_extension_class_names("celery.beat_schedulers"))["singleton"] == (
        "singleton_tasks.beat:LeaderScheduler"
    )
    django.setup()
    app.loader.import_default_modules()  # what worker and beat do: autodiscover billing.tasks
    assert isinstance(app.tasks["billing.charge"], SingletonTask)


@pytest.mark.parametrize("bad", ["soon", 0.1])
def test_django_bad_lease_ttl_names_the_setting_and_the_value(django_project, bad) -> None:
    from django.test import override_settings

    with override_settings(CELERY_SINGLETON_LEASE_TTL=bad):
        app = Celery("bad-ttl", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        with pytest.raises(ConfigurationError) as info:
            settings_for(app)
    assert (info.value.setting, info.value.value) == ("singleton_lease_ttl", bad)
    assert f"singleton_lease_ttl={bad!r}" in str(info.value)


# -- Flask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["redis", "etcd"])
def test_flask_factory_runs_singleton_tasks_in_the_app_context(store, redis_node, etcd_cluster_factory, fenced_api,
                                                               keep_celery_current_app) -> None:
    from celery.contrib.testing.worker import start_worker
    from celery.result import AsyncResult

    from example_project.flaskapp import create_app

    port = redis_node.port
    backend_url = redis_node.url if store == "redis" else etcd_cluster_factory(1).etcd_url
    flask_app = create_app({
        "TESTING": True,
        "FENCED_API_URL": fenced_api.url,
        "CELERY": {
            "broker_url": f"redis://127.0.0.1:{port}/1",
            "result_backend": f"redis://127.0.0.1:{port}/2",
            "singleton_backend_url": backend_url,
            "singleton_lease_ttl": 3,
            "singleton_task_ttl": 4,
        },
    })
    celery_app = flask_app.extensions["celery"]
    s = settings_for(celery_app)
    assert (s.backend_urls, s.lease_ttl, s.task_ttl) == ((backend_url,), 3.0, 4.0)

    task = celery_app.tasks["flaskapp.charge_account"]
    flask_task_cls = celery_app.task_cls
    assert flask_task_cls.__name__ == "FlaskTask"
    assert isinstance(task, SingletonTask) and isinstance(task, flask_task_cls)
    mro = type(task).__mro__
    assert mro.index(SingletonTask) < mro.index(flask_task_cls), "the lease must wrap FlaskTask.__call__"

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        first = task.delay("acme", 5).get(timeout=20)
        reply = flask_app.test_client().post("/charge/acme?amount=7")
        assert reply.status_code == 200
        second = AsyncResult(reply.get_json()["task_id"], app=celery_app).get(timeout=20)
    # current_app inside the body: the run happened inside the Flask app context
    assert first["in_app_context"] and first["app"] == flask_app.name == second["app"]
    assert second["token"] > first["token"], "each run takes the lease anew, with a newer token"
    assert [(c["account"], c["amount"], c["token"], c["accepted"]) for c in fenced_api.ledger()] == [
        ("acme", 5, first["token"], True), ("acme", 7, second["token"], True),
    ]

    # The lease is real: while another holder has it, a run is skipped and calls nothing.
    backend = s.open_backend()
    holder = backend.lease("task:flaskapp.charge_account:acme", 5)
    assert holder.acquire(blocking=False)
    held_token = holder.token
    try:
        assert task.apply(args=("acme", 1)).state == "IGNORED"
    finally:
        holder.release()
    assert len(fenced_api.ledger()) == 2
    assert task.apply(args=("acme", 1)).get()["token"] > held_token > second["token"]
    backend.close()


# -- the fenced API ------------------------------------------------------------------------


def test_fenced_api_rejects_a_token_lower_than_the_highest_accepted(fenced_api) -> None:
    url = fenced_api.url
    assert charge(url, 5, "acme", 10)["ok"]
    assert charge(url, 7, "acme", 10)["ok"]
    assert charge(url, 7, "acme", 1)["ok"], "the same holder may call again with its token"
    with pytest.raises(StaleTokenRejected) as info:
        charge(url, 6, "acme", 10)
    assert (info.value.status, info.value.token, info.value.highest) == (409, 6, 7)
    assert charge(url, 1, "globex", 10)["ok"], "each account has its own high-water mark"

    raw = urllib.request.Request(url + "/charge", method="POST", data=json.dumps(
        {"token": 3, "account": "acme", "amount": 1, "slot": "s@1"}).encode())
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(raw, timeout=5)
    assert http.value.code == 409
    assert json.loads(http.value.read())["highest"] == 7

    with pytest.raises(APIError) as bad:
        charge(url, "8", "acme", 1)  # type: ignore[arg-type]
    assert bad.value.status == 400

    calls = ledger(url)
    assert [(c["account"], c["token"], c["accepted"]) for c in calls] == [
        ("acme", 5, True), ("acme", 7, True), ("acme", 7, True), ("acme", 6, False), ("globex", 1, True),
        ("acme", 3, False),
    ]
    assert calls[-1]["slot"] == "s@1" and calls[-1]["highest_before"] == 7
    assert fenced_api.highest("acme") == 7


# -- the demo ------------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["redis", "etcd"])
def test_demo_runs_end_to_end(tmp_path, backend) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_", "SINGLETON_", "BILLING_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "example_project.demo", "--quick", "--backend", backend, "--log-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=140,
    )
    out = proc.stdout
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, out + proc.stderr + logs
    assert "all checks passed" in out
    assert ("3-member etcd cluster" in out) == (backend == "etcd"), "the demo ran on the store asked for"
    assert re.search(r"each exactly once: yes \(run twice: 0, missing from the 1s grid: 0\)", out), out
    assert re.search(r"runs per slot: \{1: \d+\} \(slots .*\); sent but never run: 0", out), out
    assert re.search(r"took over \d+\.\d+s after the kill", out), out
    leaders = re.search(r"beat lease tokens of the three leaders: (\d+) -> (\d+) -> (\d+)", out)
    assert leaders and int(leaders[1]) < int(leaders[2]) < int(leaders[3]), out
    stale = re.search(r"stale call with token (\d+) was rejected with HTTP 409 \(the API had accepted (\d+)\)", out)
    assert stale and int(stale[1]) < int(stale[2]), out
    assert re.search(rf"token {stale[1]}: REJECTED \(409, highest {stale[2]}\)", out), out

    started = next(line for line in out.splitlines() if "started `celery" in line)
    stale_run = re.search(r"stale-run \(pid (\d+)\)", out)
    pids = [int(p) for group in re.findall(r"pids? ([\d, ]+)\)", started) for p in group.split(", ")]
    assert len(pids) == 4 and stale_run, started
    pids.append(int(stale_run[1]))
    for pid in set(pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every process the demo started is gone
