"""Client-side rate limit per provider, shared by every replica through Redis (``limits``).

A provider's own limit (Amadeus: 10 requests per second) is per account, not per replica, so the
window lives in the cache Redis. N a second also means one every 1/N s: Amadeus's test keys allow
"no more than 1 request every 100 ms", so ten requests at once, which a window of ten a second
lets through, get nine 429s. ``limits`` counts whole seconds only, so the gap between requests
is one Redis key besides (``SET NX PX``: the request that sets it may go; the others wait out its
PTTL), shared by the replicas too. When that Redis is unreachable the limiter falls back to an
in-process window (each replica then keeps the limit on its own) rather than failing searches.
Callers wait for a free slot until their deadline instead of being refused (and give up at once
when none frees before it).
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
from services.common.redis_client import limits_storage, make_client

log = structlog.get_logger("parley.search.ratelimit")


class RateLimitTimeout(Exception):
    """No slot came free before the deadline."""


class ProviderRateLimiter:
    def __init__(
        self, name: str, per_second: float, redis_url: str | None, retry_after_error: float = 5.0
    ) -> None:
        self.name = name
        self.per_second = per_second
        # limits counts whole requests per window: 2.5/s becomes 5 per 2 s.
        amount, seconds = self._window(per_second)
        self._item = RateLimitItemPerSecond(amount, seconds) if per_second > 0 else None
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared = (
            MovingWindowRateLimiter(
                limits_storage(
                    redis_url, key_prefix="search:ratelimit", timeout=0.5, wrap_exceptions=True
                )
            )
            if redis_url and self._item is not None
            else None
        )
        # The gap between two requests; none above 1,000 a second (Redis counts milliseconds),
        # where the window alone is kept.
        self._gap_ms = math.ceil(1000 / per_second) if 0 < per_second <= 1000 else 0
        self._gap_key = f"search:ratelimit:gap:{name}"
        self._gap_client = (
            # One retry: a connection Redis dropped while it restarted fails once.
            make_client(redis_url, connect_timeout=0.5, socket_timeout=0.5, retries=1)
            if redis_url and self._shared is not None and self._gap_ms
            else None
        )
        self._local_gap_ends = 0.0  # monotonic: the gap kept in this process
        # Redis is stepped around for retry_after_error seconds after a failure (the limit is
        # kept in this process meanwhile); one warning an outage.
        self._outage = OutageLog(
            log, "rate limit store reachable again", retry_after=retry_after_error
        )

    @staticmethod
    def _window(per_second: float) -> tuple[int, int]:
        for seconds in (1, 2, 4, 5, 10):
            if abs(per_second * seconds - round(per_second * seconds)) < 1e-9:
                return max(1, round(per_second * seconds)), seconds
        return max(1, round(per_second)), 1

    async def _try(self) -> tuple[bool, float]:
        """(acquired, seconds until the window frees a slot)."""
        assert self._item is not None
        limiter = self._memory
        if self._shared is not None and self._outage.retry_due:
            limiter = self._shared
        try:
            # The window is looked at first and hit last: a request that the gap holds back
            # takes no slot of it.
            gap = 0.0
            if await limiter.test(self._item, self.name):
                gap = await self._gap(shared=limiter is self._shared)
            if gap > 0:
                acquired, wait = False, gap
            elif await limiter.hit(self._item, self.name):
                acquired, wait = True, 0.0
            else:
                stats = await limiter.get_window_stats(self._item, self.name)
                acquired, wait = False, max(0.005, stats.reset_time - time.time())
        except Exception as error:  # Redis down: keep the limit in this process for a while
            if limiter is self._memory:
                raise
            self._outage.failed(
                "rate limit store unreachable, limiting in-process", error, provider=self.name
            )
            return await self._try()
        if limiter is self._shared:
            self._outage.worked()
        return acquired, wait

    async def _gap(self, *, shared: bool) -> float:
        """0 when this request takes the gap since the last one, else the seconds it has left."""
        if not self._gap_ms:
            return 0.0
        if shared and self._gap_client is not None:
            if await self._gap_client.set(self._gap_key, b"1", nx=True, px=self._gap_ms):
                return 0.0
            left = await self._gap_client.pttl(self._gap_key)
            return max(0.001, left / 1000)  # -2: it has just expired; try again at once
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
