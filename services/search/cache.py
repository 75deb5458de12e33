"""The result cache in Redis: fresh for the TTL, kept for a grace past it to be served stale.

One key per normalized query holds the serialized answer with its fetch time; Redis expires it
at TTL + grace, and freshness is judged from the fetch time. A short lock key per query
(``SET NX PX``) makes one replica fetch while the others wait for the result key: single-flight
across replicas, on top of the in-process one in the engine.

When Redis fails, the cache steps aside for a few seconds (searches go to the provider
uncached) instead of making every search wait for socket timeouts.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import TypeGuard

import redis.asyncio as redis
import structlog
from prometheus_client import Counter

from parley.search.v1 import search_pb2
from services.common.outage import OutageLog
from services.common.redis_pipeline import AutoPipeline

log = structlog.get_logger("parley.search.cache")

CACHE_ERRORS = Counter("search_cache_errors_total", "Cache operations that failed (Redis errors).")
KEY_PREFIX = "search:v1"
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
LOCAL_TOKEN = "local"  # the lock could not be taken because Redis is down: fetch anyway


@dataclass(frozen=True, slots=True)
class Cached:
    response: search_pb2.SearchFlightsResponse
    fetched_at: float  # epoch seconds

    def age(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.fetched_at)


class ResultCache:
    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        ttl_seconds: int,
        grace_seconds: int,
        lock_seconds: float,
        retry_after_error: float = 2.0,
    ) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.grace = grace_seconds
        self.lock_ms = int(lock_seconds * 1000)
        self._unlock = client.register_script(_UNLOCK)
        self._pipeline = AutoPipeline(client)  # reads: the hot path of a cached search
        # Stepped around for retry_after_error seconds after a failure; one warning an outage.
        self._outage = OutageLog(log, "cache reachable again", retry_after=retry_after_error)

    @staticmethod
    def key(provider: str, query_key: str) -> str:
        return f"{KEY_PREFIX}:{provider}:{query_key}"

    @property
    def available(self) -> bool:
        return self._outage.retry_due

    def _failed(self, operation: str, error: Exception) -> None:
        CACHE_ERRORS.inc()
        self._outage.failed("cache unavailable, searching uncached", error, op=operation)

    def is_fresh(self, cached: Cached, now: float | None = None) -> bool:
        return cached.age(now) < self.ttl

    def servable(self, cached: Cached | None) -> TypeGuard[Cached]:
        """Still within the grace, to be served stale. Redis's expiry alone is not the rule: an
        entry written while the grace was longer keeps that longer expiry."""
        return cached is not None and cached.age() < self.ttl + self.grace

    def is_new(self, cached: Cached | None, newer_than: float | None) -> TypeGuard[Cached]:
        """Fresh, and fetched after ``newer_than`` (the fetch time of the copy already read)."""
        return (
            cached is not None
            and self.is_fresh(cached)
            and (newer_than is None or cached.fetched_at > newer_than)
        )

    async def get(self, key: str) -> Cached | None:
        raw = await self.get_bytes(key)
        if raw is None:
            return None
        response = search_pb2.SearchFlightsResponse()
        try:
            response.ParseFromString(raw)
        except Exception:  # a corrupt or foreign value: treat as a miss
            return None
        fetched = response.fetch_time.seconds + response.fetch_time.nanos / 1e9
        return Cached(response, fetched)

    async def put(self, key: str, response: search_pb2.SearchFlightsResponse) -> None:
        if not self.available:
            return
        try:
            await self.client.set(key, response.SerializeToString(), ex=self.ttl + self.grace)
        except Exception as error:
            self._failed("set", error)

    async def get_bytes(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            raw = await self._pipeline.command("GET", key)
        except Exception as error:
            self._failed("get", error)
            return None
        self._outage.worked()  # every search reads first: this is where an outage ends
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else raw.encode()

    async def put_bytes(self, key: str, value: bytes, ttl: int | None = None) -> None:
        """``value`` for ``ttl`` seconds (the cache's TTL when not given)."""
        if not self.available:
            return
        try:
            await self.client.set(key, value, ex=ttl or self.ttl)
        except Exception as error:
            self._failed("set", error)

    async def try_lock(self, key: str) -> str | None:
        """A token when this replica may fetch, None when another replica is fetching."""
        if not self.available:
            return LOCAL_TOKEN
        token = secrets.token_hex(8)
        try:
            taken = await self.client.set(f"{key}:lock", token, nx=True, px=self.lock_ms)
        except Exception as error:
            self._failed("lock", error)
            return LOCAL_TOKEN
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        if token == LOCAL_TOKEN or not self.available:
            return
        try:
            await self._unlock(keys=[f"{key}:lock"], args=[token])
        except Exception as error:
            self._failed("unlock", error)

    async def wait_fresh(
        self, key: str, deadline: float, newer_than: float | None = None
    ) -> Cached | None:
        """Poll for a fresh result another replica is fetching (fetched after ``newer_than``
        when given); None when its lock goes away without one (it failed) or the deadline
        passes."""
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.1)
            cached = await self.get(key)
            if self.is_new(cached, newer_than):
                return cached
            try:
                locked = await self.client.exists(f"{key}:lock")
            except Exception as error:
                self._failed("exists", error)
                return None
            if not locked:  # the holder writes before it unlocks: one last look
                cached = await self.get(key)
                return cached if self.is_new(cached, newer_than) else None
        return None
