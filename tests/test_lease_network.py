"""The lease over a faulty network: a TCP relay (``netproxy``) in front of each node delays
replies past the TTL, or cuts a leader off from the majority and then delivers what it sent
late, after a new leader took over. Each test checks that the fault really fired: the slow
grants really happened on the nodes, the held commands really crossed after the heal."""

from __future__ import annotations

import json
import time
from typing import Iterator

import pytest

from netproxy import TcpProxy
from procs import wait_for
from singleton_tasks import Lease
from singleton_tasks.testing import RedisNodes


@pytest.fixture
def linked(redis_nodes_factory) -> Iterator[tuple[RedisNodes, list[TcpProxy]]]:
    nodes = redis_nodes_factory(3)
    links = [TcpProxy(node.port) for node in nodes]
    yield nodes, links
    for link in links:
        link.close()


def test_grants_that_arrive_after_the_ttl_count_for_nothing(linked) -> None:
    nodes, links = linked
    lease = Lease("slow", [link.url for link in links], ttl=1.0, op_timeout=5.0)
    assert lease.acquire(blocking=False), "through healthy links it is granted"
    lease.release()  # connections are open and scripts loaded: what follows is one exchange
    fences_before = [int(node.client().get(lease.fence_key)) for node in nodes]
    for link in links:
        link.delay(0.6)  # each way: a round trip of 1.2 s, more than the 1 s TTL
    started = time.monotonic()
    assert not lease.acquire(blocking=False), "every node said yes, but after the TTL"
    took = time.monotonic() - started
    assert took >= 1.0, f"the replies really were late: {took:.2f}s"
    assert not lease.held and lease.token is None and lease.valid_for() == 0.0
    fences = [int(node.client().get(lease.fence_key)) for node in nodes]
    assert all(after > before for after, before in zip(fences, fences_before)), \
        "the nodes did grant it (their fences rose): only the lateness made it void"
    for link in links:
        link.heal()
    other = Lease("slow", nodes.urls, ttl=1.0)
    assert other.acquire(timeout=3), "the void grant does not block the next holder past its TTL"
    assert other.token is not None and other.token > max(fences)
    other.release()


def test_a_leader_cut_off_from_the_majority_and_its_late_commands_do_no_harm(linked) -> None:
    nodes, links = linked
    old = Lease("cut", [link.url for link in links], ttl=3.0, op_timeout=0.3)
    assert old.acquire(blocking=False)
    assert old.renew(), "a renewal before the cut loads the script: the late ones below will run"
    old_token = old.token
    deadline = time.monotonic() + old.valid_for()
    links[0].cut()
    links[1].cut()

    # The renewals cannot reach a majority: the lease ends at its deadline, never later.
    while old.held:
        assert time.monotonic() < deadline + 0.01, "held past its validity deadline"
        assert not old.renew(), "a renewal without a majority must fail"
        time.sleep(0.05)
    assert links[0].held_chunks and links[1].held_chunks, "renewals were sent into the cut and held"

    # A new holder, with a shorter TTL, takes over once the old keys expire on the majority.
    new = Lease("cut", nodes.urls, ttl=2.0)
    assert new.acquire(timeout=8), "the new holder takes over after the old keys expire"
    assert new.token is not None and old_token is not None and new.token > old_token

    # The partition heals: the old holder's renewals (PEXPIRE 3000 ms) now reach the nodes.
    links[0].heal()
    links[1].heal()
    wait_for(lambda: links[0].late_chunks and links[1].late_chunks, 5, "the held commands to cross")
    # Every connection the old holder made through the cut timed out and was closed; a node
    # closes its side only after running all that came before the close.
    wait_for(lambda: links[0].open_upstreams == links[1].open_upstreams == 0, 5, "the nodes to run them")
    holder = new.holder()
    assert holder is not None and holder["token"] == new.token, "the new holder still holds it"
    for node in nodes[:2]:  # the healed nodes, where the late commands arrived
        client = node.client()
        assert json.loads(client.get(new.key))["id"] == holder["id"]
        assert client.pttl(new.key) <= 2000, "a late renewal from the old owner must not extend the new key"
    assert new.renew() and new.held
    assert not old.held and not old.renew(), "the old owner does not come back by itself"
    new.release()
