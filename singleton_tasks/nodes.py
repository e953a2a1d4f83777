"""A set of independent Redis nodes, spoken to in parallel.

One call sends the same script to every node first and only then reads the replies, so a
round over five nodes costs about one round trip, not five. A node that fails answers with
its exception instead of a reply; it never fails the whole round. A round never leaves a reply
unread on a connection it gives back, even when interrupted (a signal handler's SystemExit).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import redis
from redis.connection import ConnectionPool
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry
from redis.backoff import NoBackoff

from .errors import ConfigurationError

log = logging.getLogger("singleton_tasks.nodes")

NodeSpec = Union[str, "redis.Redis"]  # a URL or a ready client


@dataclass(frozen=True)
class Script:
    """A Lua script sent by SHA, with its source as the fallback for a node that lacks it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _label(client: "redis.Redis") -> str:
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def make_client(url: str, timeout: float) -> "redis.Redis":
    """A client whose every wait is bounded by ``timeout`` and which never retries on its own.

    Retrying belongs to the lease, which knows how much validity is left; redis-py's default
    backoff could otherwise sleep past a lease's deadline.
    """
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except ValueError as exc:
        raise ConfigurationError("nodes", url, f"a redis:// URL ({exc})") from None


class NodeSet:
    """The N nodes of one lease; answers each round with one result per node, in order."""

    def __init__(self, nodes: NodeSpec | Sequence[NodeSpec], timeout: float) -> None:
        specs: list[Any] = [nodes] if isinstance(nodes, (str, redis.Redis)) else list(nodes)
        if not specs:
            raise ConfigurationError("nodes", nodes, "at least one Redis URL or client")
        self.clients = [make_client(s, timeout) if isinstance(s, str) else s for s in specs]
        for spec, client in zip(specs, self.clients):
            if not isinstance(client, redis.Redis):
                raise ConfigurationError("nodes", spec, "a redis:// URL or a redis.Redis client")
        self.labels = [_label(c) for c in self.clients]
        # One connection of our own per node, for one round at a time: a pool checkout costs
        # some bookkeeping per node per round. A round that finds a node's lane busy (another
        # thread's round) takes a pooled connection instead. Replaced as a whole after a fork.
        self._lanes = (os.getpid(), [_Lane() for _ in self.clients])
        if len(set(self.labels)) != len(self.labels):
            raise ConfigurationError("nodes", self.labels, "each node listed once (a duplicate counts twice)")
        if len(self.clients) % 2 == 0:
            raise ConfigurationError(
                "nodes", self.labels, "an odd number of nodes (an even count tolerates no more failures than one fewer)"
            )

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
