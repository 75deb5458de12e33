"""The durable queue: Redis Streams, partitioned by user, with dedupe atomic with the enqueue.

Layout (every key of one partition shares the hash tag ``{p}``, so each Lua script touches one
Redis Cluster slot):

- ``gw:q:{p}``          the partition's stream; consumer group ``workers``, whose consumers are
                        the worker processes (one name per process; the one that takes a
                        partition over deletes those it claimed everything from)
- ``gw:dd:{p}:<channel>:<digest>``  dedupe marker of a provider message id (7 days), named by
                        its digest (Meta's ids hold the user's number); value: the entry id
- ``gw:lease:{p}``      which worker owns the partition now (``PX`` = the visibility timeout)
- ``gw:att:{p}``        hash: entry id → attempts so far; ``<id>:t`` → how many of them failed
                        transiently, ``<id>:since`` → when the first of those failed (Redis time)
- ``gw:err:{p}``        hash: entry id → its last error, while it waits for a retry
- ``gw:dead``           dead letters (capped)
- ``gw:replay:<id>``    claim of a dead letter being replayed (an hour)
- ``gw:st:<channel>:<digest>``  a delivery status already counted (message id and status, an
                        hour): a provider's redelivery of its webhook is not counted again
- ``gw:workers``        sorted set: live worker ids → heartbeat expiry

A message goes to partition ``crc32(channel identity, user) mod QUEUE_PARTITIONS``, so every
message of one user lands in one stream in arrival order. Only the lease holder reads a
partition, and it handles one entry at a time, so a user's messages are handled one at a time in
order; different partitions (users) go in parallel, across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError, ResponseError

from services.common.redis_pipeline import AutoPipeline
from services.gateway.engine import InboundMessage

log = structlog.get_logger()

GROUP = "workers"
DEAD = "gw:dead"
WORKERS = "gw:workers"
DEAD_MAXLEN = 100_000
# Held by the replay of a dead letter while it runs (milliseconds; a process that dies in it
# blocks that record's replay this long at most), then kept once it is queued, so that a record
# whose delete failed is not queued a second time meanwhile.
REPLAY_CLAIM_SECONDS = 60
REPLAYED_CLAIM_SECONDS = 3600
# How long an erasure waits for a replay of one of the user's dead letters to finish (it takes
# milliseconds; one still holding its claim after this died in it, and the record is deleted).
ERASE_REPLAY_WAIT_SECONDS = 5.0
# How long one bulk replay call runs before it answers with where to go on (well under the
# 30-60 s after which a proxy in front of the gateway gives up).
BULK_REPLAY_SECONDS = 10.0

# Dedupe and enqueue in one step: a crash can neither lose the message nor let a redelivery in.
# KEYS[3]: the marker's name before session 16 (the id itself), still honoured.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[2], 'rid', ARGV[3], 'rt', ARGV[4])
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"""
# Count one more attempt (before it starts, so a crash counts too); with the last error and
# how many attempts failed transiently. False, counting nothing, when the entry is no longer in
# the stream: its user was erased while it waited for a retry in its worker's memory. Fields
# left for it go then (an attempt of a worker of an earlier release, running at the erase,
# recorded its error after it): nothing else would delete them.
ATTEMPT = """
if #redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[1]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. ':t', ARGV[1] .. ':since')
  redis.call('HDEL', KEYS[2], ARGV[1])
  return false
end
return {redis.call('HINCRBY', KEYS[1], ARGV[1], 1), redis.call('HGET', KEYS[2], ARGV[1]),
        redis.call('HGET', KEYS[1], ARGV[1] .. ':t')}
"""
# Record an attempt's error; a transient one is counted apart and its window starts with the
# first. Seconds since that first transient failure (0: none), by Redis's clock, which every
# worker shares. Nothing for an entry gone from the stream (its user was erased during the
# attempt): no acknowledgement or erase would ever delete the fields then.
RECORD_ERROR = """
if #redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[1]) == 0 then return '0' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local since = ARGV[1] .. ':since'
local time = redis.call('TIME')
local now = time[1] + time[2] / 1000000
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':t', 1)
  redis.call('HSETNX', KEYS[1], since, string.format('%.6f', now))
end
local first = redis.call('HGET', KEYS[1], since)
if not first then return '0' end
return string.format('%.6f', now - tonumber(first))
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Acknowledge only while still holding the lease (fencing): a worker that stalled past its
# lease must not acknowledge what its successor now owns.
ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3], ARGV[3] .. ':t', ARGV[3] .. ':since')
redis.call('HDEL', KEYS[4], ARGV[3])
return 1
"""
# Read new entries only while holding the lease (fencing, as the acknowledgement): a former
# holder that stalled past its lease (a long pause, CPU starvation) and resumes must not take
# entries delivered after its successor's takeover. They would be pending under its name, which
# nobody claims until the partition changes hands again, and its user's later messages would be
# answered first. {0}: not holding; {1, entries}; {2, last id}: nothing new (wait past that id).
READ_NEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
                       'STREAMS', KEYS[2], '>')
