"""``celery -A beatapp singleton schedule ...`` as a user runs it, against a real Redis and a real etcd.

Each call is a ``python -m celery`` subprocess on ``tests/apps/beatapp.py`` (its static entry
``tick`` runs every second); the test reads back what the CLI stored through the library, and
writes the run record a beat leader would, to see it listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

from procs import APPS
from singleton_tasks import EntrySpec, StoredEntries, open_backend
from singleton_tasks.backend import Backend
from singleton_tasks.backends import parse_urls


@pytest.fixture(params=["redis", "etcd"])
def store(request, redis_nodes_factory, etcd_cluster_factory) -> str:
    """The ``singleton_backend_url`` of a fresh store."""
    if request.param == "redis":
        return str(redis_nodes_factory(1).urls[0])
    return str(etcd_cluster_factory(1).etcd_url)


@pytest.fixture
def redis_store(redis_nodes_factory) -> str:
    return str(redis_nodes_factory(1).urls[0])


@pytest.fixture
def backend_of() -> Iterator[Any]:
    opened: list[Backend] = []

    def open_(store: str) -> Backend:
        opened.append(open_backend(parse_urls("singleton_backend_url", store)))
        return opened[-1]

    yield open_
    for backend in opened:
        backend.close()


def schedule_cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER="memory://", SINGLETON_TEST_NODES=store,
               SINGLETON_TEST_LOG="redis://127.0.0.1:1/0")
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "singleton", "schedule", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def listed(store: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(ok(schedule_cli(store, "list", "--json")))}


def test_add_list_edit_disable_enable_remove(store: str, backend_of) -> None:
    out = ok(schedule_cli(store, "add", "nightly", "--task", "beatapp.tick", "--crontab", "0 3 * * *",
                          "--args", "[1]", "--kwargs", '{"a": 2}', "--queue", "reports"))
    assert "added nightly: crontab 0 3 * * * -> beatapp.tick" in out
    added = schedule_cli(store, "add", "often", "--task", "beatapp.work", "--every", "10s")
    assert "added often: every 10s" in ok(added) and added.stderr == "", "a registered task: no warning"

    backend = backend_of(store)
    stored = StoredEntries(backend, "beat").all()
    assert stored == {
        "nightly": EntrySpec("nightly", "beatapp.tick", crontab="0 3 * * *", args=(1,), kwargs={"a": 2},
                             options={"queue": "reports"}),
        "often": EntrySpec("often", "beatapp.work", every=10),
    }, "stored in the backend, as JSON the library reads back"
    assert json.loads(backend.entries("beat").get("often") or "")["every"] == 10

    # What a beat leader records when it runs "often": last run and token come from there.
    lease = backend.lease("beat:beat", 30)
    assert lease.acquire(blocking=False) and lease.token is not None
    ran = (datetime.now(timezone.utc) - timedelta(seconds=3)).replace(microsecond=0)
    backend.records("beat").write(lease.token, {"often": {"last_run_at": ran.isoformat(), "total_run_count": 2,
                                                          "pending": None}})
    rows = listed(store)
    assert [(r["name"], r["source"]) for r in rows.values()] == [("tick", "static"), ("nightly", "stored"),
                                                                 ("often", "stored")]
    often = rows["often"]
    assert often["last_run_at"] == ran.isoformat() and often["token"] == lease.token
    assert often["total_run_count"] == 2
    assert often["next_due"] == (ran + timedelta(seconds=10)).isoformat(), "last run + 10 s"
    assert rows["nightly"]["next_due"].endswith("T03:00:00+00:00") and rows["nightly"]["last_run_at"] is None
    assert rows["nightly"]["options"] == {"queue": "reports"} and rows["nightly"]["args"] == [1]
    assert rows["tick"]["schedule"] == "every 1s" and rows["tick"]["enabled"] is True

    table = ok(schedule_cli(store, "list")).splitlines()
    assert table[0].split() == ["NAME", "SOURCE", "ENABLED", "SCHEDULE", "TASK", "LAST", "RUN", "NEXT", "DUE",
                                "TOKEN"]
    line = next(row for row in table if row.startswith("often "))
    assert line.split()[:3] == ["often", "stored", "yes"] and ran.isoformat() in line
    assert line.split()[-1] == str(lease.token)
    assert next(row for row in table if row.startswith("tick ")).split()[:2] == ["tick", "static"]

    # An edit: add on an existing name replaces it; its run record, so its place, is kept.
    assert "replaced often: every 1m" in ok(schedule_cli(store, "add", "often", "--task", "beatapp.work",
                                                         "--every", "1m"))
    shown = json.loads(ok(schedule_cli(store, "show", "often")))
    assert shown["schedule"] == "every 1m" and shown["last_run_at"] == ran.isoformat()
    assert shown["next_due"] == (ran + timedelta(seconds=60)).isoformat()

    assert "disabled often" in ok(schedule_cli(store, "disable", "often"))
    assert StoredEntries(backend, "beat").get("often") == EntrySpec("often", "beatapp.work", every=60, enabled=False)
    row = listed(store)["often"]
    assert row["enabled"] is False and row["next_due"] is None
    assert "enabled often" in ok(schedule_cli(store, "enable", "often"))
    assert listed(store)["often"]["enabled"] is True

    assert "removed nightly" in ok(schedule_cli(store, "remove", "nightly"))
    assert set(StoredEntries(backend, "beat").all()) == {"often"}
    for command in ("remove", "show", "enable"):
        again = schedule_cli(store, command, "nightly")
        assert again.returncode == 1 and "no stored entry 'nightly'" in again.stderr, (command, again.stderr)
    lease.release()


def test_a_bad_crontab_is_refused_and_an_unknown_task_is_stored_with_a_warning(store: str, backend_of) -> None:
    bad = schedule_cli(store, "add", "broken", "--task", "beatapp.tick", "--crontab", "61 * * * *")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "crontab='61 * * * *'" in bad.stderr and "minute" in bad.stderr and "'broken'" in bad.stderr, bad.stderr
    unknown = schedule_cli(store, "add", "typo", "--task", "beatapp.tikc", "--every", "5")
    assert "added typo" in ok(unknown)
    assert "warning" in unknown.stderr and "'beatapp.tikc' is not registered" in unknown.stderr
    assert set(StoredEntries(backend_of(store), "beat").all()) == {"typo"}, "stored; the bad crontab was not"


@pytest.mark.parametrize("args, named", [
    (["--every", "10s", "--options", '{"serializer": "pickle"}'], ["options='serializer'", "queue"]),
    (["--every", "10s", "--options", '{"priority": 999}'], ["options.priority=999"]),
    (["--every", "10s", "--options", "{queue: x}"], ["options='{queue: x}'", "JSON object"]),
    (["--every", "10s", "--args", '{"a": 1}'], ["args='{\"a\": 1}'", "JSON array"]),
    (["--every", "10s", "--kwargs", "[1]"], ["kwargs='[1]'", "JSON object"]),
    (["--every", "soon"], ["every='soon'"]),
    (["--every", "10s", "--queue", "a", "--options", '{"queue": "b"}'], ["queue='a'", "'b'"]),
])
def test_bad_input_exits_1_naming_the_field(redis_store: str, args: list[str], named: list[str]) -> None:
    result = schedule_cli(redis_store, "add", "report", "--task", "beatapp.tick", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(text in result.stderr for text in named), result.stderr


def test_usage_errors_and_names_that_are_not_stored_entries(redis_store: str, backend_of) -> None:
    both = schedule_cli(redis_store, "add", "report", "--task", "beatapp.tick", "--every", "1s", "--crontab", "* * * * *")
    assert both.returncode == 2 and "exactly one of --every or --crontab" in both.stderr
    static = schedule_cli(redis_store, "add", "tick", "--task", "beatapp.tick", "--every", "5s")
    assert static.returncode == 1 and "'tick' is a static entry" in static.stderr
    assert schedule_cli(redis_store, "remove", "tick").returncode == 1
    name = schedule_cli(redis_store, "add", "a{b}", "--task", "beatapp.tick", "--every", "5s")
    assert name.returncode == 1 and "name='a{b}'" in name.stderr
    assert StoredEntries(backend_of(redis_store), "beat").all() == {}
    shown = json.loads(ok(schedule_cli(redis_store, "show", "tick")))
    assert shown["source"] == "static" and shown["task"] == "beatapp.tick"


def test_list_reports_a_hostile_stored_value_and_lists_the_rest(redis_store: str, backend_of) -> None:
    backend = backend_of(redis_store)
    StoredEntries(backend, "beat").add(EntrySpec("good", "beatapp.tick", every=30))
    backend.entries("beat").put("evil", "cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    result = schedule_cli(redis_store, "list", "--json")
    assert [row["name"] for row in json.loads(ok(result))] == ["tick", "good"]
    assert "stored entry 'evil' ignored" in result.stderr, result.stderr
    shown = schedule_cli(redis_store, "show", "evil")
    assert shown.returncode == 1 and "'evil'" in shown.stderr and "not valid" in shown.stderr
    assert "removed evil" in ok(schedule_cli(redis_store, "remove", "evil"))


def test_an_unreachable_store_is_a_clear_error(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(1)
    nodes[0].kill()
    result = schedule_cli(nodes.urls[0], "list")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Error:" in result.stderr and "needs 1 of 1 nodes" in result.stderr
