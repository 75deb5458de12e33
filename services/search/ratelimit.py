"""Client-side rate limit per provider, shared by every replica through Redis.

A provider's own limit (Amadeus: 10 requests per second) is per account, not per replica, so the
window lives in the cache Redis. N a second also means one every 1/N s: Amadeus's test keys allow
"no more than 1 request every 100 ms", so ten requests at once, which a window of ten a second
lets through, get nine 429s. One Lua script decides both, the moving window and the gap since the
last request, in one round trip on one key: the list of request times that ``limits``' moving
window keeps (same key, same layout), so replicas of the release before, which used ``limits``
itself, count in the same window while a rollout runs. When that Redis is unreachable the
limiter falls back to an in-process window (``limits``' memory storage: each replica then keeps
the limit on its own) rather than failing searches. Callers wait for a free slot until their
deadline instead of being refused (and give up at once when none frees before it).
"""

from __future__ import annotations

import asyncio
import math
import time

import structlog
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from services.common.outage import OutageLog
from services.common.redis_client import make_client

log = structlog.get_logger("parley.search.ratelimit")

KEY_PREFIX = "search:ratelimit"
# KEYS[1]: the request times (epoch seconds), newest first, at most `limit` of them (limits'
# moving-window layout). ARGV: limit, window seconds, gap seconds. "0" when the request may go
# (its time is recorded), else the seconds until one may. Times are Redis's clock's, not each
# replica's: one whose clock runs ahead would write times the others take for the future.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local gap = tonumber(ARGV[3])
local wait = 0
local newest = tonumber(redis.call('lindex', KEYS[1], 0))
if newest and now - newest < gap then
    wait = math.min(gap, gap - (now - newest))
end
local oldest = tonumber(redis.call('lindex', KEYS[1], limit - 1))
if oldest and oldest >= now - window then
    wait = math.max(wait, math.min(window, oldest + window - now))
end
if wait > 0 then
    return tostring(wait)
end
redis.call('lpush', KEYS[1], string.format('%.6f', now))
redis.call('ltrim', KEYS[1], 0, limit - 1)
redis.call('expire', KEYS[1], window)
return '0'
"""


class RateLimitTimeout(Exception):
    """No slot came free before the deadline."""


class ProviderRateLimiter:
    def __init__(
        self, name: str, per_second: float, redis_url: str | None, retry_after_error: float = 5.0
    ) -> None:
        self.name = name
        self.per_second = per_second
        # Whole requests per window: 2.5/s becomes 5 per 2 s.
        amount, seconds = self._window(per_second)
        self._item = RateLimitItemPerSecond(amount, seconds) if per_second > 0 else None
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        # The gap between two requests; none above 1,000 a second (a millisecond apart), where
        # the window alone is kept.
        self._gap_ms = math.ceil(1000 / per_second) if 0 < per_second <= 1000 else 0
        self._client = (
            # One retry: a connection Redis dropped while it restarted fails once.
            make_client(redis_url, connect_timeout=0.5, socket_timeout=0.5, retries=1)
            if redis_url and self._item is not None
            else None
        )
        self._acquire = self._client.register_script(_ACQUIRE) if self._client else None
        self.key = f"{KEY_PREFIX}:{self._item.key_for(name)}" if self._item else ""
        self._local_gap_ends = 0.0  # monotonic: the gap kept in this process
        # Redis is stepped around for retry_after_error seconds after a failure (the limit is
        # kept in this process meanwhile); one warning an outage.
        self._outage = OutageLog(
            log, "rate limit store reachable again", retry_after=retry_after_error
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @staticmethod
    def _window(per_second: float) -> tuple[int, int]:
        for seconds in (1, 2, 4, 5, 10):
            if abs(per_second * seconds - round(per_second * seconds)) < 1e-9:
                return max(1, round(per_second * seconds)), seconds
        return max(1, round(per_second)), 1

    async def _try(self) -> tuple[bool, float]:
        """(acquired, seconds until a slot may free)."""
        assert self._item is not None
        if self._acquire is not None and self._outage.retry_due:
            try:
                said = await self._acquire(
                    keys=[self.key],
                    args=[
                        self._item.amount,
                        self._item.get_expiry(),
                        self._gap_ms / 1000,
                    ],
                )
                wait = float(said)
            except Exception as error:  # Redis down: keep the limit in this process for a while
                self._outage.failed(
                    "rate limit store unreachable, limiting in-process", error, provider=self.name
                )
            else:
                self._outage.worked()
                return (True, 0.0) if wait <= 0 else (False, max(0.001, wait))
        return await self._try_in_process()

    async def _try_in_process(self) -> tuple[bool, float]:
        assert self._item is not None
        # The window is looked at first and hit last: a request that the gap holds back takes
        # no slot of it.
        gap = 0.0
        if await self._memory.test(self._item, self.name):
            gap = self._gap()
        if gap > 0:
            return False, gap
        if await self._memory.hit(self._item, self.name):
            return True, 0.0
        stats = await self._memory.get_window_stats(self._item, self.name)
        return False, max(0.005, stats.reset_time - time.time())

    def _gap(self) -> float:
        """0 when this request takes the gap since the last one, else the seconds it has left."""
        if not self._gap_ms:
            return 0.0
        now = time.monotonic()
        if now >= self._local_gap_ends:
            self._local_gap_ends = now + self._gap_ms / 1000
            return 0.0
        return self._local_gap_ends - now

    async def acquire(self, deadline: float) -> None:
        """Wait for a slot; raise :class:`RateLimitTimeout` if none comes before ``deadline``."""
        if self._item is None:
            return
        while True:
            acquired, wait = await self._try()
            if acquired:
                return
            remaining = deadline - time.monotonic()
            if remaining <= wait:
                # No slot frees before the deadline: said now, not at the deadline, where the
                # caller's own timeout would take it for the provider's slowness.
                raise RateLimitTimeout(f"rate limit of {self.name} left no slot before deadline")
            await asyncio.sleep(min(wait, 0.25))
