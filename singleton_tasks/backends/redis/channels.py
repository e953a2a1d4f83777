"""Listening to one pub/sub channel on every node: how standbys hear releases and leaders hear changes.

Guarantees: ``listen`` calls back (from a background thread per node) for each message on the
channel from any node, and once more after a node's connection came back from a failure, since
messages sent meanwhile are lost (Redis pub/sub keeps nothing). A node that is down when the
listener starts is subscribed to when it comes up. Each thread blocks in its read: it wakes
for a message, and otherwise every ``LISTEN_BLOCK`` s; a failing node is retried every
``RETRY_PAUSE`` s, never in a busy loop. The returned function stops and joins every thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from redis import Redis
from redis.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger("singleton_tasks.lease")

#: How long one read blocks without a message (a poll every 0.2 s was most of an idle standby's CPU).
LISTEN_BLOCK = 30.0

#: The pause before a failed node is read from again.
RETRY_PAUSE = 0.5


def listen(clients: list[Redis], channel: str, callback: Callable[[], None], name: str) -> Callable[[], None]:
    """Call ``callback`` for every message on ``channel`` (see the module docstring); returns
    the function that stops listening, which the caller must call. ``name`` names the threads.

    The subscription is made before this returns wherever the node answers, so a message sent
    after it returns is heard."""
    stopping = threading.Event()
    listeners: list[tuple[threading.Thread, PubSub]] = []
    for client in clients:
        pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        handler = {channel: lambda _message: _call(callback)}
        try:
            pubsub.subscribe(**handler)
            subscribed = True
        except (RedisError, OSError) as exc:
            log.debug("%s: cannot subscribe yet (%s); retrying in the background", name, exc)
            subscribed = False
        thread = threading.Thread(target=_run, args=(pubsub, handler, subscribed, callback, stopping),
                                  daemon=True, name=name)
        thread.start()
        listeners.append((thread, pubsub))

    def stop() -> None:
        stopping.set()
        for _, pubsub in listeners:
            if pubsub.connection is not None:
                pubsub.connection.disconnect()  # wakes a listener blocked in its read at once
        for thread, pubsub in listeners:
            thread.join(timeout=2)
            pubsub.close()

    return stop


def _run(pubsub: PubSub, handler: dict[str, Callable[..., None]], subscribed: bool,
         callback: Callable[[], None], stopping: threading.Event) -> None:
    """One node's loop: a blocking read, until ``stopping`` (its socket is then closed)."""
    missed = False  # the connection failed: what was sent meanwhile is lost
    while not stopping.is_set():
        try:
            if not subscribed:
                pubsub.subscribe(**handler)
                subscribed = True
            # A read that returns (a message, or nothing in LISTEN_BLOCK) has a working
            # connection again: redis-py resubscribed when it reconnected.
            pubsub.get_message(timeout=LISTEN_BLOCK)  # the subscription's handler does the work
            if missed:
                missed = False
                _call(callback)
        except Exception as exc:
            if stopping.is_set():
                return  # our own close at stop() ended the read: whatever it raised is expected
            if not isinstance(exc, (RedisError, OSError)):  # never silent: a listener that stops says so
                log.error("pub/sub listener stopped: %r", exc)
                return
            log.debug("pub/sub listener: %s", exc)  # a node that went away: the next read reconnects
            missed = True
            stopping.wait(RETRY_PAUSE)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # a raising callback must not end the listener
        log.exception("pub/sub listener: the callback raised; carrying on")
