"""Beat entries stored at run time (``singleton_tasks.entries``) and their stores, on real servers.

Validation and the JSON format need no server; the store's semantics run against Redis with 1
and 3 nodes and etcd with 1 member, like the contract suite; the quorum cases (a node down, a
node that missed a change) on 3 Redis nodes; the cost of a poll is counted by the servers
themselves (``INFO commandstats``, etcd's gRPC metrics).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule

from singleton_tasks import EntrySpec, InvalidEntry, LeaseError, StoredEntries, open_backend
from singleton_tasks import keys
from singleton_tasks.backend import Backend
from singleton_tasks.backends import parse_urls
from singleton_tasks.entries import parse_duration

from procs import wait_for

STORES = ["redis-1", "redis-3", "etcd-1"]


@pytest.fixture(params=STORES)
def store_url(request, redis_nodes_factory, etcd_cluster_factory) -> str | list[str]:
    if request.param.startswith("redis"):
        return redis_nodes_factory(int(request.param[-1])).urls
    return etcd_cluster_factory(1).etcd_url


@pytest.fixture
def backend(store_url) -> Iterator[Backend]:
    store = open_backend(parse_urls("singleton_backend_url", store_url), timeout=1.0)
    yield store
    store.close()


def spec(name: str = "report", **fields: Any) -> EntrySpec:
    fields.setdefault("task", "proj.report")
    if "crontab" not in fields:
        fields.setdefault("every", 10.0)
    return EntrySpec(name=name, **fields)


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, named", [
    (dict(name="a b"), ["name", "'a b'"]),
    (dict(name="x}y"), ["name", "'x}y'"]),
    (dict(name="beat:evil"), ["name"]),
    (dict(name=""), ["name"]),
    (dict(task=""), ["task", "''"]),
    (dict(task=7), ["task", "7"]),
    (dict(every=None), ["schedule", "exactly one"]),
    (dict(every=10, crontab="* * * * *"), ["schedule", "exactly one"]),
    (dict(every=0), ["every", "0"]),
    (dict(every=-5), ["every", "-5"]),
    (dict(every=math.nan), ["every", "nan"]),
    (dict(every=True), ["every", "True"]),
    (dict(every="10s"), ["every", "'10s'"]),
    (dict(every=None, crontab="61 * * * *"), ["crontab", "'61 * * * *'", "minute"]),
    (dict(every=None, crontab="0 25 * * *"), ["crontab", "hour", "'25'"]),
    (dict(every=None, crontab="0 0 32 * *"), ["crontab", "day-of-month", "'32'"]),
    (dict(every=None, crontab="0 0 * 13 *"), ["crontab", "month-of-year", "'13'"]),
    (dict(every=None, crontab="0 0 * * funday"), ["crontab", "day-of-week", "'funday'"]),
    (dict(every=None, crontab="*/5 * * *"), ["crontab", "5 fields"]),
    (dict(every=None, crontab="0 0 * * * 2026"), ["crontab", "5 fields"]),
    (dict(args="[1]"), ["args", "'[1]'"]),
    (dict(args=[object()]), ["args"]),
    (dict(kwargs={1: 2}), ["kwargs", "{1: 2}"]),
    (dict(kwargs={"x": {1, 2}}), ["kwargs"]),
    (dict(options={"serializer": "pickle"}), ["options", "'serializer'"]),
    (dict(options={"task_id": "fixed"}), ["options", "'task_id'"]),
    (dict(options={"queue": ""}), ["options.queue", "''"]),
    (dict(options={"priority": 300}), ["options.priority", "300"]),
    (dict(options={"priority": 1.5}), ["options.priority", "1.5"]),
    (dict(options={"expires": -1}), ["options.expires", "-1"]),
    (dict(options={"time_limit": "long"}), ["options.time_limit", "'long'"]),
    (dict(options={"headers": {"singleton_token": 99}}), ["options.headers", "singleton_token"]),
    (dict(options={"headers": {"task": "other.task"}}), ["options.headers", "'task'"]),
    (dict(enabled="yes"), ["enabled", "'yes'"]),
])
def test_a_bad_field_is_refused_naming_the_field_and_the_value(fields: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(InvalidEntry) as refused:
        spec(**fields)
    assert isinstance(refused.value, ValueError), "an InvalidEntry is a ValueError too"
    for text in named:
        assert text in str(refused.value), (text, str(refused.value))


def test_a_good_entry_keeps_its_fields_normalised() -> None:
    entry = spec(every=None, crontab="*/5   * * *  mon-fri", args=[1, "two"], kwargs={"k": [3]},
                 options={"queue": "reports", "priority": 5, "expires": 30, "headers": {"trace": "on"}},
                 enabled=False)
    assert entry.crontab == "*/5 * * * mon-fri" and entry.args == (1, "two") and not entry.enabled
    assert entry.schedule_text == "crontab */5 * * * mon-fri"
    assert spec(every=300).schedule_text == "every 5m" and spec(every=1.5).schedule_text == "every 1.5s"


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("5m", 300), ("1h", 3600), ("1d", 86400), ("1.5", 1.5),
                                           ("250ms", 0.25), (" 2 h ", 7200), (".5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-1s", "0s", "0", "1e3", "ten", "1.2.3s", "0.1ms"])
def test_a_bad_duration_names_itself(text: str) -> None:
    with pytest.raises(InvalidEntry) as refused:
        parse_duration(text, "report")
    assert f"every={text!r}" in str(refused.value) and "report" in str(refused.value)


def test_crontab_fields_are_in_cron_order() -> None:
    cron = spec(every=None, crontab="30 4 1 2 3").schedule()
    assert isinstance(cron, crontab)
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        {30}, {4}, {1}, {2}, {3})


# -- the JSON format ----------------------------------------------------------------------------

def test_json_round_trip_is_plain_json() -> None:
    for entry in (spec(), spec("nightly", every=None, crontab="0 3 * * *", args=[1, None], kwargs={"a": {"b": 1}},
                               options={"queue": "q", "headers": {"x": "y"}, "ignore_result": True}, enabled=False)):
        text = entry.to_json()
        body = json.loads(text)
        assert body["format"] == 1 and body["name"] == entry.name
        assert EntrySpec.from_json(text, entry.name) == entry
        assert EntrySpec.from_json(text.encode()) == entry, "bytes, as a store returns them"


@pytest.mark.parametrize("text, named", [
    (pickle.dumps({"name": "report"}), ["stored value"]),
    (b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.", ["stored value"]),
    ("not json", ["stored value", "JSON"]),
    ("[]", ["stored value"]),
    ('{"name": "report", "task": "t", "every": 1}', ["stored value", "format 1"]),
    ('{"format": 2, "name": "report", "task": "t", "every": 1}', ["stored value", "format 1"]),
    ('{"format": 1, "name": "report", "task": "t", "every": 1, "eval": "__import__(\'os\')"}', ["stored value"]),
    ('{"format": 1, "name": "report", "task": "t", "every": NaN}', ["stored value", "NaN"]),
    ('{"format": 1, "name": "report", "task": "t", "every": "__import__(\'os\').system(\'id\')"}', ["every"]),
    ('{"format": 1, "name": "other", "task": "t", "every": 1}', ["name", "'other'", "'report'"]),
    ('{"format": 1, "name": "report", "task": "t", "every": 1, "args": {"a": 1}}', ["args"]),
    ('{"format": 1, "name": "report", "task": "t", "every": 1, "options": {"serializer": "pickle"}}', ["options"]),
    ('{"format": 1, "name": "report", "task": "t", "every": 1, "args": [' + "1," * 40000 + '1]}', ["stored value"]),
])
def test_a_stored_value_that_is_not_ours_is_refused_not_run(text: str | bytes, named: list[str]) -> None:
    with pytest.raises(InvalidEntry) as refused:
        EntrySpec.from_json(text, "report")
    assert all(t in str(refused.value) for t in named), str(refused.value)
    assert len(str(refused.value)) < 600, "a hostile value is shown shortened"


def test_to_entry_makes_a_beat_entry_with_its_own_copies() -> None:
    app = Celery("entries-test", set_as_current=False)
    entry = spec(every=60, args=[1], kwargs={"k": "v"}, options={"queue": "q", "headers": {"x": "1"}})
    ran = datetime.now(timezone.utc) - timedelta(seconds=90)
    beat_entry = entry.to_entry(app, last_run_at=ran, total_run_count=4)
    assert isinstance(beat_entry, ScheduleEntry) and isinstance(beat_entry.schedule, schedule)
    assert (beat_entry.name, beat_entry.task, beat_entry.args, beat_entry.kwargs) == ("report", "proj.report", (1,),
                                                                                       {"k": "v"})
    assert beat_entry.last_run_at == ran and beat_entry.total_run_count == 4
    assert beat_entry.schedule.run_every == timedelta(seconds=60)
    assert beat_entry.is_due().is_due, "last run 90 s ago, every 60 s: due, so an edit keeps its place"
    beat_entry.options["headers"]["singleton_slot"] = "s"  # what the beat side does before sending
    assert entry.options == {"queue": "q", "headers": {"x": "1"}}, "the spec is not changed through its entry"
    fresh = entry.to_entry(app)
    assert not fresh.is_due().is_due and fresh.total_run_count == 0, "never run: due one period from now"


# -- the store, on every backend ----------------------------------------------------------------

def test_store_versions_change_with_every_change(backend: Backend) -> None:
    store = backend.entries("contract")
    assert store.all() == (store.version(), {})
    seen = [store.version()]
    seen.append(store.put("a", '{"x": 1}'))
    assert store.version() == seen[-1] and store.get("a") == '{"x": 1}'
    seen.append(store.put("b", '{"x": 2}'))
    seen.append(store.put("a", '{"x": 3}'))  # an edit
    assert store.all() == (seen[-1], {"a": '{"x": 3}', "b": '{"x": 2}'})
    assert store.remove("a") is True
    seen.append(store.version())
    assert store.remove("a") is False and store.version() == seen[-1], "nothing removed: no new version"
    assert store.get("a") is None and store.all() == (seen[-1], {"b": '{"x": 2}'})
    assert all(later > earlier for earlier, later in zip(seen, seen[1:])), seen
    other = backend.entries("other")
    assert other.all()[1] == {}, "each schedule has its own entries"


def test_stored_entries_add_edit_enable_disable_remove_and_poll(backend: Backend) -> None:
    entries, leader = StoredEntries(backend, "contract"), StoredEntries(backend, "contract")
    assert leader.poll() == {} and leader.poll() is None, "first poll loads, the next finds no change"
    versions = [entries.add(spec("report"))]
    assert leader.poll() == {"report": spec("report")}
    assert leader.poll() is None
    versions.append(entries.add(spec("report", every=None, crontab="0 3 * * *", options={"queue": "night"})))
    edited = leader.poll()
    assert edited is not None and edited["report"].crontab == "0 3 * * *" and edited["report"].every is None
    disabled = entries.disable("report")
    versions.append(entries.version())
    assert disabled is not None and not disabled.enabled
    polled = leader.poll()
    assert polled is not None and not polled["report"].enabled, "a disabled entry is still listed, as disabled"
    assert entries.enable("report") == spec("report", every=None, crontab="0 3 * * *", options={"queue": "night"})
    versions.append(entries.version())
    assert leader.poll() is not None and leader.poll() is None
    assert entries.enable("missing") is None and entries.disable("missing") is None
    assert entries.get("report") is not None and entries.get("missing") is None
    assert entries.remove("report") and not entries.remove("report")
    versions.append(entries.version())
    assert leader.poll() == {} and leader.poll() is None
    assert len(set(versions)) == len(versions), versions


def test_hostile_stored_values_are_ignored_with_a_warning(backend: Backend, caplog) -> None:
    raw = backend.entries("contract")
    entries = StoredEntries(backend, "contract")
    entries.add(spec("good"))
    raw.put("evil", pickle.dumps({"task": "os.system"}).decode("latin-1"))
    raw.put("liar", spec("other").to_json())  # a valid entry, stored under another name
    with caplog.at_level(logging.WARNING, logger="singleton_tasks.entries"):
        assert entries.all() == {"good": spec("good")}
        assert set(entries.skipped) == {"evil", "liar"}
        assert StoredEntries(backend, "contract").poll() == {"good": spec("good")}
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "'evil'" in warned and "'liar'" in warned and "ignored" in warned
    with pytest.raises(InvalidEntry, match="evil"):
        entries.get("evil")
    assert entries.remove("evil"), "and an operator can remove it"


def test_every_change_by_another_process_is_announced(backend: Backend, store_url) -> None:
    """What lets a leader look at its stored entries only when they change (beat.STORED_SAFETY_POLL)."""
    heard: list[float] = []
    each = len(backend.labels) if isinstance(store_url, list) else 1  # every Redis node announces
    stop = StoredEntries(backend, "contract").on_change(lambda: heard.append(time.monotonic()))
    other = open_backend(parse_urls("singleton_backend_url", store_url), timeout=1.0)
    try:
        entries = StoredEntries(other, "contract")
        changes = [lambda: entries.add(spec("report")), lambda: entries.add(spec("report", every=20)),
                   lambda: entries.disable("report"), lambda: entries.remove("report")]
        for count, change in enumerate(changes, 1):
            change()
            wait_for(lambda: len(heard) >= count * each, 5, f"change {count} announced")
        assert entries.remove("report") is False
        StoredEntries(other, "elsewhere").add(spec("report"))  # another schedule's entries
        entries.add(spec("last"))
        wait_for(lambda: len(heard) >= 5 * each, 5, "the last change announced")
        assert len(heard) == 5 * each, "a removal of nothing and another schedule's change announce nothing here"
    finally:
        stop()
        other.close()
    entries.add(spec("after"))
    assert not [t for t in threading.enumerate() if "entries" in t.name or "watch" in t.name], "stop() ends it"


def test_a_redis_listener_calls_back_when_its_node_comes_back(redis_nodes_factory) -> None:
    """Redis forgets announcements sent while a listener is cut off, so its return is one."""
    nodes = redis_nodes_factory(1)
    backend = open_backend(nodes.urls, timeout=0.5)
    heard: list[float] = []
    stop = StoredEntries(backend, "beat").on_change(lambda: heard.append(time.monotonic()))
    try:
        nodes[0].restart()
        wait_for(lambda: heard, 10, "a call back after the reconnection")
        StoredEntries(backend, "beat").add(spec("report"))
        wait_for(lambda: len(heard) >= 2, 5, "a change heard on the new connection: it resubscribed")
    finally:
        stop()
        backend.close()


# -- Redis quorum -------------------------------------------------------------------------------

def test_redis_quorum_works_with_a_node_down_and_reads_the_newest(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3, persistent=True)
    backend = open_backend(nodes.urls, timeout=0.5)
    try:
        entries = StoredEntries(backend, "beat")
        entries.add(spec("report", every=10))
        nodes[2].kill()
        entries.add(spec("report", every=20))  # an edit node 2 misses
        entries.add(spec("added", every=30))
        nodes[2].start()
        nodes[0].kill()  # now nodes 1 (up to date) and 2 (behind) answer
        assert entries.all() == {"report": spec("report", every=20), "added": spec("added", every=30)}
        assert entries.poll() is not None and entries.poll() is None
        assert entries.remove("added")
        nodes[0].start()
        nodes[1].kill()  # nodes 0 (missed the removal) and 2 (saw it)
        assert entries.all() == {"report": spec("report", every=20)}, "a removal is not undone by a node that missed it"
        assert entries.poll() is not None, "the version rose with the removal"
        nodes[0].kill()
        with pytest.raises(LeaseError, match="needs 2 of 3 nodes"):
            entries.all()
        with pytest.raises(LeaseError):
            entries.add(spec("lost"))
    finally:
        backend.close()


def test_a_redis_node_never_takes_a_version_at_or_below_its_own(redis_nodes_factory) -> None:
    """What keeps versions rising on every node when two changes race: the script's own check."""
    from singleton_tasks.backends.redis.entries import PUT

    nodes = redis_nodes_factory(1)
    backend = open_backend(nodes.urls)
    try:
        store = backend.entries("beat")
        version = store.put("report", "first")
        entries_key, version_key = keys.entries_key("singleton:", "beat"), keys.entries_version_key("singleton:", "beat")
        for stale in (version, version - 1):
            record = json.dumps({"version": stale, "spec": "lost"})
            assert backend.nodes.run_script(PUT, [entries_key, version_key], [stale, "report", record]) == [
                [0, str(version).encode()]], "refused, with the node's counter"
        assert store.all() == (version, {"report": "first"})
        assert store.put("report", "second") == version + 1
    finally:
        backend.close()


