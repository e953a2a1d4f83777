"""Writes that only the current holder of a lease can make, on the lease's etcd cluster.

* ``EtcdRecords``: a beat schedule's JSON records, one key each under
  ``keys.schedule_key(prefix, schedule) + "/" + name``. A write is one Txn that puts the record
  only if the schedule's lease key still has the writer's token as its create revision. That is
  stronger than the Redis fenced write (which refuses a token lower than the highest seen): a
  write lands only while its writer *holds* the lease in etcd, never after it expired or was
  taken over, whatever the writer's clock says. A refusal raises ``StaleToken`` (another holder
  has the lease, with the token it got) or ``LeaseLost`` (nobody has it).
* ``claim_slot``: the same semantics as the Redis claim: attempt N of a beat slot may run once;
  a later attempt (a retry) may claim it again; an entry remembers its ``backend.SLOT_MEMORY``
  most recent slots plus a floor below which every slot counts as too old, in one JSON key per
  entry (``keys.slots_key``). The claim is a read, then a Txn that writes only if
  that key is unchanged since the read *and* the task's lease key has the claimer's token; a
  lost race is retried a few times. Errors give ``Claim.FAILED`` with the endpoints' own errors.

Memory: etcd has no per-key TTL, only leases. Each entry's key is attached to an etcd lease of
``ceil(memory)`` seconds of its own, refreshed (keepalive) at every claim, so the record outlives
its last claim by ``memory`` as in Redis, and one etcd lease exists per entry, not per claim.

Values are JSON texts: nothing read back is unpickled; a value this library did not write is
skipped (records) or reported (claims), never trusted.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from ...backend import SLOT_MEMORY, Claim, ClaimResult, LeaseProtocol, some_names
from ...errors import LeaseError, LeaseLost, StaleToken, foreign_value
from ...keys import beat_lease_name, lease_key, schedule_key, slots_key
from .client import EtcdClient, EtcdNotFound
from .wire import KV, compare_create, compare_mod, get, put

#: Records per Txn: below etcd's default --max-txn-ops (128).
WRITE_CHUNK = 100

#: How often a claim that lost a race to another claimer reads and tries again.
RACE_RETRIES = 5


class EtcdRecords:
    """Named JSON records (dicts) written under the schedule lease's token; see the module docstring."""

    def __init__(self, client: EtcdClient, prefix: str, schedule: str) -> None:
        self.client = client
        self.prefix = schedule_key(prefix, schedule) + "/"
        self.lease_key = lease_key(prefix, beat_lease_name(schedule))

    def write(self, token: int, records: Mapping[str, dict[str, Any]]) -> None:
        """Store each record under its name if ``token`` is the lease's current one: one Txn per
        WRITE_CHUNK records (etcd refuses a Txn of more than 128 operations by default).

        Raises ``StaleToken`` when a later holder has the lease, ``LeaseLost`` when nobody
        does, ``LeaseError`` when no endpoint answered (naming each one's error).
        """
        items = list(records.items())
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = items[start:start + WRITE_CHUNK]
            puts = [put(self.prefix + name, json.dumps({**record, "token": token}, sort_keys=True))
                    for name, record in chunk]
            answer = self.client.txn([compare_create(self.lease_key, token)], puts, [get(self.lease_key)])
            if answer.succeeded:
                continue
            what = some_names([name for name, _ in chunk])
            holder = answer.kv(0)
            if holder is None:
                raise LeaseLost(f"fenced write of {what} refused: nobody holds {self.lease_key}")
            if holder.create_revision > token:
                raise StaleToken(token, holder.create_revision)
            raise LeaseError(f"fenced write of {what} refused: token {token} was never granted "
                             f"({self.lease_key} has token {holder.create_revision})")

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every record written by this library (others are skipped), by name."""
        records: dict[str, dict[str, Any]] = {}
        for kv in self.client.range_prefix(self.prefix):
            try:
                record = json.loads(kv.value)
                int(record["token"])
            except (ValueError, TypeError, KeyError):
                continue  # not ours: ignored rather than trusted
            if isinstance(record, dict):
                records[kv.key[len(self.prefix):]] = record
        return records


@dataclass(frozen=True)
class SlotState:
    """One entry's slot memory: due ms -> highest attempt claimed, and the floor."""

    slots: dict[int, int]
    floor: int | None = None


def decide(state: SlotState, due_ms: int, attempt: int, keep: int) -> tuple[Claim, SlotState]:
    """What a claim finds, and the state to write when it is ``CLAIMED``: a pure function.

    The Redis script's rule: at or below the floor is too old; a slot already claimed by this or
    a later attempt already ran; otherwise claim it and forget the oldest slots beyond ``keep``,
    raising the floor to the newest one forgotten.
    """
    if state.floor is not None and due_ms <= state.floor:
        return Claim.TOO_OLD, state
    seen = state.slots.get(due_ms)
    if seen is not None and seen >= attempt:
        return Claim.ALREADY_RAN, state
    slots, floor = {**state.slots, due_ms: attempt}, state.floor
    while len(slots) > keep:
        oldest = min(slots)
        del slots[oldest]
        floor = oldest if floor is None else max(floor, oldest)
    return Claim.CLAIMED, SlotState(slots, floor)


