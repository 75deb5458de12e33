"""Auto-pipelining for Lua scripts: calls that arrive while Redis is busy share one round trip.

A busy service runs many independent scripts at once (one per RPC or webhook in flight). Sent
one by one through redis-py, each takes a pooled connection, a write and a read of its own, and
wakes the event loop again: that costs more CPU than the script itself, here and in Redis.
:class:`ScriptBatcher` keeps one batch on the wire at a time: a call made while none is in
flight goes at once, alone (no added latency when idle); calls made while one is in flight
queue up and go together as one redis-py pipeline (``transaction=False``: one write, one read,
one connection) as soon as it returns. Under load, batches grow by themselves. The batcher keeps
one pooled connection for itself, so a call takes no pool lock and no per-command retry wrapper.

Each call keeps its own outcome: a script error fails only its caller, a connection error fails
every call of that batch (as it would have failed each of them alone). ``NOSCRIPT`` (after a
Redis restart or failover) loads the script and sends those calls once more: a call that got
``NOSCRIPT`` never ran.

Redis Cluster clients are not batched (a batch would span slots and nodes); their calls go one
by one through redis-py's ``Script``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from services.common.redis_client import RedisClient

MAX_BATCH = 256  # calls per pipeline; a larger queue goes as several batches in turn
IDLE_CHECK_SECONDS = 1.0  # a connection idle longer is checked before use


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    numkeys: int
    arguments: list[Any]  # keys, then args
    future: asyncio.Future[Any]

    def settle(self, reply: Any) -> None:
        if self.future.done():
            return  # the caller gave up (deadline); the script may have run regardless
        if isinstance(reply, BaseException):
            self.future.set_exception(reply)
        else:
            self.future.set_result(reply)


class ScriptBatcher:
    """Runs registered scripts (``client.register_script``), pipelining concurrent calls."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        # Cluster: no pool of its own to hold a connection from, and batches would span nodes.
        self._pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._queue: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None
        self._held: Connection | None = None
        self._last_used = 0.0

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)``, sharing a round trip with concurrent calls."""
        if self._pool is None:
            return await script(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        call = _Call(script, len(keys), [*keys, *args], loop.create_future())
        self._queue.append(call)
        if self._sending is None:
            self._sending = loop.create_task(self._send_queued())
        return await call.future

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._send(batch, reload=True)
                except Exception as error:
                    for call in batch:
                        call.settle(error)
        finally:
            self._sending = None
            for call in self._queue:  # cancelled with calls still queued: fail, don't strand
                call.settle(ConnectionError("the Redis batch was cancelled"))
            self._queue = []

    async def _send(self, batch: list[_Call], *, reload: bool) -> None:
        replies = await self._round_trip(
            [("EVALSHA", c.script.sha, c.numkeys, *c.arguments) for c in batch]
        )
        missing = []
        for call, reply in zip(batch, replies, strict=True):
            if reload and isinstance(reply, NoScriptError):
                missing.append(call)
            else:
                call.settle(reply)
        if missing:  # on this same connection: the one known to reach the restarted Redis
            loads = [("SCRIPT", "LOAD", script.script) for script in {c.script for c in missing}]
            for reply in await self._round_trip(loads):
                if isinstance(reply, Exception):
                    raise reply
            await self._send(missing, reload=False)

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands on this batcher's own pooled connection and read every reply.

        The connection is held for the batcher's life: no pool lock per call. A send that fails
        on a connection idle since Redis went away (reset, broken pipe) is sent once more on a
        new connection: Redis never read it. Any other failure drops the connection and fails
        the batch (the script may have run: only the caller can tell whether to retry).
        """
        for fresh in (False, True):
            connection = await self._connection()
            try:
                await connection.send_packed_command(connection.pack_commands(commands))
            except RedisConnectionError:
                await self._drop_connection()
                if fresh:
                    raise
                continue
            try:
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as error:  # this call's error; read the others
                        replies.append(error)
                return replies
            except BaseException:
                await self._drop_connection()
                raise
        raise AssertionError("unreachable")

    async def _connection(self) -> Connection:
        assert self._pool is not None
        now = time.monotonic()
        if self._held is None:
            self._held = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        elif now - self._last_used > IDLE_CHECK_SECONDS and await self._stale(self._held):
            await self._held.disconnect()  # the next send connects afresh
        self._last_used = now
        return self._held

    @staticmethod
    async def _stale(connection: Connection) -> bool:
        """Readable while idle means closed by Redis (a restart, a timeout) or out of step."""
        try:
            return bool(await connection.can_read())
        except (RedisConnectionError, OSError):
            return True

    async def _drop_connection(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await held.disconnect(nowait=True)
            assert self._pool is not None
            await self._pool.release(held)
