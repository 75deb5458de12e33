"""Auto-pipelining for Lua scripts: calls that arrive while Redis is busy share one round trip.

A busy service runs many independent scripts at once (one per RPC or webhook in flight). Sent
one by one through redis-py, each takes a pooled connection, a write and a read of its own, and
wakes the event loop again: that costs more CPU than the script itself, here and in Redis.
:class:`ScriptBatcher` keeps one batch on the wire at a time: a call made while none is in
flight goes at once, alone (no added latency when idle); calls made while one is in flight
queue up and go together as one redis-py pipeline (``transaction=False``: one write, one read,
one connection) as soon as it returns. Under load, batches grow by themselves.

Each call keeps its own outcome: a script error fails only its caller, a connection error fails
every call of that batch (as it would have failed each of them alone). ``NOSCRIPT`` (after a
Redis restart or failover) loads the script and sends those calls once more: a call that got
``NOSCRIPT`` never ran.

Redis Cluster clients are not batched (a batch would span slots and nodes); their calls go one
by one through redis-py's ``Script``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from services.common.redis_client import RedisClient

MAX_BATCH = 256  # calls per pipeline; a larger queue goes as several batches in turn


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
        self._batched = not isinstance(client, RedisCluster)
        self._queue: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)``, sharing a round trip with concurrent calls."""
        if not self._batched:
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
        replies: list[Any]
        if len(batch) == 1:  # alone, a plain command costs less than a pipeline
            call = batch[0]
            try:
                reply = await self.client.execute_command(
                    "EVALSHA", call.script.sha, call.numkeys, *call.arguments
                )
            except NoScriptError as unknown:
                reply = unknown
            replies = [reply]
        else:
            pipe = self.client.pipeline(transaction=False)
            for call in batch:
                pipe.execute_command("EVALSHA", call.script.sha, call.numkeys, *call.arguments)
            replies = await pipe.execute(raise_on_error=False)
        missing = []
        for call, reply in zip(batch, replies, strict=True):
            if reload and isinstance(reply, NoScriptError):
                missing.append(call)
            else:
                call.settle(reply)
        if missing:
            for script in {call.script for call in missing}:
                await self.client.script_load(script.script)
            await self._send(missing, reload=False)
