"""A set of independent Redis nodes, spoken to in parallel.

One call sends the same script to every node first and only then reads the replies, so a
round over five nodes costs about one round trip, not five. A node that fails answers with
its exception instead of a reply; it never fails the whole round. A round never leaves a reply
unread on a connection it gives back, even when interrupted (a signal handler's SystemExit).

A quorum needs independent nodes, so a node is known by its ``Endpoint``: the server and
database it reaches, however it is spelled. Two spellings of one endpoint are refused; several
databases of one server are allowed with a warning (they fail together, as one node).

A Redis Cluster is refused: a ``RedisCluster`` client when the set is built, and a node of a
cluster reached through a plain URL at its first connection (``INFO cluster`` says
``cluster_enabled:1``): every command on it then fails with ``ClusterNodeRefused``, whose
message says what to use instead, rather than later with MOVED or CROSSSLOT errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import redis
from redis.cluster import RedisCluster
from redis.connection import ConnectionPool, parse_url
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry
from redis.backoff import NoBackoff
from redis.sentinel import SentinelConnectionPool

from ...errors import ConfigurationError
from . import sentinel

log = logging.getLogger("singleton_tasks.nodes")

NodeSpec = Union[str, "redis.Redis"]  # a URL or a ready client


@dataclass(frozen=True)
class Script:
    """A Lua script sent by SHA, with its source as the fallback for a node that lacks it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


@dataclass(frozen=True)
class Endpoint:
    """Where a node's keys live, normalised: two spellings of one place share a server.

    ``addresses`` are what reaches the server: resolved ``address:port`` pairs (every
    loopback spelling is ``loopback:port``), a unix socket's real path, or, for a Sentinel
    ``service``, the sentinels' addresses. Default port 6379 and db 0 are filled in.
    """

    kind: str  # "tcp" (redis:// and rediss://), "unix" or "sentinel"
    addresses: frozenset[str]
    db: int
    service: str = ""

    def same_server(self, other: "Endpoint") -> bool:
        # Any common address: a name and an address it resolves to are one server.
        return (self.kind, self.service) == (other.kind, other.service) and not self.addresses.isdisjoint(
            other.addresses
        )

    def same_node(self, other: "Endpoint") -> bool:
        return self.same_server(other) and self.db == other.db


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _addresses(host: str, port: int) -> frozenset[str]:
    host = host.strip("[]").lower()
    if host in _LOOPBACK:
        return frozenset({f"loopback:{port}"})
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):  # unresolvable here (maybe resolvable where it runs): compare as spelled
        found = {host}
    return frozenset(f"{'loopback' if a in _LOOPBACK else a}:{port}" for a in found)


def _int(value: Any, default: int) -> int:
    return default if value is None or value == "" else int(value)


def _kwargs(node: NodeSpec) -> Mapping[str, Any]:
    if isinstance(node, str):  # a URL means what redis-py makes of it: from_url uses parse_url
        parsed: Mapping[str, Any] = parse_url(node)  # type: ignore[no-untyped-call]
        return parsed
    return node.connection_pool.connection_kwargs


def _sentinels(pool: SentinelConnectionPool) -> list[tuple[str, int]]:
    manager = pool.sentinel_manager
    return [
        (str(kw.get("host", "localhost")), _int(kw.get("port"), 26379))
        for kw in (s.connection_pool.connection_kwargs for s in getattr(manager, "sentinels", ()))
    ]


def endpoint(node: NodeSpec) -> Endpoint:
    """The normalised endpoint of a URL or client; a URL redis-py cannot parse raises ``ValueError``.

    Host names are resolved (``socket.getaddrinfo``); a name that does not resolve is kept as written.
    """
    watched = _watched(node)
    if watched is not None:
        sentinels, service, db = watched
        return Endpoint("sentinel", frozenset[str]().union(*(_addresses(h, p) for h, p in sentinels)), db, service)
    kw = _kwargs(node)
    db = _int(kw.get("db"), 0)
    if kw.get("path"):
        return Endpoint("unix", frozenset({os.path.realpath(kw["path"])}), db)
    return Endpoint("tcp", _addresses(str(kw.get("host", "localhost")), _int(kw.get("port"), 6379)), db)


