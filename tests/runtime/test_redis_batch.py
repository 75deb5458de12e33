"""ScriptBatcher against a real Valkey: concurrent calls share round trips, outcomes stay apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.common.redis_batch import IDLE_CHECK_SECONDS, ScriptBatcher
from services.common.redis_client import RedisClient, make_client
from tests.support.processes import Valkey

DB = 12
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_ODD = (
    "if tonumber(ARGV[1]) % 2 == 1 then return redis.error_reply('odd') end return ARGV[1]"
)


@pytest.fixture
async def client(valkey: Valkey) -> AsyncIterator[RedisClient]:
    client = make_client(f"redis://127.0.0.1:{valkey.port}/{DB}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def test_concurrent_calls_share_pipelines_and_all_apply(client: RedisClient) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(INCR)
    await client.script_load(INCR)
    reads_before = int((await client.info("stats"))["total_reads_processed"])
    results = await asyncio.gather(*(batcher.run(script, ["counter"], [1]) for _ in range(200)))
    reads = int((await client.info("stats"))["total_reads_processed"]) - reads_before
    assert sorted(int(r) for r in results) == list(range(1, 201))
    assert int(await client.get("counter")) == 200
    # 200 calls made at once: the first goes alone, the rest wait for it and go together.
    assert reads < 20, reads


async def test_a_failing_script_fails_only_its_own_caller(client: RedisClient) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(FAIL_ON_ODD)
    outcomes = await asyncio.gather(
        *(batcher.run(script, ["k"], [n]) for n in range(10)), return_exceptions=True
    )
    for n, outcome in enumerate(outcomes):
        if n % 2:
            assert isinstance(outcome, ResponseError) and "odd" in str(outcome)
        else:
            assert outcome == str(n).encode()


async def test_scripts_flushed_by_a_restart_are_loaded_and_run_once(client: RedisClient) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(INCR)
    await client.script_flush()  # as after a restart or failover: NOSCRIPT for every call
    results = await asyncio.gather(*(batcher.run(script, ["once"], [1]) for _ in range(20)))
    assert sorted(int(r) for r in results) == list(range(1, 21))
    assert int(await client.get("once")) == 20  # NOSCRIPT calls never ran: no double apply
    await client.script_flush()
    assert int(await batcher.run(script, ["once"], [1])) == 21  # the single-call path too


async def test_an_unreachable_redis_fails_every_call_and_the_next_ones_retry(
    tmp_path: Path,
) -> None:
    server = Valkey(tmp_path / "valkey").start()
    client = make_client(server.url, connect_timeout=0.2, socket_timeout=0.2, retries=0)
    batcher = ScriptBatcher(client)
    script = client.register_script(INCR)
    try:
        assert int(await batcher.run(script, ["n"], [1])) == 1
        server.stop()
        outcomes = await asyncio.gather(
            *(batcher.run(script, ["n"], [1]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, RedisConnectionError | OSError) for o in outcomes), outcomes
        server.start()  # same port and data directory
        assert int(await batcher.run(script, ["n"], [1])) >= 1
    finally:
        await client.aclose()
        server.stop()


async def test_a_caller_that_gives_up_does_not_break_the_batch(client: RedisClient) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(INCR)
    waiting = [asyncio.ensure_future(batcher.run(script, ["c"], [1])) for _ in range(10)]
    waiting[3].cancel()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, bytes | int) for n, d in enumerate(done) if n != 3)
    assert int(await batcher.run(script, ["c"], [0])) >= 9


async def test_a_connection_left_stale_by_a_restart_is_replaced_before_use(
    tmp_path: Path,
) -> None:
    server = Valkey(tmp_path / "valkey").start()
    client = make_client(server.url)
    batcher = ScriptBatcher(client)
    script = client.register_script(INCR)
    try:
        assert int(await batcher.run(script, ["n"], [1])) == 1
        server.stop()
        server.start()  # while idle: the batcher's connection now points at a closed socket
        await asyncio.sleep(IDLE_CHECK_SECONDS + 0.1)
        assert int(await batcher.run(script, ["n"], [1])) >= 1  # no error reaches the caller
    finally:
        await client.aclose()
        server.stop()
