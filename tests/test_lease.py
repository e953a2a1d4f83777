"""The lease against real redis-server processes, one client process."""

from __future__ import annotations

import json
import time

import pytest

from singleton_tasks import Lease
from singleton_tasks.clock import ManualClock
from singleton_tasks.errors import ConfigurationError, MalformedLeaseValue
from singleton_tasks.timing import clock_drift, validity_deadline


def test_validity_arithmetic_is_pure() -> None:
    assert clock_drift(10.0) == pytest.approx(0.102)
    assert validity_deadline(100.0, 10.0) == pytest.approx(109.898)


@pytest.mark.parametrize("count", [1, 3, 5])
def test_one_holder_at_a_time_and_release_hands_over(redis_nodes_factory, count) -> None:
    nodes = redis_nodes_factory(count)
    a, b = Lease("job", nodes.urls, ttl=5), Lease("job", nodes.urls, ttl=5)
    assert a.acquire(blocking=False)
    assert a.held and a.token is not None and 4.8 < a.valid_for() <= 5
    assert not b.acquire(blocking=False)
    assert not b.held and b.token is None and b.valid_for() == 0.0
    first = a.token
    a.release()
    a.release()  # idempotent
    assert not a.held and a.token is None
    assert b.acquire(blocking=False)
    assert b.token > first


def test_validity_follows_the_injected_clock(redis_node) -> None:
    clock = ManualClock()
    lease = Lease("clocked", redis_node.url, ttl=10, clock=clock)
    assert lease.acquire(blocking=False)
    assert lease.valid_for() == pytest.approx(10 - clock_drift(10))
    clock.advance(9.8)
    assert lease.held and lease.valid_for() == pytest.approx(0.098)
    clock.advance(0.1)
    assert not lease.held and lease.token is None and lease.valid_for() == 0.0
    assert not lease.renew(), "a renewal after the deadline must fail"
    assert not lease.held


def test_renew_extends_validity_from_the_time_it_was_sent(redis_node) -> None:
    clock = ManualClock()
    lease = Lease("renewed", redis_node.url, ttl=10, clock=clock)
    assert lease.acquire(blocking=False)
    token = lease.token
    clock.advance(5)
    assert lease.renew()
    assert lease.valid_for() == pytest.approx(10 - clock_drift(10))
    assert lease.token == token, "a renewal keeps the grant's token"
    ttl_ms = redis_node.client().pttl("singleton:{renewed}:lease")
    assert 9000 < ttl_ms <= 10000


