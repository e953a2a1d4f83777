"""A beat schedule's entries stored at run time, on N independent Redis nodes (``EntriesProtocol``).

Each node keeps a hash (entry -> record) and a version counter beside it, in one hash slot
(``keys.entries_key``, ``keys.entries_version_key``). A record is JSON: ``{"version": V,
"spec": TEXT}``, or ``{"version": V, "removed": true}`` for an entry removed (a tombstone: an
entry missing on a node says nothing, since that node may only have missed the write).

Guarantees, without any clock:

* A change is two rounds: read every node's version (a majority must answer) and take
  V = the highest + 1; then one script per node that writes the record and sets the counter
  to V *only if the node's counter is below V*, atomically. It counts when a majority applied
  it; a node that refused (a concurrent change took V) makes the change start again. So on
  every node versions only rise, each applied change has one version everywhere, and a change
  made after another one finished has a larger version (its first round met a node of the
  other's majority).
* A read asks every node and needs a majority of answers; for each entry the record with the
  highest version wins (a removal wins as a tombstone), and the version is the highest counter
  seen. Any majority meets the majority of every change that counted, so it sees that change
  or a newer one.
* ``version()`` is one script on every node, sent to all before any reply is read: one round trip.
* Every node that applies a change announces it on ``keys.entries_channel``; ``on_change``
  listens on every node (``channels``).

A value in our keys that this library did not write (a counter that is not a number, a record
that is not ours) is reported with a WARNING naming key and node (once per value: a poller reads
the counter every second), never trusted or overwritten.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from ...errors import LeaseError, MalformedLeaseValue
from . import channels
from .nodes import NodeSet, Script
from .quorum import tally

log = logging.getLogger("singleton_tasks.entries")

#: KEYS: entries hash, version counter.  ARGV: version V, entry name, record JSON, channel.
#: Returns {1, V} when written (and announced on the channel), {0, counter} when the node's
#: counter is already at V or above, {-1, counter} when the counter holds a value this library did not write (left as it is).
PUT = Script(
    """
local raw = redis.call('GET', KEYS[2])
local now = 0
if raw then
  now = tonumber(raw)
  if not now or not string.match(raw, '^%d+$') then return {-1, raw} end
end
if now >= tonumber(ARGV[1]) then return {0, raw} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, ARGV[1]}
"""
)

#: KEYS: version counter.  Returns the counter as stored ('0' when absent).
VERSION = Script("return redis.call('GET', KEYS[1]) or '0'")

#: KEYS: entries hash, version counter.  Returns {counter, flat HGETALL}, read in one atomic step.
READ_ALL = Script("return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}")

#: How often a change that lost the race for its version to a concurrent change starts again.
RACE_RETRIES = 5


class RedisEntries:
    """``backend.EntriesProtocol`` over a ``NodeSet``; see the module docstring."""

    def __init__(self, nodes: NodeSet, key: str, version_key: str, channel: str) -> None:
        self.nodes = nodes
        self.key = key
        self.version_key = version_key
        self.channel = channel
        self._reported: set[str] = set()  # foreign values already logged

    def put(self, name: str, text: str) -> int:
        return self._change(name, {"spec": text})

    def remove(self, name: str) -> bool:
        if self.get(name) is None:
            return False
        self._change(name, {"removed": True})
        return True

    def get(self, name: str) -> str | None:
        return self.all()[1].get(name)

    def all(self) -> tuple[int, dict[str, str]]:
        replies = self._majority(READ_ALL, [self.key, self.version_key], "read")
        version = 0
        newest: dict[str, tuple[int, str | None]] = {}
        for node, reply in replies.items():
            counter = self._counter(node, reply[0])
            if counter is not None:
                version = max(version, counter)
            flat = reply[1]
            for raw_name, raw_record in zip(flat[::2], flat[1::2]):
                name = _text(raw_name)
                record = self._record(node, name, raw_record)
                # Equal versions come only from a change that failed on a majority: the text
                # breaks the tie so that every reader of the same nodes agrees.
                if record is not None and (name not in newest or _order(record) > _order(newest[name])):
                    newest[name] = record
        return version, {name: spec for name, (_, spec) in newest.items() if spec is not None}

    def version(self) -> int:
        replies = self._majority(VERSION, [self.version_key], "version read")
        return max((v for node, raw in replies.items() if (v := self._counter(node, raw)) is not None), default=0)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        return channels.listen(self.nodes.clients, self.channel, callback, f"entries-listener-{self.key}")

    # -- internals ---------------------------------------------------------------------------

    def _change(self, name: str, body: dict[str, Any]) -> int:
        version = self.version() + 1
        for _ in range(RACE_RETRIES):
            record = json.dumps({"version": version, **body}, sort_keys=True)
            replies = self.nodes.run_script(PUT, [self.key, self.version_key],
                                            [version, name, record, self.channel])
            replies = [self._foreign(i, r) for i, r in enumerate(replies)]
            counted = tally(replies, lambda r: r[0] == 1)
            if counted.reached:
                return version
            if counted.failed and len(counted.failed) >= self.nodes.quorum:
                break
            # A concurrent change took this version on some node: go above every counter seen.
            version = max([version, *(int(replies[i][1]) for i in counted.refused)]) + 1
        raise LeaseError(f"entry {name!r} in {self.key}: not changed ({counted.summary(self.nodes.labels)});"
                         " it may have reached some nodes: repeat the change")

    def _majority(self, script: Script, keys: list[str], what: str) -> dict[int, Any]:
        replies = self.nodes.run_script(script, keys, [])
        counted = tally(replies, lambda r: True)
        if not counted.reached:
            raise LeaseError(f"{self.key}: {what} needs {self.nodes.quorum} of {len(self.nodes)} nodes "
                             f"({counted.errors(self.nodes.labels)})")
        return {i: replies[i] for i in counted.accepted}

    def _foreign(self, node: int, reply: Any) -> Any:
        if isinstance(reply, list) and reply[0] == -1:
            return MalformedLeaseValue(self.version_key, reply[1], self.nodes.labels[node])
        return reply

    def _counter(self, node: int, raw: Any) -> int | None:
        text = _text(raw)
        if text.isdigit():
            return int(text)
        self._report(MalformedLeaseValue(self.version_key, raw, self.nodes.labels[node]))
        return None

    def _record(self, node: int, name: str, raw: Any) -> tuple[int, str | None] | None:
        try:
            record = json.loads(raw)
            version = record["version"]
            if isinstance(version, int) and not isinstance(version, bool):
                if record.keys() == {"version", "removed"} and record["removed"] is True:
                    return version, None
                if record.keys() == {"version", "spec"} and isinstance(record["spec"], str):
                    return version, record["spec"]
        except (ValueError, TypeError, KeyError):
            pass
        self._report(MalformedLeaseValue(f"{self.key} field {name!r}", raw, self.nodes.labels[node]))
        return None

    def _report(self, problem: MalformedLeaseValue) -> None:
        if str(problem) not in self._reported:
            self._reported.add(str(problem))
            log.warning("%s", problem)


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _order(record: tuple[int, str | None]) -> tuple[int, str]:
    return record[0], record[1] if record[1] is not None else ""
