"""Conversations on Redis: every operation on one conversation is one Lua script, one round trip.

Keys (see :mod:`services.session.model` for the hash tag):

- ``…:meta``    hash ``id``, ``v`` (version), ``c`` / ``u`` (created / updated, ms since epoch),
  ``s`` (the state's size, for its bounds; absent until an update changes the state)
- ``…:history`` list of JSON messages, oldest first, trimmed to the history limit
- ``…:state``   hash of state key → JSON value
- ``conversation-index:{<business>:<shard>}`` sorted set, member ``<role>:<user>``, score the
  conversation's expiry (ms): listing reads only live entries, and each write prunes the
  expired ones, so the index stays right as keys expire.
- ``conversation-ended:{<business>:<shard>}`` sorted set of the ids of conversations ended
  lately, score until when: a write-back never puts one of them again.
- ``conversation-erased:{<business>:<shard>}`` sorted set, member a SHA-1 digest of
  ``<role>:<user>`` (no number), score when that user's conversation was last ended (ms): a
  write-back never puts a conversation of theirs created before then, whatever its id.

The scripts take the time from Redis (``TIME``), so replicas of this service never disagree
about expiry.

Out of memory (``maxmemory`` under ``noeviction``), Redis checks a script without flags only at
its first write, and lets the rest run once one has (a half-run script would break its
atomicity). ``DEL`` is never refused, since it frees memory, so a script that starts with one
would write past the limit. So the writing scripts start with ``#!lua`` (refused whole, before
they run), GET creates with an ``HSET`` before its ``DEL`` (its reads go on), and the scripts
that end a conversation delete before they add its id to the ended set, so they run anyway.

``redis-py``'s ``Script`` sends ``EVALSHA`` and loads the script on ``NOSCRIPT``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from services.common.errors import VersionConflict
from services.common.redis_client import RedisClient
from services.common.redis_pipeline import AutoPipeline
from services.session.model import (
    INDEX_SHARDS,
    KEY_PREFIX,
    MAX_STATE_BYTES,
    MAX_STATE_KEYS,
    Conversation,
    ConversationKey,
    Cursor,
    Page,
    Role,
    StateTooLarge,
    Summary,
    encode_cursor,
    ended_key,
    erased_key,
    index_key,
    ledger_key,
    legacy_key,
    parse_member,
)

# Shared by the scripts: the server's clock in ms, and the index bookkeeping after a write.
MAX_EXAMINED = 1000  # index entries one ListConversations page may walk past
# How long an ended id is kept out beyond a TTL: another replica's copy of the conversation,
# kept alive by its writes during an outage, is written back when that outage ends.
ENDED_KEPT_MS = 24 * 3600 * 1000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_INDEX = """
local function index(expire, ttl, member)
  local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], expire, member)
  -- The index outlives its newest entry by at least one TTL, so expired entries are seen (and
  -- counted) by the next write in that window; after it the whole index expires on its own.
  -- Extended to two TTLs past the entry, so this runs once per TTL, not on every write.
  if redis.call('PTTL', KEYS[4]) < 2 * ttl then
    redis.call('PEXPIREAT', KEYS[4], expire + 2 * ttl)
  end
  return pruned
end
local function expire_all(at)
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[2], at)
  redis.call('PEXPIREAT', KEYS[3], at)
end
"""

# KEYS meta history state index
# ARGV expected ('' = any), ttl_ms, history_limit, new_id, member, n_append, n_set, n_remove,
#      known id, known version, messages…, set key/value pairs…, removed keys…
# When the caller holds the conversation at the version this write starts from (as for GET),
# the reply leaves out history and state: the caller applies the same change to its copy.
UPDATE = (
    "#!lua\n"
    + _NOW
    + _INDEX
    + """