def test_redis_reports_values_that_are_not_ours(redis_nodes_factory, caplog) -> None:
    nodes = redis_nodes_factory(1)
    backend = open_backend(nodes.urls)
    try:
        entries = StoredEntries(backend, "beat")
        entries.add(spec("good"))
        client = nodes[0].client()
        client.hset(keys.entries_key("singleton:", "beat"), "junk", b"\x80\x04not a record")
        with caplog.at_level(logging.WARNING, logger="singleton_tasks.entries"):
            assert entries.all() == {"good": spec("good")}
        assert "junk" in caplog.text and "not written by singleton-tasks" in caplog.text
        caplog.clear()
        assert entries.all() == {"good": spec("good")} and "junk" not in caplog.text, "reported once"
        client.set(keys.entries_version_key("singleton:", "beat"), "os.system('id')")
        with pytest.raises(LeaseError, match="not written by singleton-tasks"):
            entries.add(spec("more"))
        assert client.get(keys.entries_version_key("singleton:", "beat")) == b"os.system('id')", "never overwritten"
    finally:
        backend.close()


# -- what a poll costs ----------------------------------------------------------------------------

def _redis_calls(probe) -> dict[str, int]:
    """Calls per command on one node so far (the probe's own INFO left out); a script's inner
    commands count as well as the script."""
    stats = probe.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items() if name != "cmdstat_info"}