def _watched(node: NodeSpec) -> tuple[list[tuple[str, int]], str, int] | None:
    """The sentinels, service and db of a Sentinel-managed node (a URL or a client), else None."""
    if isinstance(node, str):
        if not node.startswith(sentinel.SCHEME):
            return None
        parsed = sentinel.parse_sentinel_url(node)
        return list(parsed.sentinels), parsed.service, parsed.db
    if isinstance(node.connection_pool, SentinelConnectionPool):
        pool = node.connection_pool
        return _sentinels(pool), str(pool.service_name), _int(pool.connection_kwargs.get("db"), 0)
    return None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def label(node: NodeSpec) -> str:
    """How a node is shown in messages: its server (as spelled) and db, never its credentials."""
    watched = _watched(node)
    if watched is not None:
        sentinels, service, db = watched
        return f"{sentinel.SCHEME}{','.join(_host_port(h, p) for h, p in sentinels)}/{service}?db={db}"
    kw = _kwargs(node)
    db = _int(kw.get("db"), 0)
    if kw.get("path"):
        return f"unix://{kw['path']}?db={db}"
    return f"redis://{_host_port(str(kw.get('host', 'localhost')), _int(kw.get('port'), 6379))}/{db}"


def check_independent(setting: str, value: object, nodes: Sequence[NodeSpec]) -> list[Endpoint]:
    """The nodes' endpoints, once no node is listed twice (however spelled).

    Raises ``ConfigurationError`` naming ``setting`` and ``value`` for a node listed twice or a
    URL redis-py cannot parse. Several databases of one server pass: they are warned about
    where a NodeSet is built, not refused.
    """
    try:
        endpoints = [endpoint(n) for n in nodes]
    except ValueError as exc:
        raise ConfigurationError(setting, value, f"Redis URLs that redis-py can parse ({exc})") from None
    for j, later in enumerate(endpoints):
        for i in range(j):
            if endpoints[i].same_node(later):
                raise ConfigurationError(
                    setting, value,
                    f"each node listed once: {label(nodes[i])} and {label(nodes[j])} are the same server and db"
                    " (a duplicate would count twice towards the majority)",
                )
    return endpoints


def shared_servers(endpoints: Sequence[Endpoint]) -> list[list[int]]:
    """Groups (of indexes, two or more each) of nodes that are different databases of one server."""
    groups: list[list[int]] = []
    for j, later in enumerate(endpoints):
        for group in groups:
            if endpoints[group[0]].same_server(later):
                group.append(j)
                break
        else:
            groups.append([j])
    return [g for g in groups if len(g) > 1]


#: What to use instead of a Redis Cluster, in every message that refuses one.
INSTEAD_OF_CLUSTER = ("give the URLs of an odd number of independent Redis servers (masters without"
                      " cluster-enabled), or of Sentinel-managed masters (redis+sentinel://)")


class ClusterNodeRefused(RedisError):
    """A node is part of a Redis Cluster, which is not supported as a lease node."""


def cluster_refusal(where: str) -> str:
    """Why the cluster node ``where`` is refused, and what to use instead."""
    return (f"{where} is a Redis Cluster node (cluster_enabled:1): Redis Cluster is not supported as a lease node"
            " (a cluster's masters are not independent voters, and each key lives on only one of them);"
            f" {INSTEAD_OF_CLUSTER}")


def is_cluster_info(info: Any) -> bool:
    """Whether an ``INFO cluster`` reply (raw or parsed) says the server is a cluster node."""
    if isinstance(info, Mapping):
        return str(info.get("cluster_enabled", "0")) == "1"
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    return any(line.strip() == "cluster_enabled:1" for line in text.splitlines())


