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
