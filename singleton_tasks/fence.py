"""Writes that only a current holder can make, over the same nodes as the lease.

* ``FencedRecords``: a hash of JSON records where a write carrying fencing token T is applied
  only if no write with a larger token reached the node first. A write counts when a
  majority applied it; a refusal anywhere means a newer holder exists (``StaleToken``).
* ``claim_attempt``: claim a name for attempt N on a majority; a later attempt (a retry)
  may claim it again, the same or an earlier one (a duplicate delivery) may not. Used to
  run a beat slot at most once when its message is delivered twice. A claim that reaches
  no majority fails: when in doubt, the work is not done twice.

Values are JSON texts: nothing read back is unpickled or evaluated.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import LeaseError, StaleToken
from .nodes import NodeSet, Script

#: KEYS: hash.  ARGV: token, field, JSON value.
#: Returns {1, token} when written, {0, highest token seen} when the token is stale.
FENCED_HSET = Script(
    """
local top = redis.call('HGET', KEYS[1], '__token__')
if top and tonumber(top) and tonumber(top) > tonumber(ARGV[1]) then return {0, top} end
redis.call('HSET', KEYS[1], '__token__', ARGV[1], ARGV[2], ARGV[3])
return {1, ARGV[1]}
"""
)

#: KEYS: hash.  Returns the flat HGETALL list.
READ_ALL = Script("return redis.call('HGETALL', KEYS[1])")


class FencedRecords:
    """Named JSON records (dicts) written under a fencing token; see the module docstring."""

    def __init__(self, nodes: NodeSet, key: str) -> None:
        self.nodes = nodes
        self.key = key

    def write(self, token: int, name: str, record: dict[str, Any]) -> None:
        """Store ``record`` under ``name``. Raises ``StaleToken`` or ``LeaseError``."""
        body = json.dumps({**record, "token": token}, sort_keys=True)
        replies = self.nodes.run_script(FENCED_HSET, [self.key], [token, name, body])
        stale = [int(r[1]) for r in replies if isinstance(r, list) and r[0] == 0]
        if stale:
            raise StaleToken(token, max(stale))
        written = sum(1 for r in replies if isinstance(r, list) and r[0] == 1)
        if written < self.nodes.quorum:
            raise LeaseError(f"fenced write of {name!r} reached {written} of {len(self.nodes)} nodes")

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every record, the one with the highest token where nodes disagree."""
        replies = self.nodes.run_script(READ_ALL, [self.key], [])
        readable = [r for r in replies if isinstance(r, list)]
        if len(readable) < self.nodes.quorum:
            raise LeaseError(f"{self.key}: fewer than {self.nodes.quorum} nodes answered")
        best: dict[str, dict[str, Any]] = {}
        for flat in readable:
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


#: KEYS: mark.  ARGV: attempt, ttl_ms.  Returns 1 when this attempt may run (no mark, or a
#: mark left by an earlier attempt), 0 when this or a later attempt already claimed it.
CLAIM_ATTEMPT = Script(
    """
local seen = tonumber(redis.call('GET', KEYS[1]))
if seen and seen >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)


def claim_attempt(nodes: NodeSet, key: str, attempt: int, ttl: float) -> bool:
    """True when ``attempt`` may run: no earlier claim of ``key`` by this or a later attempt."""
    replies = nodes.run_script(CLAIM_ATTEMPT, [key], [attempt, int(ttl * 1000)])
    return sum(1 for r in replies if r == 1) >= nodes.quorum
