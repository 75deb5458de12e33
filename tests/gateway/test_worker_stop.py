"""WorkerPool.stop on a real Valkey returns even when a background task loses a cancellation,
as the heartbeat once did inside a redis-py call (Python 3.11's wait_for, CPython gh-86296): the
worker then ignored SIGTERM for ever (services.common.tasks.cancel_and_wait)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from services.common.redis_client import make_redis
from services.gateway.queue import WORKERS, Queue
from services.gateway.settings import GatewaySettings
from services.gateway.worker import Processor, WorkerPool
from tests.support.processes import Valkey
from tests.support.stack import next_db


async def test_stop_returns_when_the_heartbeat_swallows_its_cancellation(valkey: Valkey) -> None:
    url = f"redis://127.0.0.1:{valkey.port}/{next_db()}"
    settings = GatewaySettings(app_env="test", redis_url=url, queue_partitions=4)
    redis: Any = make_redis(url)
    queue = Queue(redis, settings.queue_partitions, settings.dedupe_ttl_seconds)
    # Nothing is enqueued, so the pool never hands its processor a message.
    pool = WorkerPool(settings, queue, cast(Processor, None))
    swallowed = asyncio.Event()

    async def heartbeat() -> None:
        """Beats until cancelled, but takes the first cancellation it sees, wherever it lands,
        for a completed call."""
        while True:
            try:
                await redis.zadd(WORKERS, {pool.worker_id: 2e9})
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    pool._heartbeat = heartbeat  # type: ignore[method-assign]
    try:
        await pool.start()
        for _ in range(200):  # the scheduler takes its share in a few of its 0.2-s rounds
            if len(pool.held_partitions) == settings.queue_partitions:
                break
            await asyncio.sleep(0.05)
        assert pool.held_partitions == list(range(settings.queue_partitions))
        async with asyncio.timeout(10):
            await pool.stop()
        assert swallowed.is_set()  # the first cancellation was lost, and stop() still returned
        assert pool.held_partitions == []
        assert await redis.zscore(WORKERS, pool.worker_id) is None
    finally:
        await redis.aclose()
