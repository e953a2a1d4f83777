"""Writes that only a current holder can make, over the same nodes as the lease.

* ``FencedRecords``: a hash of JSON records where a write carrying fencing token T is applied
  only if no write with a larger token reached the node first. A write counts when a
  majority applied it; a refusal anywhere means a newer holder exists (``StaleToken``).
* ``claim_slot``: claim one beat slot (an entry's run due at a given time) for attempt N on a
  majority; a later attempt (a retry) may claim it again, the same or an earlier one (a
  duplicate delivery) may not. Used to run a beat slot at most once when its message is
  delivered twice. Each entry keeps one record of its most recent ``SLOT_MEMORY`` slots, so
  memory does not grow with the number of slots run; a slot older than all of those is
  refused, since it can no longer be told apart from one that ran. A claim that reaches no
  majority fails: when in doubt, the work is not done twice, and the caller says why.

Values are JSON texts or decimal strings: nothing read back is unpickled or evaluated.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ...backend import SLOT_MEMORY, Claim, ClaimResult, some_names
from ...errors import LeaseError, StaleToken
from .nodes import NodeSet, Script
from .quorum import Tally, tally

#: KEYS: hash.  ARGV: token, then field, JSON value, field, JSON value, ...
#: Returns {1, token} when written, {0, highest token seen} when the token is stale.
FENCED_HSET = Script(
    """
local top = redis.call('HGET', KEYS[1], '__token__')
if top and tonumber(top) and tonumber(top) > tonumber(ARGV[1]) then return {0, top} end
redis.call('HSET', KEYS[1], '__token__', unpack(ARGV))
return {1, ARGV[1]}
"""
)

#: KEYS: hash.  Returns the flat HGETALL list.
READ_ALL = Script("return redis.call('HGETALL', KEYS[1])")

#: Records per script call: Lua's unpack() of ARGV stays far below its C stack limit (8000).
WRITE_CHUNK = 1000


class FencedRecords:
    """Named JSON records (dicts) written under a fencing token; see the module docstring."""

    def __init__(self, nodes: NodeSet, key: str) -> None:
        self.nodes = nodes
        self.key = key

    def write(self, token: int, records: Mapping[str, dict[str, Any]]) -> None:
        """Store each record under its name: one script call per node for up to WRITE_CHUNK records.

        Raises ``StaleToken``, or ``LeaseError`` naming each node's error.
        """
        items = list(records.items())
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = items[start:start + WRITE_CHUNK]
            args: list[Any] = [token]
            for name, record in chunk:
                args += [name, json.dumps({**record, "token": token}, sort_keys=True)]
            replies = self.nodes.run_script(FENCED_HSET, [self.key], args)
            counted = tally(replies, lambda r: isinstance(r, list) and r[0] == 1)
            stale = [int(replies[i][1]) for i in counted.refused if isinstance(replies[i], list)]
            if stale:
                raise StaleToken(token, max(stale))
            if not counted.reached:
                names = some_names([name for name, _ in chunk])
                raise LeaseError(f"fenced write of {names} to {self.key} not done: {counted.summary(self.nodes.labels)}")

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every record, the one with the highest token where nodes disagree."""
        replies = self.nodes.run_script(READ_ALL, [self.key], [])
        counted = tally(replies, lambda r: isinstance(r, list))
        if not counted.reached:
            raise LeaseError(f"{self.key}: fewer than {self.nodes.quorum} nodes answered ({counted.errors(self.nodes.labels)})")
        best: dict[str, dict[str, Any]] = {}
        for i in counted.accepted:
            flat = replies[i]
            for raw_name, raw_value in zip(flat[::2], flat[1::2]):
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                if name == "__token__":
                    continue
                try:
                    record = json.loads(raw_value)
                    token = int(record["token"])
                except (ValueError, TypeError, KeyError):
                    continue  # not ours: ignored rather than trusted
                if name not in best or token > int(best[name]["token"]):
                    best[name] = record
        return best


#: KEYS: the entry's slot record (a hash: due ms -> attempt, and 'floor').
#: ARGV: due ms, attempt, SLOT_MEMORY, ttl_ms.
#: Returns 1 when this attempt may run; 0 when this or a later attempt already claimed the
#: slot; 2 when the slot is at or before 'floor', older than every slot remembered.
CLAIM_SLOT = Script(
    """
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor'))
if floor and tonumber(ARGV[1]) <= floor then return 2 end
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if seen and seen >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) - (floor and 1 or 0) > tonumber(ARGV[3]) then
  local oldest, oldest_field = nil, nil
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local due = tonumber(field)
    if field ~= 'floor' and due and (not oldest or due < oldest) then oldest, oldest_field = due, field end
  end
  redis.call('HDEL', KEYS[1], oldest_field)
  redis.call('HSET', KEYS[1], 'floor', oldest_field)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
)


def claim_slot(nodes: NodeSet, key: str, due_ms: int, attempt: int, memory: float,
               keep: int = SLOT_MEMORY) -> ClaimResult:
    """Claim the slot due at ``due_ms`` of the entry whose record is ``key`` for ``attempt``.

    ``memory`` (s) is how long an entry's record outlives its last claim; ``keep`` how many
    recent slots it remembers.
    """
    replies = nodes.run_script(CLAIM_SLOT, [key], [due_ms, attempt, keep, int(memory * 1000)])
    counted: Tally = tally(replies, lambda r: r == 1)
    detail = counted.summary(nodes.labels)
    if counted.reached:
        return ClaimResult(Claim.CLAIMED, detail)
    if counted.failed and not counted.refused_by_majority:
        return ClaimResult(Claim.FAILED, detail)
    if any(replies[i] == 2 for i in counted.refused):
        return ClaimResult(Claim.TOO_OLD, detail)
    return ClaimResult(Claim.ALREADY_RAN, detail)