local meta = redis.call('HMGET', KEYS[1], 'id', 'v', 'c', 's')
local id, version, created = meta[1], tonumber(meta[2]) or 0, meta[3]
if not id then version = 0 end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then return {'conflict', version} end
local known = id and id == ARGV[9] and version == tonumber(ARGV[10])
local ttl, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local na, ns, nr = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local size = nil
if ns > 0 or nr > 0 then
  -- The state's bounds, before anything is written (as model.check_state_bounds). Its size is
  -- kept in meta's 's'; a state written without it (a write-back, an import) is counted once.
  -- A present value is never empty (JSON), so HSTRLEN 0 means absent.
  local count = 0
  size = 0
  if id then
    count = redis.call('HLEN', KEYS[3])
    size = tonumber(meta[4])
    if not size then
      size = 0
      for _, part in ipairs(redis.call('HGETALL', KEYS[3])) do size = size + #part end
    end
  end
  local count_before, size_before = count, size
  local first_set = 11 + na
  local first_removed = first_set + 2 * ns
  local removed = {}
  for j = first_removed, first_removed + nr - 1 do removed[ARGV[j]] = true end
  for j = first_set, first_removed - 1, 2 do
    local name = ARGV[j]
    local old = id and redis.call('HSTRLEN', KEYS[3], name) or 0
    if old > 0 then count, size = count - 1, size - #name - old end
    if removed[name] then
      removed[name] = nil  -- set, then removed: counted out above
    else
      count, size = count + 1, size + #name + #ARGV[j + 1]
    end
  end
  for name in pairs(removed) do
    local old = id and redis.call('HSTRLEN', KEYS[3], name) or 0
    if old > 0 then count, size = count - 1, size - #name - old end
  end
  if (count > MAX_KEYS and count > count_before) or (size > MAX_BYTES and size > size_before) then
    return {'too_large', count, size}
  end
end
local made = 0
if not id then
  redis.call('DEL', KEYS[2], KEYS[3])
  id, created, made = ARGV[4], now, 1
end
local i = 11
if na > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, i + na - 1))
  redis.call('LTRIM', KEYS[2], -limit, -1)
  i = i + na
end
if ns > 0 then
  redis.call('HSET', KEYS[3], unpack(ARGV, i, i + 2 * ns - 1))
  i = i + 2 * ns
end
if nr > 0 then redis.call('HDEL', KEYS[3], unpack(ARGV, i, i + nr - 1)) end
version = version + 1
local expire = now + ttl
if made == 1 then
  redis.call('HSET', KEYS[1], 'id', id, 'v', version, 'c', created, 'u', now, 's', size or 0)
elseif size then
  redis.call('HSET', KEYS[1], 'v', version, 'u', now, 's', size)
else
  redis.call('HSET', KEYS[1], 'v', version, 'u', now)
end
expire_all(expire)
local pruned = index(expire, ttl, ARGV[5])
if known then return {'applied', id, version, created, now, expire, made, pruned} end
return {'ok', id, version, created, now, expire, made, pruned,
        redis.call('LRANGE', KEYS[2], 0, -1), redis.call('HGETALL', KEYS[3])}
""".replace("MAX_KEYS", str(MAX_STATE_KEYS)).replace("MAX_BYTES", str(MAX_STATE_BYTES))
)

# KEYS meta history state index; ARGV create (0/1), ttl_ms, new_id, member, known id, known
# version. When the caller already holds this id at this version (known id '' = nothing), the
# reply leaves out history and state: an id and version stand for exactly one content.
GET = (
    _NOW
    + _INDEX
    + """
local meta = redis.call('HMGET', KEYS[1], 'id', 'v', 'c', 'u')
if meta[1] then
  local expire = now + redis.call('PTTL', KEYS[1])
  if meta[1] == ARGV[5] and meta[2] == ARGV[6] then
    return {'same', meta[1], tonumber(meta[2]), meta[3], meta[4], expire, 0, 0}
  end
  return {'ok', meta[1], tonumber(meta[2]), meta[3], meta[4], expire, 0, 0,
          redis.call('LRANGE', KEYS[2], 0, -1), redis.call('HGETALL', KEYS[3])}
