"""NodeSet: one round per call over real redis-server nodes, from many threads at once."""

from __future__ import annotations

import re
import threading
import time

import pytest

from singleton_tasks.backends.redis.nodes import NodeSet, Script
from singleton_tasks.testing import RedisNode, SentinelNode

ECHO = Script("return {ARGV[1], redis.call('INCR', KEYS[1])}")


def test_concurrent_rounds_each_get_their_own_replies(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    node_set = NodeSet(nodes.urls, 2.0)
    wrong: list[tuple[str, object]] = []
    rounds = 300

    def worker(me: int) -> None:
        for n in range(rounds):
            mine = f"{me}:{n}"
            for reply in node_set.run_script(ECHO, ["count"], [mine]):
                if not isinstance(reply, list) or reply[0] != mine.encode():
                    wrong.append((mine, reply))

    threads = [threading.Thread(target=worker, args=(me,)) for me in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not wrong, f"replies crossed between rounds: {wrong[:5]}"
    counts = [int(node.client().get("count")) for node in nodes]
    assert counts == [6 * rounds] * 3, "every round ran exactly once on every node"


def test_a_restarted_node_is_reached_again_on_the_next_round(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    node_set = NodeSet(nodes.urls, 1.0)
    assert all(isinstance(r, list) for r in node_set.run_script(ECHO, ["count"], ["a"]))
    nodes[1].restart(wipe=True)  # its old connection is now closed by the server
    replies = node_set.run_script(ECHO, ["count"], ["b"])
    assert [r[1] for r in replies] == [2, 1, 2], f"the restarted node answered at once: {replies}"
    node_set.close()


def test_a_user_client_with_client_side_caching_works_on_both_paths(redis_node) -> None:
    import redis
    from redis.cache import CacheConfig

    client = redis.Redis(host="127.0.0.1", port=redis_node.port, protocol=3, cache_config=CacheConfig())
    node_set = NodeSet([client], 1.0)
    assert node_set.run_script(ECHO, ["count"], ["lane"]) == [[b"lane", 1]]
    lane = node_set._lanes[1][0]
    with lane.lock:  # the lane busy, as if another thread's round had it: the pool's (caching) connection
        # redis-py refuses client-side caching below Redis 7.4 (the embedded server is 6.2):
        # then the node answers with that error, and the round still returns, never raises.
        [reply] = node_set.run_script(ECHO, ["count"], ["pool"])
        assert reply == [b"pool", 2] or isinstance(reply, redis.ConnectionError), reply
    client.close()
    node_set.close()


def test_after_a_fork_the_child_uses_connections_of_its_own(redis_nodes_factory) -> None:
    import os

    nodes = redis_nodes_factory(3)
    node_set = NodeSet(nodes.urls, 2.0)
    assert [r[0] for r in node_set.run_script(ECHO, ["count"], ["parent"])] == [b"parent"] * 3
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its replies must be its own, on sockets of its own
        try:
            replies = node_set.run_script(ECHO, ["count"], ["child"])
            os.write(write_end, b"ok" if [r[0] for r in replies] == [b"child"] * 3 else repr(replies).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_end, 1000) == b"ok" and status == 0
    os.close(read_end)
    replies = node_set.run_script(ECHO, ["count"], ["parent again"])
    assert [r[0] for r in replies] == [b"parent again"] * 3, "the child did not disturb the parent's connections"
    assert [r[1] for r in replies] == [3, 3, 3]


def test_one_node_spelled_twice_is_refused(redis_node) -> None:
    import redis

    from singleton_tasks import ConfigurationError

    port = redis_node.port
    twice = [redis.Redis(host="localhost", port=port), redis.Redis(host="127.0.0.1", port=port, db=1),
             redis.Redis(host="127.0.0.1", port=port, db=0)]
    with pytest.raises(ConfigurationError) as err:
        NodeSet(twice, 1.0)
    assert "each node listed once" in str(err.value) and "same server and db" in str(err.value)
    with pytest.raises(ConfigurationError, match="same server and db"):
        NodeSet([f"redis://127.0.0.1:{port}", f"redis://127.0.0.1:{port}/1", f"redis://localhost:{port}/0"], 1.0)


def test_one_server_s_dbs_are_allowed_with_one_warning(redis_node, caplog) -> None:
    import logging

    from singleton_tasks import Lease

    dbs = [f"redis://127.0.0.1:{redis_node.port}/{db}" for db in range(3)]
    with caplog.at_level(logging.WARNING, logger="singleton_tasks.nodes"):
        lease = Lease("one-server", dbs, ttl=5)
    warnings = [r for r in caplog.records if r.name == "singleton_tasks.nodes" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per NodeSet"
    message = warnings[0].getMessage()
    assert "a quorum over one server is no quorum" in message and all(url in message for url in dbs), message
    assert lease.acquire(blocking=False), "allowed, only warned about"
    lease.release()
    lease.close()


@pytest.fixture
def extra_nodes():
    """RedisNode/SentinelNode objects a test starts itself; all cleaned up after it."""
    started: list[RedisNode] = []
    yield started
    for node in started:
        node.cleanup()


def start_cluster(started: list[RedisNode], masters: int = 3) -> list[RedisNode]:
    """A real Redis Cluster of ``masters`` masters on 127.0.0.1, the slots split among them, state ok."""
    import socket

    from singleton_tasks.testing import free_port

    def with_bus_port() -> int:  # Redis 6 listens for its cluster bus on port + 10000
        while True:
            port = free_port()
            if port + 10000 <= 65535:
                with socket.socket() as probe:
                    try:
                        probe.bind(("127.0.0.1", port + 10000))
                    except OSError:
                        continue
                return port

    nodes = [RedisNode(with_bus_port(), extra_args=["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
             for _ in range(masters)]
    started.extend(nodes)
    for node in nodes:
        node.start()
    admins = [node.client() for node in nodes]
    for admin in admins[1:]:
        admin.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
    share = 16384 // masters
    for i, admin in enumerate(admins):
        last = 16383 if i == masters - 1 else (i + 1) * share - 1
        admin.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, last + 1))  # ADDSLOTSRANGE: Redis 7
    give_up = time.monotonic() + 30
    while not all(b"cluster_state:ok" in a.execute_command("CLUSTER", "INFO")
                  and b"cluster_known_nodes:%d" % masters in a.execute_command("CLUSTER", "INFO") for a in admins):
        assert time.monotonic() < give_up, "the cluster never became ok"
        time.sleep(0.05)
    for admin in admins:
        admin.close()
    return nodes


def test_a_redis_cluster_client_is_refused_clearly(extra_nodes) -> None:
    from redis.cluster import RedisCluster

    from singleton_tasks import ConfigurationError, Lease

    nodes = start_cluster(extra_nodes)
    cluster = RedisCluster(host="127.0.0.1", port=nodes[0].port)
    assert cluster.ping() and len(cluster.get_primaries()) == 3
    for spec in (cluster, [cluster]):
        with pytest.raises(ConfigurationError, match="a Redis Cluster client is not supported as a lease node"):
            NodeSet(spec, 1.0)
        with pytest.raises(ConfigurationError, match="independent Redis servers.*Sentinel"):
            Lease("clustered", spec)
    cluster.close()


def test_a_url_of_a_redis_cluster_node_is_refused_clearly(extra_nodes, redis_node) -> None:
    from singleton_tasks import Lease
    from singleton_tasks.backends.redis import RedisBackend

    nodes = start_cluster(extra_nodes)
    urls = [node.url for node in nodes]
    refused = r"is a Redis Cluster node .*Redis Cluster is not supported as a lease node.*independent Redis servers.*Sentinel"

    # At start-up: the warnings name every cluster node and say what to use instead.
    backend = RedisBackend(urls, timeout=1.0)
    warnings = backend.startup_warnings()
    assert len(warnings) == 3 and all(re.search(refused, w) for w in warnings), warnings
    # At check: every node fails, with that message, before any key is written.
    results = backend.check()
    assert [label for label, _ in results] == backend.labels
    assert all(problem and problem.startswith("cluster: ") and re.search(refused, problem) for _, problem in results)
    for node in nodes:
        assert node.client().dbsize() == 0
    # A lease on them is never granted, and says why (not MOVED or CROSSSLOT).
    lease = Lease("clustered", urls, ttl=5)
    assert not lease.acquire(blocking=False)
    assert lease.unreachable and re.search(refused, lease.unreachable), lease.unreachable
    assert "MOVED" not in lease.unreachable and "CROSSSLOT" not in lease.unreachable
    lease.close()
    backend.close()

    # A plain node next to it is not refused: the check is of the server, not of the URL.
    plain = RedisBackend([redis_node.url], timeout=1.0)
    assert not any("Redis Cluster" in w for w in plain.startup_warnings())
    assert plain.check() == [(redis_node.url, None)]
    plain.close()


def test_sentinel_managed_clients_are_labelled_by_service_and_hold_a_lease(redis_nodes_factory, extra_nodes) -> None:
    from redis.sentinel import Sentinel

    from singleton_tasks import ConfigurationError, Lease

    masters = redis_nodes_factory(3)
    services = {f"svc{i}": node.port for i, node in enumerate(masters)}
    sentinels = [SentinelNode(services), SentinelNode(services)]
    extra_nodes.extend(sentinels)
    for sentinel in sentinels:
        sentinel.start()
    manager = Sentinel([s.address for s in sentinels], socket_timeout=2)
    clients = [manager.master_for(name) for name in services]
    node_set = NodeSet(clients, 1.0)
    where = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    assert node_set.labels == [f"redis+sentinel://{where}/{name}?db=0" for name in services]
    node_set.close()

    lease = Lease("watched", clients, ttl=5)
    assert lease.nodes.labels == node_set.labels
    assert lease.acquire(blocking=False)
    held = [m.client().get(lease.key) for m in masters]
    assert all(held), f"each service's master holds the lease: {held}"
    assert lease.renew()
    lease.release()
    assert [m.client().exists(lease.key) for m in masters] == [0, 0, 0]
    lease.close()

    # One service through another Sentinel object (its sentinels listed in another order) is one node.
    again = Sentinel([s.address for s in reversed(sentinels)]).master_for("svc0")
    with pytest.raises(ConfigurationError, match="same server and db"):
        NodeSet([clients[0], clients[1], again], 1.0)
