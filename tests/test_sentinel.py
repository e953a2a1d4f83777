"""Sentinel-managed masters as lease nodes, named by ``redis+sentinel://`` URLs, on real sentinels.

A setting names each master by its sentinels and service; the lease works through them, and a
real Sentinel failover of one master of a 3-node quorum changes nothing for the holder: it
keeps the lease (two nodes keep the majority while the third moves), its client follows the
promoted replica, and later tokens are larger.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import redis

from procs import wait_for
from singleton_tasks import ConfigurationError, LeaderElector
from singleton_tasks.conf import read_settings
from singleton_tasks.testing import RedisNode, SentinelNode


@pytest.fixture
def servers() -> Iterator[list[RedisNode]]:
    """Servers a test starts itself (masters, replicas, sentinels); all cleaned up after it."""
    started: list[RedisNode] = []
    yield started
    for node in started:
        node.cleanup()


def start(servers: list[RedisNode], node: RedisNode) -> RedisNode:
    servers.append(node)
    return node.start()


def sentinel_url(sentinels: list[SentinelNode], service: str, db: int = 0) -> str:
    return f"redis+sentinel://{','.join(f'127.0.0.1:{s.port}' for s in sentinels)}/{service}?db={db}"


def test_settings_name_sentinel_managed_masters_and_the_lease_works_through_them(servers) -> None:
    masters = [start(servers, RedisNode()) for _ in range(3)]
    services = {f"svc{i}": m.port for i, m in enumerate(masters)}
    sentinels = [start(servers, SentinelNode(services)) for _ in range(2)]
    urls = [sentinel_url(sentinels, name, db=1) for name in services]
    settings = read_settings({"singleton_backend_url": urls})
    assert settings.backend_urls == tuple(urls)
    backend = settings.open_backend()
    try:
        assert list(backend.labels) == urls, "labelled by sentinels and service, as written"
        lease = backend.lease("beat:beat", 5)
        assert lease.acquire(blocking=False) and lease.token is not None
        held = [m.client(db=1).get(lease.key) for m in masters]
        assert all(held) and len(set(held)) == 1, f"each service's master holds the lease in db 1: {held}"
        assert lease.renew()
        [state] = backend.leases()
        assert state.holder is not None and state.holder["token"] == lease.token
        assert list(state.nodes) == urls and all(a.owner == state.holder["id"] for a in state.nodes.values())
        lease.release()
        assert [m.client(db=1).exists(lease.key) for m in masters] == [0, 0, 0]
    finally:
        backend.close()


@pytest.mark.parametrize("value, wrong", [
    ("redis+sentinel://127.0.0.1:26379/", "the service name is missing"),
    ("redis+sentinel://127.0.0.1:26379,127.0.0.1:99999/svc", "port '99999' is not a TCP port"),
    ("redis+sentinel://127.0.0.1:26379/svc?db=x", "db='x' is not a database number"),
    ("redis+sentinel://127.0.0.1:26379/svc?ssl=true", "unknown option ssl"),
    ("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", "kombu's sentinel:// names no service"),
])
def test_a_wrong_sentinel_url_names_the_setting_and_the_value(value: str, wrong: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        read_settings({"singleton_redis_url": value})
    assert err.value.setting == "singleton_redis_url" and err.value.value == value
    assert wrong in str(err.value) and "SERVICE" in str(err.value), str(err.value)


def role(node: RedisNode) -> tuple[str, int | None]:
    """The node's replication role, and the port of its master when it is a replica."""
    info: dict[str, Any] = node.client(socket_timeout=2).info("replication")
    return str(info["role"]), (int(info["master_port"]) if info["role"] == "slave" else None)


def test_a_sentinel_failover_of_one_quorum_node_keeps_the_leader_and_is_followed(servers) -> None:
    plain = [start(servers, RedisNode()) for _ in range(2)]
    primary = start(servers, RedisNode())
    replica = start(servers, RedisNode(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]))
    sentinels = [start(servers, SentinelNode({"svc": primary.port})) for _ in range(2)]
    watcher = redis.Redis(host="127.0.0.1", port=sentinels[0].port, decode_responses=True, socket_timeout=2)

    def replica_known() -> bool:
        return any(r["port"] == replica.port and "s_down" not in r["flags"] and r["master-link-status"] == "ok"
                   for r in watcher.sentinel_slaves("svc"))

    wait_for(replica_known, 30, "the sentinels to know the replica in sync (it is the one to promote)")
    settings = read_settings({"singleton_backend_url": [plain[0].url, plain[1].url, sentinel_url(sentinels, "svc")],
                              "singleton_lease_ttl": 3})
    backend = settings.open_backend()
    lost: list[float] = []
    elector = LeaderElector(backend.lease("beat:beat", settings.lease_ttl), on_lost=lambda: lost.append(time.monotonic()))
    try:
        elector.start()
        assert elector.wait_for_leadership(10)
        lease = elector.lease
        token = lease.token
        assert token is not None
        wait_for(lambda: replica.client().get(lease.key), 5, "the lease key to reach the replica")
        old_master_id = primary.client().info("server")["run_id"]

        assert watcher.execute_command("SENTINEL", "FAILOVER", "svc")
        # The fault fired: the sentinels name the replica as master, which says so itself, and
        # the old master now follows it.
        wait_for(lambda: int(watcher.sentinel_get_master_addr_by_name("svc")[1]) == replica.port, 30,
                 "the sentinels to name the promoted replica")
        wait_for(lambda: role(replica) == ("master", None) and role(primary) == ("slave", replica.port), 30,
                 "the replica promoted and the old master demoted")
        assert replica.client().info("server")["run_id"] != old_master_id

        # Two plain nodes kept the majority while the third moved (its writes went to the old
        # master until the sentinels demoted it: lost, as Sentinel's asynchronous replication allows).
        assert elector.is_leader and lease.token == token and not lost, "the same leader kept it throughout"

        elector.stop()  # hands over; the next grant must reach the promoted master
        again = backend.lease("beat:beat", settings.lease_ttl)
        assert again.acquire(blocking=False) and again.token is not None and again.token > token, (again.token, token)
        owner = plain[0].client().get(again.key)
        assert replica.client().get(again.key) == owner, "the client follows: granted on the promoted master"
        assert int(replica.client().get(again.fence_key)) == again.token, "its fence records the new token"
        [state] = backend.leases()
        answer = state.nodes[sentinel_url(sentinels, "svc")]
        assert state.holder is not None and answer.error is None and answer.owner == state.holder["id"], state
        again.release()
    finally:
        elector.stop()
        backend.close()
        watcher.close()