@pytest.mark.parametrize("count", [1, 3])
def test_an_unchanged_poll_is_one_command_per_redis_node(redis_nodes_factory, count: int) -> None:
    nodes = redis_nodes_factory(count)
    backend = open_backend(nodes.urls)
    try:
        entries = StoredEntries(backend, "beat")
        entries.add(spec("report"))
        assert entries.poll() is not None and entries.poll() is None  # scripts loaded, connections open
        probes = [node.client() for node in nodes]
        before = [_redis_calls(probe) for probe in probes]  # the probes' own connection set-up done
        assert all(entries.poll() is None for _ in range(5))
        for probe, was in zip(probes, before):
            now = _redis_calls(probe)
            spent = {name: calls - was.get(name, 0) for name, calls in now.items() if calls != was.get(name, 0)}
            # One EVALSHA per poll, sent to every node before any reply is read; its GET runs inside it.
            assert spent == {"cmdstat_evalsha": 5, "cmdstat_get": 5}, spent
        StoredEntries(backend, "beat").add(spec("report", every=5))
        assert entries.poll() == {"report": spec("report", every=5)}, "and a change is seen at the next poll"
    finally:
        backend.close()


def _etcd_requests(member_url: str) -> int:
    text = urllib.request.urlopen(member_url + "/metrics", timeout=5).read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("grpc_server_started_total") and "etcdserverpb" in line)


def test_an_unchanged_poll_is_one_etcd_request(etcd_cluster_factory) -> None:
    cluster = etcd_cluster_factory(1)
    backend = open_backend([cluster.etcd_url])
    try:
        entries = StoredEntries(backend, "beat")
        entries.add(spec("report"))
        assert entries.poll() is not None
        before = _etcd_requests(cluster[0].url)
        assert all(entries.poll() is None for _ in range(5))
        assert _etcd_requests(cluster[0].url) - before == 5
        StoredEntries(backend, "beat").add(spec("report", every=5))
        assert entries.poll() == {"report": spec("report", every=5)}
    finally:
        backend.close()