def test_tokens_strictly_increase_over_grants(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("tokens", nodes.urls, ttl=5)
    seen = []
    for _ in range(50):
        assert lease.acquire(blocking=False)
        seen.append(lease.token)
        lease.release()
    assert all(b > a for a, b in zip(seen, seen[1:]))
    assert seen[1] == seen[0] + 1, "after the first grant, tokens count up by one"


def test_keys_are_hash_tagged_plain_strings_under_the_prefix(redis_node) -> None:
    a = Lease("report", redis_node.url, prefix="app1:")
    b = Lease("report", redis_node.url, prefix="app2:")
    assert a.acquire(blocking=False) and b.acquire(blocking=False), "different prefixes never collide"
    client = redis_node.client()
    assert sorted(client.keys("*")) == [
        b"app1:{report}:fence", b"app1:{report}:lease", b"app2:{report}:fence", b"app2:{report}:lease"
    ]
    owner = json.loads(client.get("app1:{report}:lease"))
    assert set(owner) == {"host", "pid", "id"}
    assert int(client.get("app1:{report}:fence")) == a.token


def test_holder_reports_identity_token_and_ttl(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("who", nodes.urls, ttl=5)
    assert lease.holder() is None
    assert lease.acquire(blocking=False)
    info = Lease("who", nodes.urls).holder()
    assert info is not None
    import os
    assert info["pid"] == os.getpid() and info["token"] == lease.token and 4 < info["ttl"] <= 5


def test_minority_loss_changes_nothing_majority_loss_drops_the_lease(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("quorum", nodes.urls, ttl=5)
    assert lease.acquire(blocking=False)
    nodes[0].kill()
    assert lease.renew() and lease.held
    nodes[1].kill()
    assert not lease.renew(), "one node of three is not a majority"
    assert lease.held, "unreachable nodes are not a refusal: validity runs to its deadline"
    nodes[0].restart(wipe=True)
    nodes[1].restart(wipe=True)
    assert not lease.renew() and not lease.held, "a majority that no longer has our key is a refusal"


def test_a_paused_node_costs_one_timeout_not_a_crash(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("paused", nodes.urls, ttl=2, op_timeout=0.2)
    assert lease.acquire(blocking=False)
    nodes[2].pause()
    try:
        started = time.monotonic()
        assert lease.renew()
        elapsed = time.monotonic() - started
        assert 0.15 < elapsed < 1.0, f"renew waited {elapsed:.3f}s for the paused node"
    finally:
        nodes[2].resume()


def test_acquire_needs_a_majority_and_cleans_up_partial_grants(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    nodes[0].kill()
    nodes[1].kill()
    lease = Lease("partial", nodes.urls, ttl=5)
    assert not lease.acquire(blocking=False)
    assert nodes[2].client().get("singleton:{partial}:lease") is None, "the minority grant was undone"


def test_blocking_acquire_times_out(redis_node) -> None:
    Lease("busy", redis_node.url, ttl=5).acquire()
    started = time.monotonic()
    assert not Lease("busy", redis_node.url, ttl=5, retry_interval=0.05).acquire(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2


def test_fence_survives_minority_wipes_and_rises_from_the_clock_after_a_total_wipe(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("amnesia", nodes.urls, ttl=5)
    assert lease.acquire(blocking=False)
    first = lease.token
    lease.release()
    nodes[0].restart(wipe=True)
    assert lease.acquire(blocking=False)
    assert lease.token == first + 1, "two remembering nodes of three carry the history"
    assert int(nodes[0].client().get("singleton:{amnesia}:fence")) == first + 1, "the wiped node was repaired"
    lease.release()
    for node in nodes:
        node.restart(wipe=True)
    assert lease.acquire(blocking=False)
    assert lease.token > first + 1, "after a total wipe the token comes from the wall clock"


def test_malformed_values_are_reported_not_run(redis_node, caplog) -> None:
    client = redis_node.client()
    client.set("singleton:{bad}:lease", b"\x80\x04K\x01.")  # a pickle, which must never be loaded
    lease = Lease("bad", redis_node.url, ttl=5)
    with pytest.raises(MalformedLeaseValue, match="singleton:\\{bad\\}:lease"):
        lease.holder()
    assert not lease.acquire(blocking=False)
    assert "singleton:{bad}:lease" in caplog.text and "until it is deleted" in caplog.text
    client.delete("singleton:{bad}:lease")
    client.set("singleton:{bad}:fence", "not-a-number")
    assert not lease.acquire(blocking=False), "no token can be counted on the only node"
    assert "singleton:{bad}:fence" in caplog.text and "not counted" in caplog.text
    assert client.get("singleton:{bad}:lease") is None, "the grant was undone"
    assert client.get("singleton:{bad}:fence") == b"not-a-number", "a value we did not write is left as it is"


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"nodes": []}, "nodes"),
        ({"nodes": "http://example"}, "nodes"),
        ({"ttl": 0.01}, "ttl"),
        ({"ttl": "10"}, "ttl"),
        ({"name": ""}, "name"),
        ({"name": "a{b}"}, "name"),
    ],
)
def test_bad_arguments_name_the_setting_and_value(kwargs, setting, redis_node) -> None:
    args = {"name": "x", "nodes": redis_node.url, **kwargs}
    with pytest.raises(ConfigurationError) as err:
        Lease(args.pop("name"), args.pop("nodes"), **args)
    assert err.value.setting == setting
    assert setting in str(err.value) and repr(kwargs[setting] if setting in kwargs else "") in str(err.value)


def test_even_or_duplicate_node_lists_are_refused(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(2)
    with pytest.raises(ConfigurationError, match="odd number"):
        Lease("x", nodes.urls)
    with pytest.raises(ConfigurationError, match="once"):
        Lease("x", [nodes[0].url, nodes[0].url, nodes[1].url])