end
if ARGV[1] ~= '1' then return {'missing'} end
local ttl = tonumber(ARGV[2])
local expire = now + ttl
redis.call('HSET', KEYS[1], 'id', ARGV[3], 'v', 1, 'c', now, 'u', now)  -- first: refused if OOM
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PEXPIREAT', KEYS[1], expire)
local pruned = index(expire, ttl, ARGV[4])
return {'ok', ARGV[3], 1, now, now, expire, 1, pruned, {}, {}}
"""
)

# KEYS meta history state index; ARGV ttl_ms, member
TOUCH = (
    _NOW
    + _INDEX
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local ttl = tonumber(ARGV[1])
local expire = now + ttl
expire_all(expire)
local pruned = index(expire, ttl, ARGV[2])
return {'ok', expire, pruned}
"""
)

# An end leaves the ended id in the shard's ``conversation-ended`` sorted set (score: until when)
# for a TTL and ENDED_KEPT_MS more, and no write-back puts that id again: another replica's
# outage copy of an ended (erased) conversation never comes back. Only ids, no user, are kept.
# It also leaves when it ended the user's conversation in ``conversation-erased`` (a digest of
# the member ARGV[1], no number), kept as long: an end finding nothing in Redis (the
# conversation expired there) has no id to keep out, while another replica may have continued
# it from memory during an outage, or started one there before the end; no write-back puts a
# conversation of the user created before the end.
_ENDED = """
local function tombstone(id, ttl)
  local kept = now + ttl + ENDED_KEPT_MS
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  redis.call('ZADD', KEYS[5], kept, id)
  redis.call('PEXPIREAT', KEYS[5], kept)
end
local function erased(at, ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - ttl - ENDED_KEPT_MS)
  local digest = redis.sha1hex(ARGV[1])
  local before = tonumber(redis.call('ZSCORE', KEYS[6], digest))
  if not before or before < at then redis.call('ZADD', KEYS[6], at, digest) end
  redis.call('PEXPIREAT', KEYS[6], now + ttl + ENDED_KEPT_MS)
end
""".replace("ENDED_KEPT_MS", str(ENDED_KEPT_MS))

# KEYS meta history state index ended erased; ARGV member, ttl_ms. Deletes before it writes,
# so it runs even when Redis is out of memory: an end frees more than its tombstone takes.
END = (
    _NOW
    + _ENDED
    + """
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
erased(now, tonumber(ARGV[2]))
if not id then return 0 end
tombstone(id, tonumber(ARGV[2]))
return 1
"""
)

# An end made during an outage, at write-back: the conversation with that id is ended whatever
# its version (another replica may have written it meanwhile: an end is an erase, it wins) and
# its id kept out, even when Redis no longer holds it (another replica's outage copy may come
# back after this). Another id created before the end (ARGV[4], ms) is the conversation the user
# had then, which this replica's copy had missed (ended and started again elsewhere): ended
# too, as an end on Redis would have (in the end's millisecond too: an erase errs on erasing).
# Another id created since is a conversation started after the end: it stays.
# KEYS meta history state index ended erased; ARGV member, id, ttl_ms, ended_ms
END_WRITTEN_BACK = (
    _NOW
    + _ENDED
    + """
local meta = redis.call('HMGET', KEYS[1], 'id', 'c')
local held, ttl = meta[1], tonumber(ARGV[3])
local outcome = 0
if held == ARGV[2] or (held and (tonumber(meta[2]) or 0) <= tonumber(ARGV[4])) then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])  -- first: runs over maxmemory too
  redis.call('ZREM', KEYS[4], ARGV[1])
  if held ~= ARGV[2] then tombstone(held, ttl) end
  outcome = 1
elseif held then
  outcome = -2
end
tombstone(ARGV[2], ttl)
erased(tonumber(ARGV[4]), ttl)
return outcome
"""
)

