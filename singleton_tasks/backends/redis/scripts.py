"""The Lua scripts of the lease. Each runs atomically on one node.

Values are plain strings: the owner is a JSON text compared byte for byte, the fence a decimal
integer. Nothing here, nor in the code that reads the replies, unpickles or evaluates data.
"""

from __future__ import annotations

from .nodes import Script

#: Round 1 of an acquire: take the lease if it is free and, with it, raise the node's fence by one.
#: KEYS: lease, fence.  ARGV: owner, ttl_ms.
#: Returns {1, raised fence, 1} when taken; {1, '', 0} when taken on a node without a fence
#: (new, or it lost its data); {1, raw value, 0} when the fence is not an integer (left as it
#: is); {0, current owner, its remaining ms (PTTL)} when held by someone else, so a standby
#: can sleep until the holder's key ends instead of asking again and again.
ACQUIRE = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('GET', KEYS[2])
  if not fence then return {1, '', 0} end
  if type(redis.pcall('INCR', KEYS[2])) == 'number' then  -- not a table: no error
    return {1, redis.call('GET', KEYS[2]), 1}  -- the exact digits, not a Lua double
  end
  return {1, fence, 0}
end
return {0, redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
"""
)

#: Round 2 of an acquire: record the new token, only while the lease is still ours here.
#: KEYS: lease, fence.  ARGV: owner, token.
#: Returns 1 when recorded, 0 when the lease is no longer ours, -1 when the fence is not a number.
CONFIRM = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local fence = redis.call('GET', KEYS[2])
if fence and not tonumber(fence) then return -1 end
if (not fence) or tonumber(fence) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""
)

#: Extend the lease, only where it is still ours.
#: KEYS: lease.  ARGV: owner, ttl_ms.  Returns 1 when extended, 0 otherwise.
RENEW = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)

#: Give the lease up, only where it is still ours, and tell standbys on the channel.
#: KEYS: lease.  ARGV: owner, channel ('' = tell nobody: cleaning up a failed attempt).
#: Returns 1 when released, 0 otherwise.
RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], 'released') end
  return 1
end
return 0
"""
)

#: Delete the lease whoever holds it and tell standbys (``celery singleton release``).
#: KEYS: lease.  ARGV: channel.  Returns 1 when a holder's key was deleted, 0 when there was none.
FORCE_RELEASE = Script(
    """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'released')
  return 1
end
return 0
"""
)

#: Read who holds the lease, for operators.
#: KEYS: lease, fence.  Returns {owner or '', remaining ms (PTTL), fence or ''}.
INSPECT = Script(
    """
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
"""
)
