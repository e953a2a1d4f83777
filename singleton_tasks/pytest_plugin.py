"""pytest fixtures that start real redis-server processes.

Enable in a test suite with ``pytest_plugins = ["singleton_tasks.pytest_plugin"]``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from .testing import RedisNode, RedisNodes


@pytest.fixture
def redis_nodes_factory() -> Iterator[Callable[..., RedisNodes]]:
    """Call with ``(count, persistent=False)``; every group started is stopped after the test."""
    groups: list[RedisNodes] = []

    def start(count: int = 1, persistent: bool = False) -> RedisNodes:
        group = RedisNodes(count, persistent=persistent)
        groups.append(group)
        return group

    yield start
    for group in groups:
        group.close()


@pytest.fixture
def redis_node(redis_nodes_factory: Callable[..., RedisNodes]) -> RedisNode:
    """One fresh, empty redis-server for this test."""
    return redis_nodes_factory(1)[0]


@pytest.fixture
def redis_url(redis_node: RedisNode) -> str:
    return redis_node.url