# Whether a write-back or an import of a conversation is kept out by an end (see _ENDED): its id
# ended lately, or created before its user's conversation was last ended.
_KEPT_OUT = """
local function kept_out(id, created, member)
  local ended = redis.call('ZSCORE', KEYS[5], id)
  if ended and tonumber(ended) > now then return true end
  local erased = tonumber(redis.call('ZSCORE', KEYS[6], redis.sha1hex(member)))
  return erased ~= nil and created < erased
end
"""

# KEYS as PUT's; ARGV id, created, member: 1 when PUT would answer 'ended' (an import's dry run).
KEPT_OUT = _NOW + _KEPT_OUT + "return kept_out(ARGV[1], tonumber(ARGV[2]), ARGV[3]) and 1 or 0"

# Write a whole conversation unless Redis already holds the same or a higher version
# (write-back after an outage, and import); answers the outcome, the version Redis held and,
# when it wrote the index, the expired entries it pruned.
# KEYS meta history state index ended erased;
# ARGV id, version, created, updated, expire_ms, member, n_history, n_state,
#      mode (1 write-back: Redis holding another id is a conflict, 'other', as versions restart
#      with every id; the same version with the same history and state is 'same', keeping the
#      later expiry, as a touch during an outage may have set. 0 import. On both, a
#      conversation an end keeps out (_KEPT_OUT) is 'ended', not written; 2 import that writes
#      it all the same, and undoes the end for later write-backs), history…, state…
PUT = (
    "#!lua\n"
    + _NOW
    + _INDEX
    + _KEPT_OUT
    + """
local meta = redis.call('HMGET', KEYS[1], 'id', 'v', 'u')
local current = tonumber(meta[2]) or 0
local version, expire = tonumber(ARGV[2]), tonumber(ARGV[5])
if ARGV[9] ~= '2' and kept_out(ARGV[1], tonumber(ARGV[3]), ARGV[6]) then
  return {'ended', current}
end
if meta[1] and meta[1] ~= ARGV[1] then
  -- Another conversation: versions restart with every id and say nothing across ids. A
  -- write-back never replaces it; an import does only when it was updated later.
  if ARGV[9] == '1' then return {'other', current} end
  if (tonumber(meta[3]) or 0) >= tonumber(ARGV[4]) then return {'newer', current} end
  current = 0
end
local nh, ns = tonumber(ARGV[7]), tonumber(ARGV[8])
if current >= version then
  if ARGV[9] == '1' and current == version and meta[1] == ARGV[1] then
    -- The same version of the same conversation: this very copy (written back before, its
    -- answer lost; an update applied here and in memory, its answer timed out), or another
    -- replica's outage copy made from the version before, with other content: that one is
    -- 'kept' (counted as lost). This copy is 'same', keeping the later expiry (a touch).
    local history = redis.call('LRANGE', KEYS[2], 0, -1)
    local state = redis.call('HGETALL', KEYS[3])
    if #history ~= nh or #state ~= 2 * ns then return {'kept', current} end
    for i = 1, nh do
      if history[i] ~= ARGV[9 + i] then return {'kept', current} end
    end
    local ours = {}
    for j = 10 + nh, 9 + nh + 2 * ns, 2 do ours[ARGV[j]] = ARGV[j + 1] end
    for j = 1, #state, 2 do
      if ours[state[j]] ~= state[j + 1] then return {'kept', current} end
    end
    local pruned = 0
    if now + redis.call('PTTL', KEYS[1]) < expire then
      expire_all(expire)
      pruned = index(expire, expire - now, ARGV[6])
    end
    return {'same', current, pruned}
  end
  return {'kept', current}
end
if expire <= now then return {'expired', current} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if nh > 0 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 10, 9 + nh)) end
if ns > 0 then redis.call('HSET', KEYS[3], unpack(ARGV, 10 + nh, 9 + nh + 2 * ns)) end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'v', version, 'c', ARGV[3], 'u', ARGV[4])
expire_all(expire)
local pruned = index(expire, expire - now, ARGV[6])
if ARGV[9] == '2' then
  -- An end undone on purpose: write-backs of the restored conversation are taken again.
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[6], redis.sha1hex(ARGV[6]))
end
return {'written', current, pruned}
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


class RedisStore:
    """The Redis side; every method raises redis-py's errors when Redis is unreachable."""

    def __init__(self, client: RedisClient, *, ttl_seconds: int, history_limit: int) -> None:
        self.client = client
        self.ttl_ms = ttl_seconds * 1000
        self.history_limit = history_limit
        self._update: AsyncScript = client.register_script(UPDATE)
        self._get: AsyncScript = client.register_script(GET)
        self._touch: AsyncScript = client.register_script(TOUCH)
        self._end: AsyncScript = client.register_script(END)
        self._put: AsyncScript = client.register_script(PUT)
        self._end_written_back: AsyncScript = client.register_script(END_WRITTEN_BACK)
        self._kept_out: AsyncScript = client.register_script(KEPT_OUT)
        self._pipeline = AutoPipeline(client)

    @staticmethod
    def _conversation(key: ConversationKey, reply: list[Any]) -> tuple[Conversation, bool, int]:
        """(conversation, created, expired index entries pruned) from an ``ok`` reply."""
        _, cid, version, created, updated, expire, made, pruned, history, state = reply
        conversation = Conversation(
            id=_text(cid),
            key=key,
            history=list(history),
            state=_state(state),
            version=int(version),
            created_ms=int(created),
            updated_ms=int(updated),
            expire_ms=int(expire),
        )
        return conversation, bool(made), int(pruned)

    async def get(
        self,
        key: ConversationKey,
        *,
        create: bool,
        new_id: str,
        known: Conversation | None = None,
    ) -> tuple[Conversation | None, bool, int]:
        """``known``: this conversation as Redis held it earlier, if the caller has it; when
        Redis still holds that id and version, its history and state are not sent again."""
        args = ["1" if create else "0", self.ttl_ms, new_id, key.member]
        args += ["", ""] if known is None else [known.id, known.version]
        reply = await self._pipeline.script(self._get, key.redis_keys(), args)
        if reply[0] == b"missing":
            return None, False, 0
        if reply[0] == b"same":
            assert known is not None
            return known.expiring_at(int(reply[5])), False, 0
        return self._conversation(key, reply)

    async def update(
        self,
        key: ConversationKey,
        *,
        append: list[bytes],
        set_state: dict[str, bytes],
        remove_state: list[str],
        expected_version: int | None,
        new_id: str,
        known: Conversation | None = None,
    ) -> tuple[Conversation, bool, int]:
        """``known``: as for :meth:`get`; when the write starts from it, the change is applied
        to it here instead of the whole conversation coming back."""
        args: list[Any] = [
            "" if expected_version is None else expected_version,
            self.ttl_ms,
            self.history_limit,
            new_id,
            key.member,
            len(append),
            len(set_state),
            len(remove_state),
            *(("", "") if known is None else (known.id, known.version)),
            *append,
        ]
        for name, value in set_state.items():
            args.append(name)
            args.append(value)
        args.extend(remove_state)
        reply = await self._pipeline.script(self._update, key.redis_keys(), args)
        if reply[0] == b"conflict":
            raise VersionConflict(int(reply[1]))
        if reply[0] == b"too_large":
            raise StateTooLarge(int(reply[1]), int(reply[2]))
        if reply[0] == b"applied":
            assert known is not None
            _, _, version, _, updated, expire, _, pruned = reply
            changed = known.changed(
                append, set_state, remove_state, self.history_limit, int(updated), int(expire)
            )
            assert changed.version == int(version)
            return changed, False, int(pruned)
        return self._conversation(key, reply)

    async def touch(self, key: ConversationKey) -> tuple[int | None, int]:
        """(new expiry ms or None when there is no live conversation, index entries pruned)."""
        reply = await self._touch(keys=key.redis_keys(), args=[self.ttl_ms, key.member])
        if reply[0] == b"missing":
            return None, 0
        return int(reply[1]), int(reply[2])

    @staticmethod
    def _keys_and_ended(key: ConversationKey) -> list[str]:
        return [*key.redis_keys(), ended_key(key), erased_key(key)]

    async def end(self, key: ConversationKey) -> bool:
        keys = self._keys_and_ended(key)
        ended = bool(await self._end(keys=keys, args=[key.member, self.ttl_ms]))
        await self._erase_legacy(key)
        return ended

    async def _erase_legacy(self, key: ConversationKey) -> None:
        """The legacy key ``migrate legacy`` kept for rollback (7 days), and its ledger entry,
        when it was migrated into this business: an end is how a user is erased, and that copy
        holds their old history under their number. Commands of their own: another slot."""
        name, ledger = legacy_key(key), ledger_key(key.business_id)
        if await self.client.hexists(ledger, name):
            await self.client.delete(name)
            await self.client.hdel(ledger, name)

    async def end_written_back(self, key: ConversationKey, cid: str, ended_ms: int) -> int:
        """An end made during an outage at ``ended_ms``, of conversation ``cid``, whatever its
        version now, or of another created before then: 1 ended; 0 nothing was there; -2 Redis
        holds another conversation, started since, kept. Its id is kept out of later
        write-backs in every case."""
        args: list[str | int] = [key.member, cid, self.ttl_ms, ended_ms]
        outcome = int(await self._end_written_back(keys=self._keys_and_ended(key), args=args))
        await self._erase_legacy(key)
        return outcome

    async def put(
        self, conversation: Conversation, *, write_back: bool = True, restore_ended: bool = False
    ) -> tuple[str, int, int]:
        """Write unless Redis has this version or newer: ('written'|'kept'|'expired', theirs,
        expired index entries pruned);
        on write-back, Redis holding this very copy (history and state) is 'same'.
        When Redis holds another conversation (another id): on write-back 'other', nothing
        written; on import 'newer' unless this one was updated later, which then replaces it.
        A conversation ended lately, or created before its user's conversation was last ended,
        is 'ended', nothing written (an erase is not undone by a write-back or a restore);
        ``restore_ended`` (an import only) writes it all the same."""
        key = conversation.key
        args: list[Any] = [
            conversation.id,
            conversation.version,
            conversation.created_ms,
            conversation.updated_ms,
            conversation.expire_ms,
            key.member,
            len(conversation.history),
            len(conversation.state),
            "1" if write_back else "2" if restore_ended else "0",
            *conversation.history,
        ]
        for name, value in conversation.state.items():
            args.append(name)
            args.append(value)
        outcome, current, *pruned = await self._put(keys=self._keys_and_ended(key), args=args)
        return _text(outcome), int(current), int(pruned[0]) if pruned else 0

    async def kept_out(self, conversation: Conversation) -> bool:
        """Whether :meth:`put` would answer 'ended' (for a dry run)."""
        key = conversation.key
        args: list[str | int] = [conversation.id, conversation.created_ms, key.member]
        return bool(await self._kept_out(keys=self._keys_and_ended(key), args=args))

    async def list_page(
        self, business_id: str, role: Role | None, page_size: int, cursor: Cursor
    ) -> Page:
        """One page of live conversations, walking the index shards in order.

        Within a shard, entries come by (expiry, member) after the cursor's position. A write
        moves an entry to a later expiry, so like SCAN an entry live for the whole walk is
        returned at least once, and one written during the walk may come twice.
        """
        items: list[Summary] = []
        shard = cursor.shard
        after = (
            (cursor.after_score, cursor.after_member) if cursor.after_score is not None else None
        )
        now = int(time.time() * 1000)
        # Bounds the work of one page, over all the shards it walks: a role filter passing
        # over a big business's other role would otherwise read up to 16 budgets' worth.
        budget = max(4 * page_size, MAX_EXAMINED)
        while shard < INDEX_SHARDS:
            picked, last, done, examined = await self._walk_shard(
                index_key(business_id, shard),
                business_id,
                role,
                after,
                now,
                page_size - len(items),
                budget,
            )
            items.extend(await self._summaries(picked))
            if not done:
                assert last is not None
                return Page(items, encode_cursor(Cursor(shard, last[0], last[1])))
            # A shard is done only within the budget: what is left of it goes on to the next.
            shard, after, budget = shard + 1, None, budget - examined
        return Page(items, "")

    async def _walk_shard(
        self,
        key: str,
        business_id: str,
        role: Role | None,
        after: tuple[int, str] | None,
        now: int,
        need: int,
        budget: int,
    ) -> tuple[list[tuple[ConversationKey, int]], tuple[int, str] | None, bool, int]:
        """(picked, position of the last entry examined, whether the shard is done, how many
        entries were examined).

        Each read starts at the score of the last entry examined, never at an offset: an entry
        behind that position that is written meanwhile moves to a later expiry, which would
        shift every entry after it and make an offset skip one that was live all along."""
        low = after[0] if after is not None and after[0] > now else now + 1
        picked: list[tuple[ConversationKey, int]] = []
        last: tuple[int, str] | None = None
        batch_size, examined = max(need, 16), 0
        while True:
            batch: list[Any] = await self.client.zrange(
                key, low, "+inf", byscore=True, offset=0, num=batch_size, withscores=True
            )
            progressed = False
            for raw_member, raw_score in batch:
                position = (int(raw_score), _text(raw_member))
                if after is not None and position <= after:
                    continue
                after = last = position
                progressed = True
                examined += 1
                parsed = parse_member(position[1])
                if parsed is not None and (role is None or parsed[0] == role):
                    picked.append((ConversationKey(business_id, parsed[1], parsed[0]), position[0]))
                if len(picked) == need or examined >= budget:
                    return picked, last, False, examined
            if len(batch) < batch_size:
                return picked, last, True, examined
            if after is not None:
                low = after[0]
            if not progressed:  # a batch of entries sharing the score already passed
                batch_size *= 2

    async def _summaries(self, picked: list[tuple[ConversationKey, int]]) -> list[Summary]:
        if not picked:
            return []
        # All keys of one shard share a slot, so this pipeline goes to one node.
        pipe = self.client.pipeline(transaction=False)
        for key, _ in picked:
            meta, history, _state, _index = key.redis_keys()
            pipe.hmget(meta, "id", "v", "u")
            pipe.llen(history)
        replies = await pipe.execute()
        out = []
        for n, (key, score) in enumerate(picked):
            (cid, version, updated), count = replies[2 * n], replies[2 * n + 1]
            if cid is None:  # ended or expired since the index said otherwise
                continue
            out.append(Summary(_text(cid), key, int(version), int(count), int(updated), score))
        return out

    async def scan_conversations(self, batch: int = 500) -> list[ConversationKey]:
        """Every conversation's key, found with SCAN on every primary (for export)."""
        keys: list[ConversationKey] = []
        pattern = f"{KEY_PREFIX}*:meta"
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()  # learns the topology on first use
            nodes = self.client.get_primaries()
            for node in nodes:
                cursor = 0
                while True:
                    # redis-py answers a cluster SCAN with {node name: cursor} and the keys.
                    reply: Any = await self.client.scan(
                        cursor, match=pattern, count=batch, target_nodes=node
                    )
                    cursors, found = reply
                    cursor = int(cursors[node.name])
                    keys.extend(_parsed(found))
                    if cursor == 0:
                        break
        else:
            async for raw in self.client.scan_iter(match=pattern, count=batch):
                keys.extend(_parsed([raw]))
        return keys

    async def load(self, key: ConversationKey) -> Conversation | None:
        conversation, _, _ = await self.get(key, create=False, new_id="")
        return conversation


def _parsed(raw_keys: list[Any]) -> list[ConversationKey]:
    out = []
    for raw in raw_keys:
        parsed = ConversationKey.from_meta_key(_text(raw))
        if parsed is not None:
            out.append(parsed)
    return out
