"""Rate limits per user and per business, with ``limits`` on async Redis (shared by replicas).

Over the user limit, a message is acknowledged but not processed, and the user gets one notice
per window. Over the business limit, the message is dead-lettered (an operator can replay it).
"""

from __future__ import annotations

import redis.asyncio as redis
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter

from services.common.redis_client import limits_storage


class RateLimits:
    def __init__(self, redis_url: str, client: redis.Redis, per_user: str, per_business: str):
        self._storage = limits_storage(redis_url, key_prefix="gw:rl", timeout=1.0)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._user: RateLimitItem = parse(per_user)
        self._business: RateLimitItem = parse(per_business)
        self._redis = client

    async def allow_business(self, business_id: str) -> bool:
        return await self._limiter.hit(self._business, "business", business_id)

    async def allow_user(self, business_id: str, user_id: str) -> bool:
        return await self._limiter.hit(self._user, "user", business_id, user_id)

    async def first_notice(self, business_id: str, user_id: str) -> bool:
        """True once per window: whether to tell the user they are over the limit."""
        key = f"gw:rl-notice:{business_id}:{user_id}"
        return bool(await self._redis.set(key, "1", nx=True, ex=self._user.get_expiry()))
