"""Every Lua script of the gateway, each a ``Script``: name, KEYS, ARGV, reply, source.

One way to register: a ``Script`` is its own registration (its sha1 is of its source).
It is called either coalesced, ``sha = calls.script(S.source)`` and then
``("EVALSHA", sha, ...)`` in ``Coalescer.run`` (which reloads the cache after a
NOSCRIPT), or alone, ``await S.run(redis, keys, args)`` (EVALSHA, and on NOSCRIPT one
SCRIPT LOAD and a retry: what redis-py's ``register_script`` did).

Every key of one call shares a hash tag, so a script runs on one cluster node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script and its contract. ``keys`` and ``argv`` name each KEYS[i] / ARGV[i]
    in order (``"..."`` last: the rest repeat as it says)."""

    name: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    returns: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)

    async def run(
        self, redis: aioredis.Redis, keys: Sequence[Any], args: Sequence[Any] = ()
    ) -> Any:
        """One call on its own (not coalesced)."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)  # Redis restarted or flushed its cache
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


# --- ingress: updates in ------------------------------------------------------------------

PUBLISH_UPDATE = Script(
    name="publish_update",
    keys=("the update's dedupe key", "the partition's updates stream"),
    argv=("dedupe ttl seconds", "... the entry's field/value pairs"),
    returns="the entry id; false for a duplicate (the dedupe key and the entry appear "
    "together or not at all)",
    source="""
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
""",
)

PUBLISH_UPDATES = Script(
    name="publish_updates",
    keys=("the partition's updates stream", "... entry i's dedupe key (KEYS[1 + i])"),
    argv=("dedupe ttl seconds", "... per entry: its number of field/value arguments, then them"),
    returns="per entry its id, or 0 for a duplicate. One atomic call (the poller and its "
    "mover): a node that refuses it (down, LOADING) refuses every entry, so a later update "
    "of a chat is never stored while an earlier one is not",
    source="""
local at, out = 2, {}
for i = 2, #KEYS do
  local first, last = at + 1, at + tonumber(ARGV[at])
  at = last + 1
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last))
  else
    out[#out + 1] = 0
  end
end
return out
""",
)

PARK_UPDATES = Script(
    name="park_updates",
    keys=("the parking stream",),
    argv=(
        "its cap",
        "the number of entries",
        "... per entry: its number of field/value arguments, then them",
    ),
    returns="1: all the entries, in order; PARKFULL error past the cap, nothing parked "
    "(nothing parked is ever trimmed). No dedupe key: the mover publishes through "
    "PUBLISH_UPDATES, which stores a repeat once",
    source="""
if redis.call('XLEN', KEYS[1]) + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return redis.error_reply('PARKFULL the parking stream holds its cap of entries')
end
local at = 3
for i = 1, tonumber(ARGV[2]) do
  local first, last = at + 1, at + tonumber(ARGV[at])
  at = last + 1
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last))
end
return 1
""",
)

# --- the stream layout --------------------------------------------------------------------

RECORD_LAYOUT = Script(
    name="record_layout",
    keys=("the layout key",),
    argv=("the layout to record if none is",),
    returns="{created (1/0), the recorded layout}",
    source="""
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
""",
)

# --- the bot registry (tg-gateway bots) -------------------------------------------------------

PUT_BOT = Script(
    name="put_bot",
    keys=("the bot registry hash",),
    argv=(
        "the bot id (field)",
        "the record read ('' none)",
        "the new one ('' delete)",
        "name",
        "path key",
    ),
    returns="{1, ''} written; {0, 'changed'}: not the record read; {0, 'name'|'path', the "
    "holder's id}: taken (a compare-and-set: two `bots` commands cannot both win)",
    source="""
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return {0, 'changed'} end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {1, ''}
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local ok, rec = pcall(cjson.decode, all[i + 1])
    if ok and type(rec) == 'table' then
      if rec['name'] == ARGV[4] then return {0, 'name', all[i]} end
      if rec['path_key'] == ARGV[5] then return {0, 'path', all[i]} end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ''}
""",
)

# --- partition leases ---------------------------------------------------------------------

HEARTBEAT = Script(
    name="heartbeat",
    keys=("the role's members sorted set",),
    argv=("this process's name", "lease ttl ms"),
    returns="the live members (expired ones removed; the set expires after 10 ttls idle)",
    source="""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
""",
)

RENEW_LEASE = Script(
    name="renew_lease",
    keys=("the partition's lease",),
    argv=("owner", "lease ttl ms"),
    returns="1 if renewed; 0 if the lease is not the owner's",
    source="""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)

RELEASE_LEASE = Script(
    name="release_lease",
    keys=("the partition's lease",),
    argv=("owner",),
    returns="1 if released; 0 if the lease is not the owner's",
    source="""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

TAKE_LEASE = Script(
    name="take_lease",
    keys=("a named lease (one holder among many processes; ``gateway/runtime/named_lease.py``)",),
    argv=("owner", "lease ttl ms"),
    returns="1: the lease is the owner's now (taken, or renewed); 0: another holds it; -1: "
    "the key holds a string without expiry, never written by a lease, which is given one "
    "(so it expires and the lease can be taken within a ttl); -2: the key is not a string "
    "(left untouched)",
    source="""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if kind ~= 'string' then return -2 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return -1
end
return 0
""",
)

# --- the consumer's fenced finish --------------------------------------------------------

FINISH = Script(
    name="finish",
    keys=(
        "the entry's stream",
        "its partition's lease",
        "a marker key",
        "the partition's relay",
        "... one stream per entry to publish",
    ),
    argv=(
        "group",
        "lease owner ('' when not fenced)",
        "entry id",
        "marker ttl ('0': no marker)",
        "how many of the entries go to the relay",
        "the relay's cap",
        "... for each entry to publish: its field count, then its fields and values",
    ),
    returns="1: the entry's effects and its XACK written, or (lease lost: -1; relay "
    "full: -2) nothing at all. An entry no longer pending (a retry whose earlier try ran "
    "but lost its reply) is 0 and writes nothing again: a finish's effects in its "
    "partition's slot land once. All keys share the partition's hash tag; on a cluster, "
    "effects elsewhere are written first, or put in the partition's relay when their node "
    "does not answer (``gateway/runtime/relay.py``, ``gateway.runtime.consumer.finish``)",
    source="""
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1) == 0 then
  return 0