def _refuse_cluster(conn: Any) -> None:
    """A connection's set-up (redis-py's ``redis_connect_func``): refuse a cluster node, once per connection."""
    conn.on_connect()
    try:
        conn.send_command("INFO", "cluster")
        info = conn.read_response()
    except ResponseError:  # INFO not allowed to this user: cannot tell here (``check`` says what fails)
        return
    if is_cluster_info(info):
        path = getattr(conn, "path", None)
        where = (f"unix://{path}" if path else
                 f"redis://{_host_port(str(getattr(conn, 'host', '?')), _int(getattr(conn, 'port', None), 6379))}")
        raise ClusterNodeRefused(cluster_refusal(where))


def _reject_unsupported(spec: object) -> None:
    if isinstance(spec, RedisCluster):
        raise ConfigurationError(
            "nodes", spec,
            "a Redis URL or a redis.Redis client; a Redis Cluster client is not supported as a lease node"
            f" (a cluster's masters are not independent voters, and each key lives on only one of them): {INSTEAD_OF_CLUSTER}",
        )
    if not isinstance(spec, (str, redis.Redis)):
        raise ConfigurationError("nodes", spec, "a redis:// URL or a redis.Redis client")


def make_client(url: str, timeout: float) -> "redis.Redis":
    """A client whose every wait is bounded by ``timeout`` and which never retries on its own.

    Retrying belongs to the lease, which knows how much validity is left; redis-py's default
    backoff could otherwise sleep past a lease's deadline. A plain URL's connections refuse a
    Redis Cluster node (``ClusterNodeRefused``) when they connect.
    """
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    try:
        if url.startswith(sentinel.SCHEME):  # the sentinels are asked with the same bounds
            return sentinel.master_client(sentinel.parse_sentinel_url(url), options)
        return redis.Redis.from_url(url, redis_connect_func=_refuse_cluster, **options)
    except ValueError as exc:
        raise ConfigurationError("nodes", url, f"a redis:// URL ({exc})") from None


