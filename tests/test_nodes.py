"""NodeSet: one round per call over real redis-server nodes, from many threads at once."""

from __future__ import annotations

import threading

from singleton_tasks.nodes import NodeSet, Script

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