end
local relayed = tonumber(ARGV[5])
if relayed > 0 and redis.call('XLEN', KEYS[4]) + relayed > tonumber(ARGV[6]) then
  return -2
end
local at = 7
for k = 5, #KEYS do
  local n = tonumber(ARGV[at])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
""",
)

# --- the sender's rate limits -------------------------------------------------------------

GCRA = Script(
    name="gcra",
    keys=(
        "flood_global (a 429's wait for the bot)",
        "flood_chat (a 429's wait for the chat)",
        "global TAT (absent with the next two for a call that does not count)",
        "chat TAT",
        "recovering (a sender's share, while one is back from degraded mode)",
    ),
    argv=(
        "global interval µs",
        "chat interval µs",
        "late credit µs",
        "share interval µs (0: this sender is not just back from degraded mode)",
        "recovering ms",
        "push µs: the global TAT moves this much later first, granted or not (a late "
        "arrival, ``workers.sender.arrivals``; 0: none)",
    ),
    returns="{global wait µs, chat wait µs, Redis TIME µs (a counted call that reached the "
    "budgets)}; both waits 0: allowed and both TATs advanced. "
    "While ``recovering`` exists the global interval is at least its value (one sender's "
    "share); a sender back from degraded mode sets it and pushes the global TAT one share "
    "into the future, so its local schedule goes on without a step. Keys get a TTL so "
    "idle chats cost no memory. The clock is Redis TIME; ``workers.sender.ratelimit.gcra`` "
    "is its pure mirror (tests/integration/test_gcra_lua.py). TATs are written with '%.0f': "
    "Lua's tostring keeps 14 digits, which rounds a 16-digit µs TAT to 100 µs",
    source="""
local function digits(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait_g, wait_c = 0, 0
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then wait_g = ttl * 1000 end
ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then wait_c = ttl * 1000 end
if #KEYS < 4 or wait_g > 0 or wait_c > 0 then return {wait_g, wait_c} end
local credit = tonumber(ARGV[3])
local interval_g = tonumber(ARGV[1])
local slow = tonumber(redis.call('GET', KEYS[5]) or '0')
local share = tonumber(ARGV[4])
local tat_g = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now - credit)
local push = tonumber(ARGV[6] or '0')
if push > 0 then
  tat_g = tat_g + push
  redis.call('SET', KEYS[3], digits(tat_g), 'PX', math.ceil((tat_g - now) / 1000) + 1000)
end
if share > 0 then
  share = math.max(share, slow)
  redis.call('SET', KEYS[5], digits(share), 'PX', ARGV[5])
  slow = share
  tat_g = math.max(tat_g, now + share)
  redis.call('SET', KEYS[3], digits(tat_g), 'PX', math.ceil((tat_g - now) / 1000) + 1000)
end
interval_g = math.max(interval_g, slow)
local tat_c = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), now - credit)
if tat_g > now or tat_c > now then
  return {math.max(tat_g - now, 0), math.max(tat_c - now, 0), now}
end
tat_g = tat_g + interval_g
tat_c = tat_c + tonumber(ARGV[2])
redis.call('SET', KEYS[3], digits(tat_g), 'PX', math.ceil((tat_g - now) / 1000) + 1000)
redis.call('SET', KEYS[4], digits(tat_c), 'PX', math.ceil((tat_c - now) / 1000) + 1000)
return {0, 0, now}
""",
)

# --- the sender's last check before a request leaves for Telegram ----------------------

FENCE = Script(
    name="sender_fence",
    keys=("the partition's lease", "the part's sent marker (both carry the partition's tag)"),
    argv=("lease owner ('' without leases: the lease is not read)",),
    returns="{-1}: the lease is not ours; {0, the marker's value}: the part was sent "
    "(another owner, an earlier try); {1}: go. Run by ``workers.sender.sending`` right "
    "before the Bot API call, which no script can contain",
    source="""
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local done = redis.call('GET', KEYS[2])
if done then return {0, done} end
return {1}
""",
)

# --- the worker's typing indicator ---------------------------------------------------------

TYPING = Script(
    name="typing",
    keys=("the update's replied mark", "the chat's outbound stream (both in the chat's tag)"),
    argv=("... the typing entry's field/value pairs",),
    returns="1: the typing entry was added; 0: the pipeline's reply is stored (the mark is "
    "set before its entries are added), so nothing is: no typing entry follows the reply "
    "in its stream (``workers/worker/typing_indicator.py``)",
    source="""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV))
return 1
""",
)

SCRIPTS = (
    PUBLISH_UPDATE,
    PUBLISH_UPDATES,
    PARK_UPDATES,
    RECORD_LAYOUT,
    PUT_BOT,
    HEARTBEAT,
    RENEW_LEASE,
    RELEASE_LEASE,
    TAKE_LEASE,
    FINISH,
    GCRA,
    FENCE,
    TYPING,
)