class NodeSet:
    """The N nodes of one lease; answers each round with one result per node, in order."""

    def __init__(self, nodes: NodeSpec | Sequence[NodeSpec], timeout: float) -> None:
        # Anything but an iterable of nodes is one node (then refused if it is no client):
        # a RedisCluster is not iterable but indexable, by key name, so list() of it would GET key 0.
        specs: list[Any] = (
            [nodes] if isinstance(nodes, (str, redis.Redis)) or not isinstance(nodes, Iterable) else list(nodes)
        )
        if not specs:
            raise ConfigurationError("nodes", nodes, "at least one Redis URL or client")
        for spec in specs:
            _reject_unsupported(spec)
        #: The bound on every network wait of the clients made here from URLs (a client passed in keeps its own).
        self.timeout = timeout
        self.clients = [make_client(s, timeout) if isinstance(s, str) else s for s in specs]
        self.labels = [label(c) for c in self.clients]
        endpoints = check_independent("nodes", self.labels, self.clients)
        if len(self.clients) % 2 == 0:
            raise ConfigurationError(
                "nodes", self.labels, "an odd number of nodes (an even count tolerates no more failures than one fewer)"
            )
        shared = shared_servers(endpoints)
        if shared:  # allowed (a test setup may want it) but never what production means
            log.warning(
                "lease nodes %s: a quorum over one server is no quorum (its databases fail together);"
                " use independent Redis servers",
                "; ".join(" and ".join(self.labels[i] for i in group) + " are databases of one server"
                          for group in shared),
            )
        # One connection of our own per node, for one round at a time: a pool checkout costs
        # some bookkeeping per node per round. A round that finds a node's lane busy (another
        # thread's round) takes a pooled connection instead. Replaced as a whole after a fork.
        self._lanes = (os.getpid(), [_Lane() for _ in self.clients])

    def __len__(self) -> int:
        return len(self.clients)

    @property
    def quorum(self) -> int:
        return len(self.clients) // 2 + 1

    def run_script(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], only: Sequence[int] | None = None
    ) -> list[Any]:
        """Run ``script`` on every node (or the indexes in ``only``); a failure is returned, not raised."""
        indexes = range(len(self.clients)) if only is None else only
        results: dict[int, Any] = {}
        out: dict[int, tuple[Any, _Lane | None]] = {}  # checked out, not yet given back
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        packed: dict[tuple[str, str], Any] = {}  # packed once per encoding, not once per node
        lanes = self._current_lanes()
        try:
            for i in indexes:
                try:
                    out[i] = self._checkout(i, lanes[i])
                    conn = out[i][0]
                    encoder = getattr(conn, "encoder", None)  # a caching proxy connection has none
                    if encoder is None:
                        conn.send_command(*command)
                    else:
                        encoding = (encoder.encoding, encoder.encoding_errors)
                        if encoding not in packed:
                            packed[encoding] = conn.pack_command(*command)
                        conn.send_packed_command(packed[encoding])
                except (RedisError, OSError) as exc:
                    results[i] = exc
                    if i in out:
                        out[i][0].disconnect()
                        self._checkin(i, *out.pop(i))
            for i in list(out):
                conn = out[i][0]
                try:
                    try:
                        results[i] = conn.read_response()
                    except NoScriptError:
                        conn.send_command("EVAL", script.source, len(keys), *keys, *args)
                        results[i] = conn.read_response()
                except (RedisError, OSError) as exc:
                    conn.disconnect()
                    results[i] = exc
                self._checkin(i, *out.pop(i))
        except BaseException:  # SystemExit from a signal handler: no reply may be left unread
            for i, (conn, lane) in out.items():
                conn.disconnect()
                self._checkin(i, conn, lane)
            raise
        return [results[i] for i in indexes]

    def _current_lanes(self) -> list["_Lane"]:
        pid, lanes = self._lanes
        if pid != os.getpid():  # forked: the parent's sockets are not ours
            with _after_fork:
                pid, lanes = self._lanes
                if pid != os.getpid():
                    pid, lanes = self._lanes = (os.getpid(), [_Lane() for _ in self.clients])
        return lanes

    def _checkout(self, i: int, lane: "_Lane") -> tuple[Any, "_Lane | None"]:
        pool = self.clients[i].connection_pool
        if type(pool) is not ConnectionPool or not lane.lock.acquire(blocking=False):
            return _get_connection(pool), None
        try:
            if lane.conn is None:
                lane.conn = pool.connection_class(**pool.connection_kwargs)
            elif getattr(lane.conn, "_sock", None) is not None:  # connected (redis-py's own attribute)
                try:  # as the pool does: a closed or dirty socket (a restarted node) is replaced
                    if lane.conn.can_read():
                        lane.conn.disconnect()
                except (RedisError, OSError):
                    lane.conn.disconnect()
            return lane.conn, lane
        except BaseException:
            lane.lock.release()
            raise

    def _checkin(self, i: int, conn: Any, lane: "_Lane | None") -> None:
        if lane is not None:
            lane.lock.release()
        else:
            self.clients[i].connection_pool.release(conn)

    def close(self) -> None:
        for client in self.clients:
            client.connection_pool.disconnect()
        for lane in self._lanes[1]:
            if lane.conn is not None:
                lane.conn.disconnect()


class _Lane:
    """A node's own connection; ``lock`` is held by the one round using it."""

    __slots__ = ("lock", "conn")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None


_after_fork = threading.Lock()  # one thread replaces a NodeSet's lanes in a new child


def _new_after_fork_lock() -> None:
    global _after_fork
    _after_fork = threading.Lock()  # a fork may have copied it locked


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_after_fork_lock)


def _get_connection(pool: Any) -> Any:
    # redis-py >= 5.3 deprecates the command-name argument that older versions require.
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")