if got then return {1, got[1][2]} end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {2, info[i + 1]} end
end
return {2, '0-0'}
"""
# After a takeover: delete the group's other consumers that hold no pending entry. Every worker
# process reads under a name of its own and Redis keeps a consumer until it is deleted, so
# without this each restart or rebalance left one per partition for ever. One with entries still
# pending (a former holder that read after the takeover) is kept: deleting it would leave them
# delivered to nobody. Atomic, so nothing can become pending between the look and the delete.
PRUNE_CONSUMERS = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending
  for i = 1, #consumer, 2 do
    if consumer[i] == 'name' then name = consumer[i + 1] end
    if consumer[i] == 'pending' then pending = consumer[i + 1] end
  end
  if name ~= ARGV[2] and pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"""


def stream_key(partition: int) -> str:
    return f"gw:q:{{{partition}}}"


def dedupe_key(partition: int, channel: str, message_id: str) -> str:
    """Named by a digest of the id, not the id: a Cloud API id holds the user's number
    (base64), and a marker outlives the user's erasure by ``DEDUPE_TTL_SECONDS``."""
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return f"gw:dd:{{{partition}}}:{channel}:{digest}"


def legacy_dedupe_key(partition: int, channel: str, message_id: str) -> str:
    """A marker's name before session 16: checked too, so that a redelivery of a message
    accepted before the upgrade is still dropped (can go ``DEDUPE_TTL_SECONDS`` after it)."""
    return f"gw:dd:{{{partition}}}:{channel}:{message_id}"


def status_key(channel: str, message_id: str, status: str) -> str:
    """Named by a digest, as a dedupe marker is: a Cloud API id holds the user's number."""
    digest = hashlib.sha256(f"{message_id}\n{status}".encode()).hexdigest()[:32]
    return f"gw:st:{channel}:{digest}"


# How long a delivery status is remembered as counted: a redelivery (a 200 lost or too slow
# for the provider) comes within minutes; a status is three short keys per reply, kept briefly.
STATUS_SEEN_SECONDS = 3600


def lease_key(partition: int) -> str:
    return f"gw:lease:{{{partition}}}"


def attempts_key(partition: int) -> str:
    return f"gw:att:{{{partition}}}"


def errors_key(partition: int) -> str:
    return f"gw:err:{{{partition}}}"


def sent_log_key(channel: str, provider_message_id: str) -> str:
    """The replies the provider accepted for one message (``services.gateway.worker.SentLog``)."""
    return f"gw:sent:{channel}:{provider_message_id}"


def replay_claim_key(dead_id: str) -> str:
    return f"gw:replay:{dead_id}"


def partition_of(channel_identity: str, user_id: str, partitions: int) -> int:
    """Stable across processes and restarts (unlike ``hash()``)."""
    return zlib.crc32(f"{channel_identity}\x00{user_id}".encode()) % partitions


def encode_message(message: InboundMessage) -> str:
    data = {name: getattr(message, name) for name in _MESSAGE_FIELDS}
    data["timestamp"] = message.timestamp.isoformat()
    return orjson.dumps(data).decode()


_MESSAGE_FIELDS = tuple(f.name for f in dataclass_fields(InboundMessage))  # fields() is slow


def decode_message(text: str | bytes) -> InboundMessage:
    data = json.loads(text)
    data["timestamp"] = datetime.fromisoformat(data["timestamp"])
    return InboundMessage(**data)


