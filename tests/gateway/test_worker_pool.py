"""A gateway WorkerPool's own lifecycle on a real Valkey, without the rest of the stack (no
message is enqueued, so its processor is never called): stopping, and a Redis outage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import structlog

from services.common.redis_client import make_redis
from services.gateway.queue import WORKERS, Queue
from services.gateway.settings import GatewaySettings
from services.gateway.worker import Processor, WorkerPool
from tests.support.processes import Valkey
from tests.support.stack import next_db

PARTITIONS = 4


def new_pool(url: str, **settings_fields: Any) -> tuple[WorkerPool, Any]:
    settings = GatewaySettings(
        app_env="test", redis_url=url, queue_partitions=PARTITIONS, **settings_fields
    )
    redis: Any = make_redis(url)
    queue = Queue(redis, settings.queue_partitions, settings.dedupe_ttl_seconds)
    return WorkerPool(settings, queue, cast(Processor, None)), redis


async def holding_all(pool: WorkerPool) -> None:
    for _ in range(200):  # the scheduler takes its share in a few of its 0.2-s rounds
        if len(pool.held_partitions) == PARTITIONS:
            break
        await asyncio.sleep(0.05)
    assert pool.held_partitions == list(range(PARTITIONS))


async def test_stop_returns_when_the_heartbeat_swallows_its_cancellation(valkey: Valkey) -> None:
    """As the heartbeat once did inside a redis-py call (Python 3.11's wait_for, CPython
    gh-86296): the worker then ignored SIGTERM for ever (services.common.tasks.cancel_and_wait)."""
    pool, redis = new_pool(f"redis://127.0.0.1:{valkey.port}/{next_db()}")
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
        await holding_all(pool)
        async with asyncio.timeout(10):
            await pool.stop()
        assert swallowed.is_set()  # the first cancellation was lost, and stop() still returned
        assert pool.held_partitions == []
        assert await redis.zscore(WORKERS, pool.worker_id) is None
    finally:
        await redis.aclose()


async def test_a_redis_outage_is_one_warning_and_one_line_when_it_ends(tmp_path: Path) -> None:
    """The heartbeat and the scheduler retry every 0.2-1 s while Redis is down: one warning, not
    one a retry, then one line when Redis answers again, and the partitions are taken back."""
    valkey = Valkey(tmp_path / "valkey").start()
    # Leases survive the restart (AOF) until they expire: short ones, to take them back soon.
    pool, redis = new_pool(valkey.url, visibility_timeout_seconds=2)
    try:
        with structlog.testing.capture_logs() as logs:
            await pool.start()
            await holding_all(pool)
            valkey.stop()
            await asyncio.sleep(3)  # ~3 heartbeats and ~10 scheduling rounds fail
            valkey.start()
            await holding_all(pool)
            for _ in range(100):
                if any(e["event"] == "worker reaches Redis again" for e in logs):
                    break
                await asyncio.sleep(0.05)
            await pool.stop()
    finally:
        await redis.aclose()
        valkey.stop()
    warned = [e for e in logs if e["log_level"] == "warning" and e["event"].startswith("worker ")]
    assert len(warned) == 1, warned
    assert warned[0]["event"] in ("worker heartbeat failed", "worker scheduling failed")
    assert warned[0]["repeats_logged_at"] == "debug"
    (recovered,) = [e for e in logs if e["event"] == "worker reaches Redis again"]
    assert recovered["failures"] >= 5 and recovered["seconds"] >= 2
    # Each partition loop stops once when Redis goes away (and says so): bounded by the share.
    stopped = [e for e in logs if e["event"] == "partition loop stopped"]
    assert len(stopped) <= PARTITIONS
