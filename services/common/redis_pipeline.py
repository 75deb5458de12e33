"""Auto-pipelining on one held Redis connection, read by hiredis: the hot path's round trips.

A busy service runs many independent Redis calls at once (one per RPC or webhook in flight).
Through redis-py each takes a pooled connection, a write, and a read through a StreamReader
under a timeout context: ~100 µs of CPU per call here, about what a whole no-op gRPC call
costs. :class:`AutoPipeline` sends every call on one connection it holds and parses replies
with hiredis as they arrive (an asyncio ``Protocol``). Calls made in one event-loop turn go out
in one write; replies come back in order and settle their callers' futures. There is no lock,
task or timer per call: under load the pipeline fills by itself, and when idle a call goes out
at once.

The connection itself is made by the client's redis-py pool, so TLS, AUTH, SELECT, HELLO and
Sentinel discovery are exactly as configured; its transport is then handed to this reader.

Each call keeps its own outcome. An error reply fails only its caller. A lost connection fails
the calls in flight (whether Redis ran them is unknown, as with any client) and the next call
connects again; since the reader always reads, a connection Redis closed while idle (a restart)
is noticed at once, not by the next caller. An idle connection of the pool that Redis closed is
recognised when taken, and replaced before anything is sent on it. A reply slower than the
client's socket timeout drops the connection, and so does ``READONLY`` (the master was demoted
by a failover: the next connection goes to the new one, found through Sentinel). ``NOSCRIPT``
(a restart or failover emptied the script cache) loads the script and sends the call once more:
a call that got ``NOSCRIPT`` never ran.

Redis Cluster clients are not pipelined (calls would span slots and nodes): their calls go one
by one through redis-py, a script sent at most once as here (redis-py's cluster client would
send it again after a lost connection or a timeout, when it may have run).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_client import MasterDemoted, RedisClient

_STALE_CONNECTIONS = 8  # idle pooled connections found closed, tried in a row before giving up
_INCOMPLETE = object()  # hiredis: no whole reply buffered yet (``False`` is a RESP3 reply)


def _demoted() -> MasterDemoted:
    """READONLY: the master this connection reached was demoted to a replica (a failover). A
    connection error to the caller, as redis-py raises it: the write never ran, may be retried."""
    return MasterDemoted("Redis answered READONLY: that master is now a replica")


class _Wire(asyncio.Protocol):
    """One connection's transport: writes coalesced per loop turn, replies matched in order."""

    def __init__(self, connection: Connection) -> None:
        writer = connection._writer  # connected by the pool: handshake done, nothing unread
        assert writer is not None
        self.connection = connection
        self.lost: Exception | None = None
        self.used = False  # whether a call was ever sent on it
        encoder = connection.encoder
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,  # redis-py's exception classes (NoScriptError…)
            notEnoughData=_INCOMPLETE,
            **(
                {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
                if encoder.decode_responses
                else {}
            ),
        )
        self._timeout = connection.socket_timeout
        self._loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport = writer.transport
        # redis-py's stream protocol still learns of the close, so its own disconnect (the
        # pool's, at shutdown) finds the writer closed instead of waiting for it.
        self._stream_protocol = self._transport.get_protocol()
        self._transport.set_protocol(self)
        # An idle connection whose close was read already (TCP keeps the transport half open
        # after the EOF, reading no more): nothing would tell this protocol, so tell it now.
        reader = connection._reader
        if self._transport.is_closing() or (reader is not None and reader.at_eof()):
            self.lost = RedisConnectionError("Redis closed this connection while it was idle")

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """The reply to come (an error reply is an exception instance, not raised here)."""
        future = self._loop.create_future()
        if self.lost is not None:  # nothing would ever answer it, nor time it out
            future.set_exception(self.lost)
            return future
        self.used = True
        self._waiting.append((self._loop.time(), future))
        self._outgoing.append(packed)
        if len(self._outgoing) == 1:
            self._loop.call_soon(self._flush)
        if self._watchdog is None and self._timeout:
            self._watchdog = self._loop.call_later(self._timeout, self._check_replies)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.lost is None:
            self._transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        demoted = False
        try:
            while (reply := self._reader.gets()) is not _INCOMPLETE:
                if not self._waiting:
                    raise InvalidResponse("Redis sent a reply nobody asked for")
                if isinstance(reply, ReadOnlyError):
                    reply, demoted = _demoted(), True
                _, future = self._waiting.popleft()
                if not future.done():  # else its caller gave up (deadline); reply dropped
                    future.set_result(reply)
        except InvalidResponse as error:  # out of step: no later reply can be trusted
            self._fail(error)
            self._transport.abort()
        if demoted:  # as redis-py does: reconnect, through Sentinel to the new master
            self._fail(_demoted())
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed by Redis'}"))
        self._stream_protocol.connection_lost(exc)

    def _check_replies(self) -> None:
        """The oldest call waited a whole socket timeout: Redis is stuck or gone; drop it."""
        self._watchdog = None
        if not self._waiting or self.lost is not None:
            return
        assert self._timeout is not None
        waited = self._loop.time() - self._waiting[0][0]
        if waited < self._timeout:
            self._watchdog = self._loop.call_later(self._timeout - waited, self._check_replies)
            return
        self._fail(RedisTimeoutError(f"no reply from Redis in {self._timeout} s"))
        self._transport.abort()

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class AutoPipeline:
    """Commands and registered scripts (``client.register_script``) on one pipelined link."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None

    async def command(self, *args: Any) -> Any:
        """``client.execute_command(*args)``'s raw reply (bytes unless the client decodes).

        Single-reply commands only: a blocking one (``BLPOP``, ``XREADGROUP BLOCK``) would hold
        up every call behind it, and ``MULTI``/``SUBSCRIBE`` would interleave with them.
        """
        if self._pool is None:
            return await self.client.execute_command(*args)
        return _raised(await self._send(hiredis.pack_command(args)))

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)``."""
        if self._pool is None:
            return await self._script_on_cluster(script, keys, args)
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        reply = await self._send(packed)
        if isinstance(reply, NoScriptError):
            await self.command("SCRIPT", "LOAD", script.script)
            reply = await self._send(packed)
        return _raised(reply)

    async def _script_on_cluster(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        """A script on Cluster, sent at most once, as on one link. redis-py's cluster client
        sends a call again after a connection error or a timeout, whose answer may be all that
        was lost: a script that appends (a session update without ``expected_version``) ran
        twice. Given its node, it does not (and still follows MOVED, ASK and TRYAGAIN, which
        a node answers without running anything)."""
        if not keys:
            return await script(keys=keys, args=args)
        client: RedisCluster = self.client  # type: ignore[assignment]
        await client.initialize()  # the slot map, learnt again after a node's failure
        node = client.get_node_from_key(keys[0])
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await client.execute_command(*command, target_nodes=node)
        except NoScriptError:  # refused before it ran: safe to send again once loaded
            # On every primary, as redis-py does: the node that refused it may be another than
            # ``node`` (a MOVED or an ASK on the way, a slot migrating).
            await client.script_load(script.script)
            return await client.execute_command(*command, target_nodes=node)

    async def _send(self, packed: bytes) -> Any:
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connected()
            # The pool can hand out an idle connection that Redis closed (a restart), and may
            # hold several. Nothing was sent on one lost before use: the next is safe to try
            # (each one tried goes back to the pool disconnected).
            for _ in range(_STALE_CONNECTIONS):
                if wire.lost is None or wire.used:
                    break
                wire = await self._connected()
        return await wire.send(packed)

    async def _connected(self) -> _Wire:
        """A live wire; concurrent callers share one connection attempt (and its failure)."""
        wire = self._wire
        if wire is not None and wire.lost is None:  # another caller's attempt made it meanwhile
            return wire
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, attempt: asyncio.Task[_Wire]) -> None:
        self._connecting = None
        if not attempt.cancelled():
            attempt.exception()  # every waiter has it; don't warn that nobody retrieved it

    async def _connect(self) -> _Wire:
        assert self._pool is not None
        old, self._wire = self._wire, None
        if old is not None:
            await old.connection.disconnect(nowait=True)
            await self._pool.release(old.connection)
        connection: Connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            self._wire = _Wire(connection)
        except BaseException:
            await self._pool.release(connection)
            raise
        return self._wire


def _raised(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply
