"""The store the servicer talks to: Redis, and the in-memory fallback when Redis is down.

``SESSION_FALLBACK=memory``: the first operation (or readiness probe) that finds Redis
unreachable starts an outage: one warning, the ``parley_session_fallback_active`` gauge at 1,
and every operation served by :class:`MemoryStore` without waiting on Redis again. A probe pings
Redis every ``SESSION_FALLBACK_PROBE_SECONDS``; once it answers, every conversation written
during the outage is written back with the PUT script (the higher version of the same
conversation wins; another conversation in Redis, started meanwhile, wins; a conversation ended
on any replica is never written again), writes that arrive meanwhile are still served from
memory and written back too, and only when nothing is left to write back does Redis serve again.
``SESSION_FALLBACK=off``: an unreachable Redis is ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import Unavailable, VersionConflict
from services.common.redact import mask_phone
from services.common.redis_client import refusal, warn_if_evicting, warn_if_not_persisted
from services.common.tasks import cancel_and_wait
from services.session import metrics
from services.session.memory_store import MemoryStore
from services.session.model import (
    Conversation,
    ConversationKey,
    Cursor,
    Page,
    Role,
    new_conversation_id,
)
from services.session.redis_store import RedisStore

log = structlog.get_logger("parley.session.store")
T = TypeVar("T")
K = TypeVar("K")

# Errors that mean "Redis is not reachable" (as opposed to a bug or a refused command).
# ClusterDownError, MasterNotFoundError and pool exhaustion are subclasses of these.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)

FallbackMode = Literal["memory", "off"]
# The last write-back when the service stops during an outage: within Kubernetes' 30 s
# termination grace after the gRPC server's own (SHUTDOWN_GRACE_SECONDS, 10).
FINAL_WRITE_BACK_SECONDS = 5.0


def _no_copy(to: str) -> Unavailable:
    """During an outage, for a conversation this replica holds no live copy of (nor ended):
    Redis, unreachable, may hold one. Retried on another replica, or once Redis is back."""
    return Unavailable(
        "the session store (Redis) is unreachable and this replica holds no copy "
        f"of the conversation {to}"
    )


def masked(key: ConversationKey) -> dict[str, str]:
    """Log fields for a key, the user's number masked."""
    return {"business_id": key.business_id, "user": mask_phone(key.user_id), "role": key.role}


class SessionStore:
    def __init__(
        self,
        redis_store: RedisStore,
        memory: MemoryStore,
        *,
        fallback: FallbackMode,
        probe_seconds: float = 1.0,
        write_back_concurrency: int = 16,
    ) -> None:
        self.redis = redis_store
        self.memory = memory
        self.fallback = fallback
        self.probe_seconds = probe_seconds
        self.write_back_concurrency = write_back_concurrency
        self.outage_since: float | None = None
        self.writebacks_total = 0
        self.redis_seen = False  # whether Redis has answered this process yet
        self._eviction_checked = False  # maxmemory-policy, once Redis first answers a check
        self._recovery: asyncio.Task[None] | None = None
        self._dropped_in_outage = 0  # outage writes evicted from the full store, this outage
        metrics.FALLBACK_ACTIVE.set(0)
        metrics.PENDING_WRITEBACKS.set_function(lambda: self.memory.pending)

    @property
    def fallback_active(self) -> bool:
        return self.outage_since is not None

    # -- outage and recovery ---------------------------------------------------------------------

    def enter_outage(self, error: BaseException) -> None:
        if self.outage_since is not None:
            return
        self.outage_since = time.time()
        metrics.FALLBACK_ACTIVE.set(1)
        log.warning(
            "Redis unreachable: serving conversations from memory until it answers again",
            error=str(error) or type(error).__name__,
        )
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.probe_seconds)
            self._count_memory_expiry()
            try:
                await self.redis.client.ping()
                written = await self._write_back()
            except REDIS_DOWN:
                continue
            except Exception as error:  # nothing may leave the service in fallback silently
                if refusal(error, "Redis") is None:
                    log.exception("write-back failed; retrying")
                else:  # out of memory, MISCONF…: Redis says why, no stack trace needed
                    log.warning("write-back refused by Redis; retrying", error=str(error)[:200])
                continue
            outage = time.time() - (self.outage_since or time.time())
            self.outage_since = None
            metrics.FALLBACK_ACTIVE.set(0)
            self._count_expired()  # outage copies the write-back found expired
            self._count_dropped()
            log.warning(
                "Redis answers again: serving from Redis",
                written_back=written,
                dropped=self._dropped_in_outage,
                outage_seconds=round(outage, 1),
            )
            self._dropped_in_outage = 0
            return

    async def _write_back(self) -> int:
        """Write every dirty conversation back; return how many were written."""
        written = 0
        while True:
            # Ends first: a conversation ended and then started again during the outage must
            # replace, not be deleted after, the old one.
            await self._each(list(self.memory.ended.items()), self._end_back)
            keys = self.memory.dirty_keys()
            if not keys and not self.memory.ended:
                # Checked with no await before the caller switches back to Redis.
                return written
            written += await self._each(keys, self._put_back)

    async def _each(self, items: list[K], handle: Callable[[K], Awaitable[bool]]) -> int:
        """``handle`` every item, ``write_back_concurrency`` at a time (one at a time, a busy
        replica's write-back fell behind the writes it serves from memory meanwhile); return
        how many were done. After a failure none starts, and once those in flight have ended
        the first failure is raised: Redis gone again is found out in one call, not in one per
        conversation."""
        pending = iter(items)
        failures: list[Exception] = []
        done = 0

        async def worker() -> None:
            nonlocal done
            for item in pending:
                if failures:
                    return
                try:
                    done += await handle(item)
                except Exception as error:
                    failures.append(error)
                    return

        await asyncio.gather(
            *(worker() for _ in range(min(self.write_back_concurrency, len(items))))
        )
        if failures:
            raise failures[0]
        return done

    async def _end_back(self, ended: tuple[ConversationKey, tuple[str, int, int]]) -> bool:
        key, pending = ended
        cid, _version, ended_ms = pending
        if await self.redis.end_written_back(key, cid, ended_ms) < 0:
            metrics.WRITEBACK_DISCARDED.inc()
            log.warning(
                "outage end discarded: Redis holds a conversation started since", **masked(key)
            )
        if self.memory.ended.get(key) == pending:
            del self.memory.ended[key]
        return True

    async def _put_back(self, key: ConversationKey) -> bool:
        """Write back one dirty conversation; whether it was written."""
        if key in self.memory.ended:  # ended meanwhile: the end goes first, next round
            return False
        conversation = self.memory.peek_dirty(key)
        if conversation is None:
            return False
        snapshot = conversation.copy()
        outcome, theirs, pruned = await self.redis.put(snapshot)
        self._counted("redis", False, pruned)  # a write-back is a write: it prunes, it counts
        if outcome == "written":
            self.writebacks_total += 1
            metrics.WRITEBACKS.inc()
            self.memory.mark_clean(snapshot)
            return True
        if outcome in ("other", "ended"):
            # Another replica started another conversation (it wins), or ended this one.
            metrics.WRITEBACK_DISCARDED.inc()
            log.warning(
                "outage writes discarded: Redis holds another conversation"
                if outcome == "other"
                else "outage writes discarded: the conversation was ended",
                **masked(key),
                ours=snapshot.version,
                theirs=theirs,
            )
            mine = self.memory.peek_dirty(key)
            if mine is None or mine.id == snapshot.id:  # its later writes would lose too
                self.memory.forget(key)
        elif outcome == "same":  # Redis holds this very copy already
            self.memory.discard(snapshot)
        elif outcome == "kept":
            # Redis moved on meanwhile (another replica), or holds another replica's outage
            # copy of this version: it wins.
            metrics.WRITEBACK_DISCARDED.inc()
            log.warning(
                "outage writes discarded: Redis holds a newer version"
                if theirs > snapshot.version
                else "outage writes discarded: Redis holds another copy of this version",
                **masked(key),
                ours=snapshot.version,
                theirs=theirs,
            )
            mine = self.memory.peek_dirty(key)
            if mine is None or (mine.id == snapshot.id and mine.version <= theirs):
                self.memory.forget(key)
        elif self.memory.peek_dirty(key) is conversation:
            # Expired on Redis's clock: dropped, unless the user wrote since the call left (a
            # conversation started afresh, or this copy continued): next round.
            self.memory.forget(key)
        return False

    def _count_memory_expiry(self) -> None:
        self.memory.sweep()
        self._count_expired()
        self._count_dropped()

    def _count_expired(self) -> None:
        """Count outage writes that expired in memory, however found: by the probe's sweep, by
        a call that started a new conversation in place of one (the user wrote after it
        expired), or by the write-back. Counting only what each sweep found missed the rest."""
        if self.memory.expired:
            metrics.EXPIRED.labels("memory").inc(self.memory.expired)
            self.memory.expired = 0

    def _count_dropped(self) -> None:
        """Count outage writes the full store evicted. Logged once per outage (the repeats at
        debug; the total when Redis answers again): a busy replica drops one per message."""
        dropped = self.memory.dropped_dirty
        if not dropped:
            return
        self.memory.dropped_dirty = 0
        metrics.FALLBACK_DROPPED.inc(dropped)
        first = self._dropped_in_outage == 0
        self._dropped_in_outage += dropped
        (log.warning if first else log.debug)(
            "fallback store full: outage writes dropped",
            count=dropped,
            **({"repeats_logged_at": "debug"} if first else {}),
        )

    @property
    def _may_fall_back(self) -> bool:
        # Only a process that has reached Redis falls back: a new replica that never did holds
        # nothing to continue from (and is likely misconfigured), so it stays NOT_SERVING.
        return self.fallback == "memory" and self.redis_seen

    async def readiness(self) -> None:
        """SERVING while Redis answers PING, or while the fallback serves."""
        if self.fallback_active:
            return
        try:
            await self.redis.client.ping()
        except REDIS_DOWN as error:
            if not self._may_fall_back:
                raise ConnectionError(f"Redis did not answer PING: {error}") from None
            self.enter_outage(error)
        else:
            self.redis_seen = True
            if not self._eviction_checked:
                self._eviction_checked = True
                await warn_if_evicting(self.redis.client, "session: live conversations")
                await warn_if_not_persisted(self.redis.client, "session: live conversations")

    async def close(self) -> None:
        await cancel_and_wait(self._recovery)
        if self.memory.pending:
            # Redis may have come back since the last probe, or the write-back was under way
            # (a roll-out, a scale-down): one last try, bounded, as nothing is served any more.
            try:
                async with asyncio.timeout(FINAL_WRITE_BACK_SECONDS):
                    await self.redis.client.ping()
                    written = await self._write_back()
            except Exception as error:
                log.debug("last write-back failed", error=str(error) or type(error).__name__)
            else:
                log.warning("stopping: outage writes written back", written_back=written)
        if self.memory.pending:
            log.warning(
                "stopping during a Redis outage: outage writes not written back are lost",
                pending=self.memory.pending,
            )

    # -- operations ----------------------------------------------------------------------------

    async def _call(self, on_redis: Callable[[], Awaitable[T]], on_memory: Callable[[], T]) -> T:
        if self.outage_since is None:
            try:
                result = await on_redis()
            except REDIS_DOWN as error:
                if not self._may_fall_back:
                    raise Unavailable("the session store (Redis) is unreachable") from None
                self.enter_outage(error)
            except RedisError as error:
                # Redis is up but refuses (out of memory…): no fallback, whose copies would
                # outlive what Redis then holds; the caller hears why.
                answer = refusal(error, "the session store (Redis)")
                if answer is None:
                    raise
                log.warning("Redis refused a call", error=str(error)[:200])
                raise answer from None
            else:
                self.redis_seen = True
                return result
        result = on_memory()
        # At once, for the metrics; the probe sweeps the expired entries no call found.
        self._count_expired()
        self._count_dropped()
        return result

    async def get(self, key: ConversationKey, create: bool) -> tuple[Conversation | None, bool]:
        new_id = new_conversation_id()

        async def on_redis() -> tuple[Conversation | None, bool]:
            conversation, created, pruned = await self.redis.get(
                key, create=create, new_id=new_id, known=self.memory.mirrored(key)
            )
            if conversation is not None:
                self.memory.mirror(conversation)
            self._counted("redis", created, pruned)
            return conversation, created

        def on_memory() -> tuple[Conversation | None, bool]:
            conversation, created = self.memory.get(key, create=create, new_id=new_id)
            if conversation is None and key not in self.memory.ended:
                raise _no_copy("to read")  # "none is live" would be a guess
            self._counted("memory", created, 0)
            return conversation, created

        return await self._call(on_redis, on_memory)

    async def update(
        self,
        key: ConversationKey,
        *,
        append: list[bytes],
        set_state: dict[str, bytes],
        remove_state: list[str],
        expected_version: int | None,
    ) -> tuple[Conversation, bool]:
        new_id = new_conversation_id()

        async def on_redis() -> tuple[Conversation, bool]:
            conversation, created, pruned = await self.redis.update(
                key,
                append=append,
                set_state=set_state,
                remove_state=remove_state,
                expected_version=expected_version,
                new_id=new_id,
                known=self.memory.mirrored(key),
            )
            self.memory.mirror(conversation)
            self._counted("redis", created, pruned)
            return conversation, created

        def on_memory() -> tuple[Conversation, bool]:
            conversation, created = self.memory.update(
                key,
                append=append,
                set_state=set_state,
                remove_state=remove_state,
                expected_version=expected_version,
                new_id=new_id,
            )
            self._counted("memory", created, 0)
            return conversation, created

        try:
            return await self._call(on_redis, on_memory)
        except VersionConflict:
            metrics.VERSION_CONFLICTS.inc()
            raise

    async def touch(self, key: ConversationKey) -> int | None:
        async def on_redis() -> int | None:
            expire, pruned = await self.redis.touch(key)
            if expire is not None:
                self.memory.mirror_expiry(key, expire)
            self._counted("redis", False, pruned)
            return expire

        def on_memory() -> int | None:
            expire = self.memory.touch(key)
            if expire is None and key not in self.memory.ended:
                raise _no_copy("to touch")  # "none is live" would be a guess
            return expire

        return await self._call(on_redis, on_memory)

    async def end(self, key: ConversationKey) -> bool:
        async def on_redis() -> bool:
            ended = await self.redis.end(key)
            self.memory.forget(key)
            return ended

        def on_memory() -> bool:
            # An end is an erase: "there was none" would be a guess, as Redis, unreachable,
            # may hold the conversation. Retried on another replica, or once Redis is back.
            if not self.memory.end(key):
                raise _no_copy("to end")
            return True

        return await self._call(on_redis, on_memory)

    async def list_page(
        self, business_id: str, role: Role | None, page_size: int, cursor: Cursor
    ) -> Page:
        return await self._call(
            lambda: self.redis.list_page(business_id, role, page_size, cursor),
            lambda: self.memory.list_page(business_id, role, page_size, cursor),
        )

    @staticmethod
    def _counted(store: str, created: bool, pruned: int) -> None:
        if created:
            metrics.CREATED.labels(store).inc()
        if pruned:
            metrics.EXPIRED.labels(store).inc(pruned)
