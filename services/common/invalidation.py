"""Cross-replica cache invalidation over Redis pub/sub.

Every business write (RPC or CLI) publishes the lookup keys and business ids it touched on one
channel (``BUSINESS_INVALIDATION_CHANNEL``); every business replica and every gateway worker
subscribes and drops those entries at once. Pub/sub delivers only to connected
subscribers, so a replica clears its whole cache each time Redis confirms its subscription,
the first one included (it serves, and caches, before that): whatever it missed cannot
linger. If Redis is down, publishing fails quietly (logged) and the cache TTL bounds how stale
another replica can be.

Why pub/sub and not a MongoDB change stream: it works the same for both stores (SQLite has no
change stream) and needs no replica set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster

from services.common.redis_client import make_redis
from services.common.tasks import cancel_and_wait

log = structlog.get_logger("parley.invalidation")

Apply = Callable[[list[str], list[str]], None]
MAX_BACKOFF = 5.0
# How long Redis may take to confirm a SUBSCRIBE: as long as any reply of this client.
SUBSCRIBE_TIMEOUT = 5.0


class InvalidationBus:
    def __init__(
        self,
        url: str,
        channel: str,
        on_invalidate: Apply,
        on_reset: Callable[[], None],
        *,
        invalidations: Counter | None = None,
        repeat_after: float = 0.0,
    ) -> None:
        """``invalidations``: a counter with one label, the origin ("remote", "resubscribe").

        ``repeat_after``: apply every invalidation (and reset) again this many seconds later,
        for a cache filled from other caches (the gateway's, from the business replicas'): its
        next miss may ask a replica that has not applied the same message yet and get the old
        answer back, which it would otherwise keep for its whole TTL."""
        self.channel = channel
        self.origin = secrets.token_hex(8)  # this replica; its own messages are skipped
        self._on_invalidate = on_invalidate
        self._on_reset = on_reset
        self._invalidations = invalidations
        self._repeat_after = repeat_after
        # Any: standalone, Sentinel or Cluster client, whichever REDIS_URL names.
        self._client: Any = make_redis(url, socket_timeout=5.0)
        # The subscription's own client, without retries: redis-py would otherwise reconnect
        # and re-subscribe by itself after a dropped connection, and the messages published in
        # between would be lost without the reset below ever running.
        self._listener: Any = make_redis(url, socket_timeout=5.0, retries=0)
        self._also: list[Any] = []  # publish-only clients (publish_also_to)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        # Set once the first attempt to subscribe has ended, subscribed or not: a cache filled
        # before then (a warm-up) would be cleared when it succeeds.
        self.tried = asyncio.Event()

    def publish_also_to(self, url: str) -> None:
        """Publish on this Redis too (never listened to): where subscribers of an older
        configuration still listen."""
        self._also.append(make_redis(url, socket_timeout=5.0))

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for client in (self._listener, self._client, *self._also):
            await client.aclose()

    async def publish(self, keys: Iterable[str], business_ids: Iterable[str]) -> None:
        message = json.dumps(
            {"origin": self.origin, "keys": sorted(set(keys)), "ids": sorted(set(business_ids))}
        )
        await asyncio.gather(*(self._publish(c, message) for c in (self._client, *self._also)))

    async def _publish(self, client: Any, message: str) -> None:
        try:
            await client.publish(self.channel, message)
        except Exception as error:  # other replicas fall back on the TTL
            log.warning("invalidation not published", error=type(error).__name__)

    def _apply(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self.origin:
                return
            keys = [str(k) for k in message.get("keys", [])]
            ids = [str(i) for i in message.get("ids", [])]
        except (ValueError, AttributeError, TypeError):
            log.warning("malformed invalidation message ignored")
            return
        self._on_invalidate(keys, ids)
        self._count("remote")
        self._again(self._on_invalidate, keys, ids)

    def _again(self, apply: Callable[..., None], *args: Any) -> None:
        if self._repeat_after > 0:
            asyncio.get_running_loop().call_later(self._repeat_after, apply, *args)

    def _count(self, origin: str) -> None:
        if self._invalidations is not None:
            self._invalidations.labels(origin).inc()

    @staticmethod
    async def _confirmed(pubsub: Any) -> None:
        """Return once Redis has confirmed the subscription: ``subscribe`` only sends it, and
        a message published before Redis takes it is not delivered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT
        while (left := deadline - loop.time()) > 0:
            reply = await pubsub.get_message(timeout=left)
            if reply is not None and reply.get("type") == "subscribe":
                return
        raise TimeoutError("Redis did not confirm the subscription")

    async def _listen(self) -> None:
        backoff = 0.1
        first = True
        while True:
            pubsub = None
            try:
                if isinstance(self._listener, RedisCluster):
                    # A Cluster client learns its slots on its first command; its pub/sub
                    # needs them already (redis-py fails with KeyError otherwise, forever: this
                    # client sends nothing else).
                    await self._listener.initialize()
                pubsub = self._listener.pubsub()
                await pubsub.subscribe(self.channel)
                await self._confirmed(pubsub)
                # Subscribed only now: messages published before never reached this process,
                # which may have cached their businesses meanwhile (lookups are served before
                # the first subscription too): forget everything.
                self._on_reset()
                if not first:
                    self._count("resubscribe")
                    self._again(self._on_reset)
                    log.info("invalidation channel re-subscribed; cache cleared")
                self.subscribed.set()
                self.tried.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Once per outage, not once per retry.
                report = log.warning if self.subscribed.is_set() or first else log.debug
                report("invalidation channel lost; retrying", error=type(error).__name__)
                self.subscribed.clear()
                self.tried.set()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            finally:
                first = False  # any later subscription follows a gap
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