def _parse_slots(kv: KV | None) -> tuple[SlotState, int, str | None]:
    """The state in ``kv``, the etcd lease it is kept under (0: none) and the last claim's id.

    Raises ``ValueError`` for a value this library never writes.
    """
    if kv is None:
        return SlotState({}), 0, None
    raw = json.loads(kv.value)
    if not isinstance(raw, dict) or not isinstance(raw.get("slots"), dict):
        raise ValueError("not a slot record")
    floor = raw.get("floor")
    state = SlotState({int(due): int(n) for due, n in raw["slots"].items()}, None if floor is None else int(floor))
    return state, kv.lease, raw.get("claim")


def claim_slot(client: EtcdClient, prefix: str, lease: LeaseProtocol, entry: str, due_ms: int, attempt: int,
               memory: float, keep: int = SLOT_MEMORY) -> ClaimResult:
    """Claim the slot of ``entry`` (``SCHEDULE/ENTRY``) due at ``due_ms`` for ``attempt``, under ``lease``.

    ``memory`` (s) is how long the entry's record outlives its last claim; ``keep`` how many
    recent slots it remembers.
    """
    token = lease.token
    where = ",".join(client.labels)
    if token is None:
        return ClaimResult(Claim.FAILED, f"{where}: lease {lease.name} is not held")
    key, fence = slots_key(prefix, entry), lease_key(prefix, lease.name)
    claim_id = secrets.token_hex(8)  # tells our own write apart after an answer was lost
    ttl = max(1, math.ceil(memory))
    granted = 0  # an etcd lease this call granted: revoked unless the record ends up under it
    keeper = replaced = 0
    try:
        for _ in range(RACE_RETRIES):
            kv, _ = client.range(key)
            try:
                state, keeper, _last = _parse_slots(kv)
            except (ValueError, TypeError, AttributeError):
                assert kv is not None
                return ClaimResult(Claim.FAILED, f"{where}: key {key!r} {foreign_value(key, kv.value)}")
            outcome, new = decide(state, due_ms, attempt, keep)
            if outcome is Claim.TOO_OLD:
                return ClaimResult(outcome, f"{where}: too old (slots up to {state.floor} are forgotten)")
            if outcome is Claim.ALREADY_RAN:
                return ClaimResult(outcome, f"{where}: already ran (attempt {state.slots[due_ms]})")
            if keeper:
                left = client.keepalive(keeper)  # refreshed: the record outlives this claim by memory
                if left < ttl:  # gone (-1), or granted for a shorter memory
                    replaced, keeper = (keeper if left > 0 else 0), 0
            if not keeper:
                granted = granted or client.grant(ttl)[0]
                keeper = granted
            body = json.dumps({"slots": {str(d): n for d, n in new.slots.items()}, "floor": new.floor,
                               "claim": claim_id}, sort_keys=True)
            try:
                answer = client.txn([compare_mod(key, kv.mod_revision if kv else 0), compare_create(fence, token)],
                                    [put(key, body, keeper)], [get(fence), get(key)])
            except EtcdNotFound:
                continue  # the record's etcd lease ran out between keepalive and put: read again
            except LeaseError:
                granted = 0  # the put may have landed under it: revoking it would delete the record
                raise
            if answer.succeeded:
                if replaced and replaced != keeper:
                    _revoke_quietly(client, replaced)  # holds no key any more
                return ClaimResult(Claim.CLAIMED, f"{where}: claimed (attempt {attempt})")
            holder, now = answer.kv(0), answer.kv(1)
            if holder is None or holder.create_revision != token:
                return ClaimResult(Claim.FAILED, f"{where}: lease {lease.name} is no longer held with token {token}")
            if now is not None and _claimed_by(now, claim_id):
                return ClaimResult(Claim.CLAIMED, f"{where}: claimed (attempt {attempt})")
        return ClaimResult(Claim.FAILED, f"{where}: lost the race for {key} {RACE_RETRIES} times")
    except LeaseError as exc:
        return ClaimResult(Claim.FAILED, str(exc))
    finally:
        if granted and granted != keeper:
            _revoke_quietly(client, granted)


def _claimed_by(kv: KV, claim_id: str) -> bool:
    try:
        return bool(_parse_slots(kv)[2] == claim_id)
    except (ValueError, TypeError, AttributeError):
        return False


def _revoke_quietly(client: EtcdClient, lease_id: int) -> None:
    try:
        client.revoke(lease_id)
    except LeaseError:
        pass  # unused, it expires after its TTL
