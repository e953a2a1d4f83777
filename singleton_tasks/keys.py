"""Names of everything singleton-tasks keeps in a store: one home for every key format.

With the default prefix ``singleton:``:

* ``singleton:{NAME}:lease``, ``:fence``, ``:released`` - a lease named NAME: its owner, its
  fencing counter and the channel that tells standbys it was released.
* Lease names of the Celery layer carry their kind, so kinds never share a key:
  ``beat:NAME`` for a beat schedule's lease, ``task:TASK[:KEY]`` for a singleton task's.
  A ``Lease`` created by hand uses its name as given; names that begin with ``beat:`` or
  ``task:`` belong to the Celery layer.
* ``singleton:{beat:NAME}:schedule`` - that schedule's fenced run records.
* ``singleton:{beat:NAME}:entries`` and ``singleton:{beat:NAME}:entries:version`` - the beat
  entries stored at run time (``celery singleton schedule``) and the number that changes with
  every change to them. On Redis the first is a hash (entry -> JSON) and the second a counter;
  on etcd each entry is a key ``singleton:{beat:NAME}:entries/ENTRY`` and the version is the
  version key's mod revision. On Redis, every change is announced on the channel
  ``singleton:{beat:NAME}:entries:changed``; on etcd a watch of the version key hears it.
* ``singleton:{slots:SCHEDULE/ENTRY}`` - the recent slots of one schedule entry that singleton
  tasks have run, bounded in size.

The part in braces is a Redis Cluster hash tag: the keys one script touches share a slot.
A slot id is ``SCHEDULE/ENTRY@DUE_MS``: unique per schedule and entry, the same on every leader.
"""

from __future__ import annotations

import uuid

def beat_lease_name(schedule: str) -> str:
    """The lease of the beat schedule named ``schedule`` (``singleton_beat_lease_name``)."""
    return f"beat:{schedule}"


def task_lease_name(task: str) -> str:
    """The lease of a singleton task run (``task`` is the task name, with ``:KEY`` if keyed)."""
    return f"task:{task}"


def lease_key(prefix: str, name: str) -> str:
    return f"{prefix}{{{name}}}:lease"


def fence_key(prefix: str, name: str) -> str:
    return f"{prefix}{{{name}}}:fence"


def release_channel(prefix: str, name: str) -> str:
    return f"{prefix}{{{name}}}:released"


def schedule_key(prefix: str, schedule: str) -> str:
    """The fenced records of the beat schedule whose lease is named ``beat:schedule``."""
    return f"{prefix}{{{beat_lease_name(schedule)}}}:schedule"


def entries_key(prefix: str, schedule: str) -> str:
    """The entries of the beat schedule ``schedule`` stored at run time (Redis: a hash; etcd: a key prefix + "/")."""
    return f"{prefix}{{{beat_lease_name(schedule)}}}:entries"


def entries_version_key(prefix: str, schedule: str) -> str:
    """What changes with every change to ``entries_key(prefix, schedule)``: one read tells a poller."""
    return f"{prefix}{{{beat_lease_name(schedule)}}}:entries:version"


def entries_channel(prefix: str, schedule: str) -> str:
    """The Redis channel that announces each change to ``entries_key(prefix, schedule)``."""
    return f"{prefix}{{{beat_lease_name(schedule)}}}:entries:changed"


def slot_id(schedule: str, entry: str, due_ms: int) -> str:
    """The id of one run of ``entry`` of ``schedule``, due at ``due_ms`` (Unix ms)."""
    return f"{schedule}/{entry}@{due_ms}"


def parse_slot(slot: str) -> tuple[str, int] | None:
    """``(SCHEDULE/ENTRY, due_ms)`` of a slot id, or None for a value not made by ``slot_id``."""
    entry, at, due = slot.rpartition("@")
    if not at or not entry or not due.isdigit():
        return None
    return entry, int(due)


def slots_key(prefix: str, entry: str) -> str:
    """Where singleton tasks remember the recent slots of ``entry`` (``SCHEDULE/ENTRY``)."""
    return f"{prefix}{{slots:{entry}}}"


_SLOT_NAMESPACE = uuid.UUID("5f0c1f39-5c3b-4a53-9a43-2b1f0fb2f9a1")


def slot_task_id(prefix: str, slot: str) -> str:
    """The Celery task id of a slot: the same on every leader, different for every prefix."""
    return str(uuid.uuid5(_SLOT_NAMESPACE, f"{prefix}{slot}"))
