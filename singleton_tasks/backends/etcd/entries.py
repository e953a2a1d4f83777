"""A beat schedule's entries stored at run time, on an etcd cluster (``EntriesProtocol``).

Each entry is one key, ``keys.entries_key(prefix, schedule) + "/" + name``, holding its JSON
text as given. Beside them, ``keys.entries_version_key`` is written in the same Txn as every
change, so its mod revision (etcd's cluster-wide revision of the last change) is the version:
it rises with every change, and one range request reads it. ``all()`` reads the entries and
the version key in one Txn, so both are as of one revision. etcd is linearizable: a change
that returned is seen by every later read. ``on_change`` watches the version key.
"""

from __future__ import annotations

from typing import Any, Callable

from ...keys import entries_key, entries_version_key
from .client import EtcdClient
from .watch import KeyWatcher
from .wire import KV, b64, delete, get, prefix_end, put


class EtcdEntries:
    """``backend.EntriesProtocol`` on one etcd cluster; see the module docstring."""

    def __init__(self, client: EtcdClient, prefix: str, schedule: str) -> None:
        self.client = client
        self.prefix = entries_key(prefix, schedule) + "/"
        self.version_key = entries_version_key(prefix, schedule)

    def put(self, name: str, text: str) -> int:
        # The version key's value names the last entry changed: for operators, never read back.
        answer = self.client.txn([], [put(self.prefix + name, text), put(self.version_key, name)])
        return answer.revision

    def remove(self, name: str) -> bool:
        exists = {"key": b64(self.prefix + name), "target": "VERSION", "result": "GREATER", "version": "0"}
        answer = self.client.txn([exists], [delete(self.prefix + name), put(self.version_key, name)])
        return answer.succeeded

    def get(self, name: str) -> str | None:
        kv, _ = self.client.range(self.prefix + name)
        return None if kv is None else kv.value.decode(errors="replace")

    def all(self) -> tuple[int, dict[str, str]]:
        every = {"request_range": {"key": b64(self.prefix), "range_end": prefix_end(self.prefix)}}
        answer = self.client.txn([], [every, get(self.version_key)])
        raw: list[dict[str, Any]] = answer.responses[0].get("response_range", {}).get("kvs", [])
        entries = {kv.key[len(self.prefix):]: kv.value.decode(errors="replace") for kv in map(KV.parse, raw)}
        version = answer.kv(1)
        return (version.mod_revision if version else 0), entries

    def version(self) -> int:
        kv, _ = self.client.range(self.version_key)
        return kv.mod_revision if kv else 0

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        # From the revision after now, read here: a change made once this returned is heard. A
        # watch resumes from the last revision it saw, so only a compaction (which calls
        # on_delete) can hide a change from it.
        start = self.client.range(self.version_key)[1] + 1
        watcher = KeyWatcher(self.client, self.version_key, callback, start, on_put=lambda _kv: callback())
        return watcher.start().stop
