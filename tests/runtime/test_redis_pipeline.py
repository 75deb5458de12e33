"""AutoPipeline against a real Valkey: concurrent calls share writes, outcomes stay apart."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_client import RedisClient, make_client
from services.common.redis_pipeline import AutoPipeline
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


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Valkey]:
    """A Valkey of the test's own, to stop, restart or freeze."""
    server = Valkey(tmp_path / "valkey").start()
    yield server
    server.stop()


async def test_concurrent_calls_share_pipelines_and_all_apply(client: RedisClient) -> None:
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    await client.script_load(INCR)
    reads_before = int((await client.info("stats"))["total_reads_processed"])
    results = await asyncio.gather(*(pipeline.script(script, ["counter"], [1]) for _ in range(200)))
    reads = int((await client.info("stats"))["total_reads_processed"]) - reads_before
    assert sorted(int(r) for r in results) == list(range(1, 201))
    assert int(await client.get("counter")) == 200
    # 200 calls made in one loop turn: one write (~12 KB), read by Redis in a few reads; sent one
    # by one they would take 200. (The bound is loose: a loaded machine hands Redis the write in
    # more pieces, and other clients' reads count too; 20 was seen once.)
    assert reads < 50, reads


async def test_a_failing_script_fails_only_its_own_caller(client: RedisClient) -> None:
    pipeline = AutoPipeline(client)
    script = client.register_script(FAIL_ON_ODD)
    outcomes = await asyncio.gather(
        *(pipeline.script(script, ["k"], [n]) for n in range(10)), return_exceptions=True
    )
    for n, outcome in enumerate(outcomes):
        if n % 2:
            assert isinstance(outcome, ResponseError) and "odd" in str(outcome)
        else:
            assert outcome == str(n).encode()


async def test_scripts_flushed_by_a_restart_are_loaded_and_run_once(client: RedisClient) -> None:
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    await client.script_flush()  # as after a restart or failover: NOSCRIPT for every call
    results = await asyncio.gather(*(pipeline.script(script, ["once"], [1]) for _ in range(20)))
    assert sorted(int(r) for r in results) == list(range(1, 21))
    assert int(await client.get("once")) == 20  # NOSCRIPT calls never ran: no double apply
    await client.script_flush()
    assert int(await pipeline.script(script, ["once"], [1])) == 21  # the single-call path too


async def test_an_unreachable_redis_fails_every_call_and_the_next_ones_retry(
    own_server: Valkey,
) -> None:
    server = own_server
    client = make_client(server.url, connect_timeout=0.2, socket_timeout=0.2, retries=0)
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    try:
        assert int(await pipeline.script(script, ["n"], [1])) == 1
        server.stop()
        outcomes = await asyncio.gather(
            *(pipeline.script(script, ["n"], [1]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, RedisConnectionError | OSError) for o in outcomes), outcomes
        server.start()  # same port and data directory
        assert int(await pipeline.script(script, ["n"], [1])) >= 1
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_does_not_break_the_others(client: RedisClient) -> None:
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    waiting = [asyncio.ensure_future(pipeline.script(script, ["c"], [1])) for _ in range(10)]
    waiting[3].cancel()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, bytes | int) for n, d in enumerate(done) if n != 3)
    assert int(await pipeline.script(script, ["c"], [0])) >= 9


async def test_a_connection_left_stale_by_a_restart_is_replaced_before_use(
    own_server: Valkey,
) -> None:
    server = own_server
    client = make_client(server.url)
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    try:
        assert int(await pipeline.script(script, ["n"], [1])) == 1
        server.stop()
        server.start()  # while idle: the pipeline's connection now points at a closed socket
        await asyncio.sleep(0.1)  # the event loop reads the close
        assert int(await pipeline.script(script, ["n"], [1])) >= 1  # no error reaches the caller
    finally:
        await client.aclose()


async def test_a_stale_connection_from_the_pool_is_never_waited_on(own_server: Valkey) -> None:
    """The pipeline connects through the client's pool, which can hand out an idle connection
    that Redis closed (a restart) before the close was read. Nothing was sent on it, so the call
    goes out on a new connection, or fails at once if Redis is down (it waited for ever)."""
    server = own_server
    client = make_client(server.url)
    try:
        # Through the pool: idle pooled connections, several of them.
        await asyncio.gather(*(client.set(f"k{n}", "v") for n in range(5)))
        server.stop()
        server.start()
        async with asyncio.timeout(5):
            pipeline = AutoPipeline(client)
            assert (
                await asyncio.gather(*(pipeline.command("PING") for _ in range(20)))
                == [b"PONG"] * 20
            )
        await client.set("k", "v")
        server.stop()
        with pytest.raises(RedisConnectionError):
            async with asyncio.timeout(5):
                await AutoPipeline(client).command("PING")
    finally:
        await client.aclose()


async def test_commands_share_the_pipeline_and_keep_redis_py_errors(client: RedisClient) -> None:
    pipeline = AutoPipeline(client)
    assert await pipeline.command("SET", "greeting", "héllo") == b"OK"
    assert await pipeline.command("GET", "greeting") == "héllo".encode()
    assert await pipeline.command("GET", "absent") is None
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await pipeline.command("GET")
    assert await pipeline.command("PING") == b"PONG"  # the connection is still in step


async def test_a_decoding_client_gets_text(valkey: Valkey) -> None:
    client = make_client(f"redis://127.0.0.1:{valkey.port}/{DB}", decode_responses=True)
    try:
        pipeline = AutoPipeline(client)
        await pipeline.command("SET", "greeting", "héllo")
        assert await pipeline.command("GET", "greeting") == "héllo"
    finally:
        await client.aclose()


async def test_a_redis_that_stops_answering_times_out_every_call_in_flight(
    own_server: Valkey,
) -> None:
    server = own_server
    client = make_client(server.url, connect_timeout=0.2, socket_timeout=0.3, retries=0)
    pipeline = AutoPipeline(client)
    try:
        await pipeline.command("PING")
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # alive but silent: no close, no reply
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(pipeline.command("PING") for _ in range(3)), return_exceptions=True
            )
            waited = time.monotonic() - started
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
        assert 0.25 < waited < 2, waited
        assert await pipeline.command("PING") == b"PONG"  # a fresh connection afterwards
    finally:
        await client.aclose()


async def test_closing_the_client_closes_the_held_connection_promptly(valkey: Valkey) -> None:
    client = make_client(f"redis://127.0.0.1:{valkey.port}/{DB}")
    pipeline = AutoPipeline(client)
    await pipeline.command("PING")
    started = time.monotonic()
    await client.aclose()
    assert time.monotonic() - started < 0.5


async def test_a_master_demoted_to_replica_drops_the_connection(
    own_server: Valkey, tmp_path: Path
) -> None:
    """READONLY after a failover: a connection error (the write never ran), then a new link."""
    server, other = own_server, Valkey(tmp_path / "other").start()
    client = make_client(server.url)
    pipeline = AutoPipeline(client)
    script = client.register_script(INCR)
    try:
        assert int(await pipeline.script(script, ["n"], [1])) == 1
        await client.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
        with pytest.raises(RedisConnectionError, match="READONLY"):
            await pipeline.script(script, ["n"], [1])
        await client.execute_command("REPLICAOF", "NO", "ONE")  # promoted again
        assert int(await pipeline.script(script, ["n"], [1])) >= 1
    finally:
        await client.aclose()
        other.stop()