@dataclass(frozen=True)
class Entry:
    partition: int
    id: str
    message: InboundMessage
    request_id: str
    received: float  # epoch seconds when the webhook arrived
    fields: dict[str, str]

    @property
    def queued_ms(self) -> int:
        """When it was queued, in ms by Redis's clock: a stream entry's id begins with it."""
        return int(self.id.partition("-")[0])


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Queue:
    def __init__(self, client: redis.Redis, partitions: int, dedupe_ttl: int) -> None:
        self.redis = client
        self.partitions = partitions
        self.dedupe_ttl = dedupe_ttl
        self._enqueue = client.register_script(ENQUEUE)
        # Every script of this client goes through it, the worker's sent log too.
        self.pipeline = AutoPipeline(client)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._ack = client.register_script(ACK)
        self._attempt = client.register_script(ATTEMPT)
        self._record_error = client.register_script(RECORD_ERROR)
        self._prune_consumers = client.register_script(PRUNE_CONSUMERS)
        self._read_new = client.register_script(READ_NEW)

    # --- producer side ---------------------------------------------------------------------

    async def enqueue(
        self, messages: list[InboundMessage], request_id: str, received: float
    ) -> list[str | None]:
        """Write each message unless its provider id was seen; the entry id, or None (dupe)."""
        if len(messages) == 1:  # the usual case: no task per message
            return [await self._write(messages[0], request_id, received)]
        # One partition's messages one after the other, in the webhook's order (one user's are
        # in one partition): written at once, on Redis Cluster each goes through a connection of
        # its own and they reach the stream in any order. Partitions still go in parallel.
        by_partition: dict[int, list[int]] = {}
        for index, message in enumerate(messages):
            by_partition.setdefault(self.partition(message), []).append(index)
        results: list[str | None] = [None] * len(messages)

        async def write(indexes: list[int]) -> None:
            for index in indexes:
                results[index] = await self._write(messages[index], request_id, received)

        await asyncio.gather(*(write(indexes) for indexes in by_partition.values()))
        return results

    async def _write(self, message: InboundMessage, request_id: str, received: float) -> str | None:
        partition = self.partition(message)
        result = await self.pipeline.script(
            self._enqueue,
            [
                dedupe_key(partition, message.channel, message.provider_message_id),
                stream_key(partition),
                legacy_dedupe_key(partition, message.channel, message.provider_message_id),
            ],
            [self.dedupe_ttl, encode_message(message), request_id, repr(received)],
        )
        return _s(result) if result else None

    async def first_statuses(self, channel: str, statuses: list[tuple[str, str]]) -> list[bool]:
        """For each (message id, status): whether this is its first report, so that a provider's
        redelivery of a status webhook is logged and counted once. One pipelined ``SET NX`` per
        status; a Redis that fails says "first" (counted, at worst, twice; never lost)."""

        async def first(message_id: str, status: str) -> bool:
            key = status_key(channel, message_id, status)
            return bool(
                await self.pipeline.command("SET", key, "1", "NX", "EX", STATUS_SEEN_SECONDS)
            )

        try:
            return list(await asyncio.gather(*(first(i, s) for i, s in statuses)))
        except RedisError:
            return [True] * len(statuses)

    def partition(self, message: InboundMessage) -> int:
        return partition_of(message.channel_identity, message.user_id, self.partitions)

    async def requeue(self, fields: dict[str, str]) -> str:
        """Put a dead letter's original message back on its partition (bypasses dedupe)."""
        message = decode_message(fields["m"])
        partition = self.partition(message)
        await self.ensure_group(partition)
        # "rp": a replay, whose earlier life may have sent part of its answer (see SentLog).
        kept: dict[Any, Any] = {k: fields[k] for k in ("m", "rid", "rt") if k in fields}
        entry_id = await self.redis.xadd(stream_key(partition), {**kept, "rp": "1"})
        return _s(entry_id)

    # --- consumer side ---------------------------------------------------------------------

    async def ensure_group(self, partition: int) -> None:
        try:
            await self.redis.xgroup_create(stream_key(partition), GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def ensure_groups(self) -> None:
        for partition in range(self.partitions):
            await self.ensure_group(partition)

    async def acquire(self, partition: int, token: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(lease_key(partition), token, nx=True, px=ttl_ms))

    async def renew(self, partition: int, token: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[lease_key(partition)], args=[token, ttl_ms]))

    async def release(self, partition: int, token: str) -> None:
        await self._release(keys=[lease_key(partition)], args=[token])

    async def holds(self, partition: int, token: str) -> bool:
        return _s(await self.redis.get(lease_key(partition)) or b"") == token

    async def take_over(self, partition: int, consumer: str) -> None:
        """Make every pending entry of the partition ours (its former holder is gone), then
        delete the consumers left with nothing pending."""
        start = "0-0"
        while True:
            try:
                result: Any = await self.redis.xautoclaim(
                    stream_key(partition),
                    GROUP,
                    consumer,
                    min_idle_time=0,
                    start_id=start,
                    count=100,
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Redis lost its data (its leases too, so this is the first look): start again.
                await self.ensure_group(partition)
                return
            start = _s(result[0])
            if start == "0-0":
                break
        await self._prune_consumers(keys=[stream_key(partition)], args=[GROUP, consumer])

    async def read_pending(
        self, partition: int, consumer: str, *, after: str, count: int
    ) -> tuple[list[Entry], str | None]:
        """Our own pending entries after ``after``, oldest first, and the id of the last one
        read (None: there are no more). Those that cannot be read are dead-lettered and left
        out, so the entries may be none while more are pending after that id."""
        try:
            response: Any = await self.redis.xreadgroup(
                GROUP, consumer, {stream_key(partition): after}, count=count
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.ensure_group(partition)  # Redis lost its data; start again
            return [], None
        items = [i for _, stream_items in response or [] for i in stream_items]
        last = _s(items[-1][0]) if items else None
        return await self._entries(partition, items), last

    async def read_new(
        self, partition: int, consumer: str, token: str, *, block_ms: int, count: int
    ) -> list[Entry] | None:
        """New entries, oldest first, taken only while ``token`` holds the partition's lease
        (None: it does not); waits up to ``block_ms`` for one. The wait is a plain XREAD, which
        takes nothing: a worker that stalls inside it cannot take what its successor owns."""
        waited = False
        while True:
            try:
                result: Any = await self._read_new(
                    keys=[lease_key(partition), stream_key(partition)],
                    args=[token, GROUP, consumer, count],
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self.ensure_group(partition)  # Redis lost its data; start again
                return []
            if result[0] == 0:
                return None
            if result[0] == 1:
                items = [
                    (entry_id, dict(zip(raw[::2], raw[1::2], strict=True)))
                    for entry_id, raw in result[1]
                ]
                return await self._entries(partition, items)
            if waited:
                return []
            await self.redis.xread({stream_key(partition): _s(result[1])}, count=1, block=block_ms)
            waited = True

    async def _entries(self, partition: int, items: list[Any]) -> list[Entry]:
        entries = []
        for entry_id, raw in items:
            if not raw:  # deleted while pending
                await self.redis.xack(stream_key(partition), GROUP, entry_id)
                continue
            fields = {_s(k): _s(v) for k, v in raw.items()}
            try:
                entries.append(self._entry(partition, _s(entry_id), fields))
            except CorruptEntry as corrupt:
                # Not ours to interpret: keep it for an operator, never block the partition.
                await self.dead_letter("corrupt_entry", str(corrupt), fields=fields)
                await self.redis.xack(stream_key(partition), GROUP, entry_id)
                await self.redis.xdel(stream_key(partition), entry_id)
        return entries

    @staticmethod
    def _entry(partition: int, entry_id: str, fields: dict[str, str]) -> Entry:
        try:
            message = decode_message(fields["m"])
            received = float(fields.get("rt", "0"))
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptEntry(partition, entry_id, fields, str(error)) from None
        return Entry(partition, entry_id, message, fields.get("rid", ""), received, fields)

    async def attempt(self, partition: int, entry_id: str) -> tuple[int, str, int] | None:
        """Count one more attempt (before it starts, so a crash counts too); with the last
        recorded error, if any, and how many of the attempts failed transiently. None when the
        entry is gone from the stream (erased): there is nothing to attempt."""
        counted = await self.pipeline.script(
            self._attempt,
            [attempts_key(partition), errors_key(partition), stream_key(partition)],
            [entry_id],
        )
        if counted is None:
            return None
        count, error, transient = counted
        return int(count), _s(error) if error else "", int(transient or 0)

    async def record_error(
        self, partition: int, entry_id: str, error: str, *, transient: bool = False
    ) -> float:
        """Keep an attempt's error for the next one; the seconds since the entry's first
        transient failure (0: none yet)."""
        since = await self.pipeline.script(
            self._record_error,
            [attempts_key(partition), errors_key(partition), stream_key(partition)],
            [entry_id, error[:2000], "1" if transient else "0"],
        )
        return float(_s(since))

    async def queued(self, partition: int, entry_id: str) -> bool:
        """Whether the entry is still in its stream (not acknowledged, not erased)."""
        return bool(await self.redis.xrange(stream_key(partition), entry_id, entry_id))

    async def drop(self, partition: int, entry_id: str, token: str) -> bool:
        """Acknowledge an entry that is finished without success (dead-lettered or skipped)."""
        return await self.ack(partition, entry_id, token)

    async def ack(
        self, partition: int, entry_id: str, token: str, *, forget: str | None = None
    ) -> bool:
        """Acknowledge a finished entry; ``forget``: a key kept only for this entry's attempts,
        deleted in the same write (in another slot on a Cluster: not inside the script). Its
        delete is best effort: the key has its own expiry."""
        acked = self.pipeline.script(
            self._ack,
            [
                lease_key(partition),
                stream_key(partition),
                attempts_key(partition),
                errors_key(partition),
            ],
            [token, GROUP, entry_id],
        )
        if forget is None:
            return bool(await acked)
        done: Any
        done, _ = await asyncio.gather(
            acked, self.pipeline.command("DEL", forget), return_exceptions=True
        )
        if isinstance(done, BaseException):
            raise done
        return bool(done)

    # --- dead letters --------------------------------------------------------------------

    async def dead_letter(
        self, reason: str, error: str, *, fields: dict[str, str] | None = None, raw: Any = None
    ) -> str:
        record = {
            "reason": reason,
            "error": error[:2000],
            "time": repr(time.time()),
            **{f"orig_{k}": v for k, v in (fields or {}).items()},
        }
        if raw is not None:
            record["raw"] = _dump_raw(raw)
        fields_out: Any = record
        return _s(await self.redis.xadd(DEAD, fields_out, maxlen=DEAD_MAXLEN, approximate=True))

    async def dead_letters(self, after: str | None, count: int) -> list[tuple[str, dict[str, str]]]:
        start = f"({after}" if after else "-"
        items: Any = await self.redis.xrange(DEAD, min=start, max="+", count=count)
        return [(_s(i), {_s(k): _s(v) for k, v in raw.items()}) for i, raw in items]

    async def replay(self, dead_id: str) -> str | None:
        """Re-enqueue a dead letter; None when unknown (or replayed, or being replayed by another
        call now); ValueError when it holds no message.

        Concurrent replays of one record (a double click, two operators) would each read it
        before any deleted it and queue the message once each: a claim decides which one may.
        It is a key of its own because the dead letters and the partitions lie in different
        Cluster slots, so no script can read, queue and delete in one step."""
        claim = replay_claim_key(dead_id)
        if not await self.redis.set(claim, "1", nx=True, ex=REPLAY_CLAIM_SECONDS):
            return None
        queued = False
        try:
            items: Any = await self.redis.xrange(DEAD, min=dead_id, max=dead_id)
            if not items:
                return None
            record = {_s(k): _s(v) for k, v in items[0][1].items()}
            fields = {
                k.removeprefix("orig_"): v for k, v in record.items() if k.startswith("orig_")
            }
            if "m" not in fields:
                raise ValueError("this dead letter holds no message to replay")
            try:  # a corrupt entry's: queued again, it would only be dead-lettered again
                decode_message(fields["m"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"this dead letter's message cannot be read: {error}") from None
            entry_id = await self.requeue(fields)
            queued = True
            await self.redis.expire(claim, REPLAYED_CLAIM_SECONDS)
            await self.redis.xdel(DEAD, dead_id)
            return entry_id
        finally:
            if not queued:  # nothing queued: a later replay may try again
                with contextlib.suppress(RedisError):
                    await self.redis.delete(claim)

    async def replay_reason(
        self,
        reason: str,
        *,
        before_ms: int | None = None,
        cursor: tuple[str, str] | None = None,
        limit: int = DEAD_MAXLEN,
        seconds: float = BULK_REPLAY_SECONDS,
    ) -> tuple[int, int, tuple[str, str] | None]:
        """Replay every dead letter of one reason (dead-lettered before ``before_ms``, epoch
        ms, when given), oldest first: how many were replayed, how many skipped (claimed by
        another replay or a delete, or holding no message that can be read), and where to go on
        (None: nothing is left). It stops there once ``limit`` records are done or ``seconds``
        have passed, so that a call for 50,000 ends in time.

        The records are those up to the last one there when the first call began (``cursor``:
        after which id, up to which): a replayed message that fails again is dead-lettered
        anew, after it, and must not be replayed again by the same run. Each record goes
        through ``replay``, its claim too, so that two bulk replays, or one and a single
        replay, queue a record once; one at a time, so that a user's messages are queued
        again in the order they came."""
        if cursor is None:
            if before_ms is not None and before_ms <= 0:
                return 0, 0, None  # none is older than 1970 (and "(0-0" is no bound Redis takes)
            newest = f"({before_ms}-0" if before_ms is not None else "+"
            last: Any = await self.redis.xrevrange(DEAD, max=newest, min="-", count=1)
            if not last:
                return 0, 0, None
            after, until = None, _s(last[0][0])
        else:
            after, until = cursor
        replayed = skipped = 0
        deadline = time.monotonic() + seconds
        start = f"({after}" if after else "-"
        async for dead_id, record in self._pages(DEAD, start=start, end=until):
            if record.get("reason") != reason:
                continue
            try:
                done = await self.replay(dead_id)
            except ValueError:
                done = None
            if done is None:
                skipped += 1
            else:
                replayed += 1
            if replayed + skipped >= limit or time.monotonic() >= deadline:
                return replayed, skipped, None if dead_id == until else (dead_id, until)
        return replayed, skipped, None

    async def discard(self, dead_id: str) -> bool:
        """Delete a dead letter that is not to be replayed, and the sent log kept for its
        replay; False when there is no such record (or a replay of it runs, or queued it).
        It takes a replay's claim, so that a replay running at that moment and this delete
        cannot both be done with one record."""
        claim = replay_claim_key(dead_id)
        if not await self.redis.set(claim, "1", nx=True, ex=REPLAY_CLAIM_SECONDS):
            return False
        try:
            items: Any = await self.redis.xrange(DEAD, min=dead_id, max=dead_id)
            if not items:
                return False
            record = {_s(k): _s(v) for k, v in items[0][1].items()}
            return await self._delete_dead([(dead_id, record)]) == 1
        finally:
            with contextlib.suppress(RedisError):
                await self.redis.delete(claim)

    async def discard_reason(self, reason: str) -> int:
        """Delete every dead letter of one reason (``unusable_payload``, ``unknown_business``…),
        with their sent logs; how many. For a stream filling up with records nobody will replay:
        one by one, 80,000 of them are 80,000 calls. Each takes a replay's claim, as a single
        delete does: a record being replayed (or just queued) is left to its replay, whose
        message's sent log must stay, or the parts it already sent would go again."""
        deleted = 0
        page: list[tuple[str, dict[str, str]]] = []
        async for dead_id, record in self._pages(DEAD):
            if record.get("reason") == reason:
                page.append((dead_id, record))
            if len(page) >= 1000:
                deleted += await self._discard_claimed(page)
                page = []
        return deleted + (await self._discard_claimed(page) if page else 0)

    async def _discard_claimed(self, records: list[tuple[str, dict[str, str]]]) -> int:
        """Delete those of these dead letters whose replay claim this call takes; how many."""
        claims = [replay_claim_key(dead_id) for dead_id, _ in records]
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                pipe.set(claim, "1", nx=True, ex=REPLAY_CLAIM_SECONDS)
            taken = await pipe.execute()
        mine = [record for record, ok in zip(records, taken, strict=True) if ok]
        try:
            return await self._delete_dead(mine) if mine else 0
        finally:
            held = [claim for claim, ok in zip(claims, taken, strict=True) if ok]
            if held:
                with contextlib.suppress(RedisError):
                    await self.redis.delete(*held)

    async def _delete_dead(self, records: list[tuple[str, dict[str, str]]]) -> int:
        """Delete these dead letters and the sent logs kept for their replay; how many were
        still there."""
        sent_logs = []
        for _, record in records:
            try:
                message = decode_message(record.get("orig_m", ""))
            except (KeyError, TypeError, ValueError):
                continue  # an unusable payload's or a corrupt entry's: no sent log
            sent_logs.append(sent_log_key(message.channel, message.provider_message_id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xdel(DEAD, *(dead_id for dead_id, _ in records))
            if sent_logs:
                pipe.delete(*sent_logs)
            deleted, *_ = await pipe.execute()
        return int(deleted)

    # --- erasure ---------------------------------------------------------------------------

    async def erase_user(self, user_ids: set[str], identities: set[str]) -> dict[str, int]:
        """Delete what the queue holds of one user (``user_ids``: the forms of their id) of one
        business (``identities``: its ``phone_number_id``s and numbers): their queued entries
        with those entries' attempts, errors and sent logs, and their dead letters with theirs.
        A dead letter without a message (an unusable payload, a corrupt entry) names no
        business: it goes when its raw text holds one of the ids as a whole string. The dedupe
        markers stay (no number, no text): they keep a late redelivery from being answered, and
        expire with ``DEDUPE_TTL_SECONDS``."""

        def readable(text: str) -> InboundMessage | None:
            try:
                return decode_message(text)
            except (KeyError, TypeError, ValueError):
                return None

        def theirs(message: InboundMessage) -> bool:
            return message.user_id in user_ids and message.channel_identity in identities

        # A raw record is JSON: the id as a whole string (Twilio's "whatsapp:+…" too), so that
        # erasing 34600000001 erases neither 134600000001's records nor any holding a bare "1".
        quoted = "|".join(re.escape(json.dumps(u)[1:-1]) for u in sorted(user_ids))
        named = re.compile(rf'"(?:whatsapp:)?(?:{quoted})"')

        # The dead letters first, each under its replay's claim, then the partitions: a replay
        # running now has queued the message again by the time its record is gone, and the
        # partitions' scan then finds the entry.
        found: dict[str, list[str]] = {}  # dead letter id -> the sent log kept for its replay
        async for dead_id, record in self._pages(DEAD):
            message = readable(record.get("orig_m", ""))
            if message is not None:
                if not theirs(message):
                    continue
                found[dead_id] = [sent_log_key(message.channel, message.provider_message_id)]
            elif named.search(record.get("raw", "") + record.get("orig_m", "")):
                found[dead_id] = []
        dead = await self._erase_dead(found)
        sent_logs = [key for keys in found.values() for key in keys]
        queued = 0
        partitions = {partition_of(i, u, self.partitions) for i in identities for u in user_ids}
        for partition in partitions:
            stream, ids = stream_key(partition), []
            async for entry_id, fields in self._pages(stream):  # answered entries are deleted
                message = readable(fields.get("m", ""))
                if message is not None and theirs(message):
                    ids.append(entry_id)
                    sent_logs.append(sent_log_key(message.channel, message.provider_message_id))
            if ids:
                # A worker holding one of them finds it deleted and skips it (``_entries``);
                # one already in hand is answered, and its turn saved, after this.
                fields_of = [f"{i}{suffix}" for i in ids for suffix in ("", ":t", ":since")]
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xack(stream, GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    pipe.hdel(attempts_key(partition), *fields_of)
                    pipe.hdel(errors_key(partition), *ids)
                    await pipe.execute()
                queued += len(ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in sent_logs:
                pipe.delete(key)
            done = await pipe.execute()
        return {"queued": queued, "dead_letters": dead, "sent_logs": sum(int(n) for n in done)}

    async def _erase_dead(self, ids: Iterable[str]) -> int:
        """Delete these dead letters, each under its replay's claim; how many this call deleted.
        One whose claim another call holds is waited for: a replay's record is gone once its
        message is queued again (an erasure then finds the entry), a failed one's claim is
        given back; a delete's record is gone. After ``ERASE_REPLAY_WAIT_SECONDS`` the claim's
        holder died in it, and the record goes without it."""
        pending = list(ids)
        deleted = 0
        waited = False
        deadline = time.monotonic() + ERASE_REPLAY_WAIT_SECONDS
        while pending:
            claims = [replay_claim_key(dead_id) for dead_id in pending]
            if time.monotonic() >= deadline:
                taken = [True] * len(pending)
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for claim in claims:
                        pipe.set(claim, "1", nx=True, ex=REPLAY_CLAIM_SECONDS)
                    taken = await pipe.execute()
            mine = [dead_id for dead_id, ok in zip(pending, taken, strict=True) if ok]
            if mine:
                try:
                    deleted += int(await self.redis.xdel(DEAD, *mine))
                finally:
                    held = [c for c, ok in zip(claims, taken, strict=True) if ok]
                    with contextlib.suppress(RedisError):
                        await self.redis.delete(*held)
            others = [dead_id for dead_id, ok in zip(pending, taken, strict=True) if not ok]
            if not others:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for dead_id in others:
                    pipe.xrange(DEAD, min=dead_id, max=dead_id)
                still = await pipe.execute()
            pending = [dead_id for dead_id, items in zip(others, still, strict=True) if items]
            if pending:
                if not waited:
                    log.info("erasure waits for a replay of a dead letter", dead_letters=pending)
                    waited = True
                await asyncio.sleep(0.05)
        return deleted

    async def _pages(
        self, stream: str, count: int = 1000, *, start: str = "-", end: str = "+"
    ) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every entry of a stream from ``start`` to ``end`` (XRANGE bounds), oldest first,
        read ``count`` at a time (the dead letters may be 100,000)."""
        while True:
            page: Any = await self.redis.xrange(stream, min=start, max=end, count=count)
            for entry_id, raw in page:
                yield _s(entry_id), {_s(k): _s(v) for k, v in raw.items()}
            if len(page) < count:
                return
            start = f"({_s(page[-1][0])}"

    # --- figures -------------------------------------------------------------------------

    async def stats(self) -> dict[str, float]:
        """The queue's figures for /metrics; ``oldest_seconds``: how long the oldest entry not
        yet finished has been queued (by Redis's clock: an entry's id begins with it), 0 when
        none. Entries are deleted when finished, so each stream's first entry is its oldest."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in range(self.partitions):
                pipe.xlen(stream_key(partition))
                pipe.xpending(stream_key(partition), GROUP)
                pipe.hlen(errors_key(partition))
                pipe.xrange(stream_key(partition), "-", "+", count=1)
            pipe.xlen(DEAD)
            pipe.zcount(WORKERS, time.time(), "+inf")
            pipe.time()
            results = await pipe.execute(raise_on_error=False)
        length = pending = retrying = 0
        oldest_ms: int | None = None
        for i in range(self.partitions):
            xlen, xpending, attempts, first = results[4 * i : 4 * i + 4]
            length += xlen if isinstance(xlen, int) else 0
            if isinstance(xpending, dict):
                pending += int(xpending.get("pending", 0))
            retrying += attempts if isinstance(attempts, int) else 0
            if isinstance(first, list) and first:
                queued_ms = int(_s(first[0][0]).partition("-")[0])
                oldest_ms = queued_ms if oldest_ms is None else min(oldest_ms, queued_ms)
        dead, workers, now = results[-3:]
        oldest_seconds = 0.0
        if oldest_ms is not None and isinstance(now, tuple):
            oldest_seconds = max(0.0, now[0] + now[1] / 1e6 - oldest_ms / 1000)
        return {
            "length": length,
            "pending": pending,
            "retrying": retrying,
            "oldest_seconds": round(oldest_seconds, 3),
            "dead_letters": dead if isinstance(dead, int) else 0,
            "live_workers": workers if isinstance(workers, int) else 0,
            "partitions": self.partitions,
        }


def _dump_raw(raw: Any) -> str:
    """What we could not use, for the record: JSON when possible, truncated; something
    readable when not (orjson refuses nesting deeper than 254, a hostile payload's favourite)."""
    try:
        text = orjson.dumps(raw, default=str).decode()
    except (TypeError, orjson.JSONEncodeError, RecursionError):
        text = f"(not serializable as JSON: {type(raw).__name__}, nested too deep or odd)"
    return text[:20_000]


class CorruptEntry(Exception):
    def __init__(self, partition: int, entry_id: str, fields: dict[str, str], error: str) -> None:
        super().__init__(error)
        self.partition = partition
        self.entry_id = entry_id
        self.fields = fields
