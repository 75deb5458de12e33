"""A gateway WorkerPool on a real Valkey, without the rest of the stack: its own lifecycle
(stopping, a Redis outage) and its retries, with a scripted processor in place of the real one
(whose failures it stands for with the exceptions the real one raises)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import structlog
from redis.exceptions import RedisError

from services.common.redis_client import make_redis
from services.gateway.engine import InboundMessage
from services.gateway.queue import (
    WORKERS,
    Entry,
    Queue,
    dedupe_key,
    encode_message,
    legacy_dedupe_key,
    partition_of,
    replay_claim_key,
    stream_key,
)
from services.gateway.senders.base import SendError
from services.gateway.settings import GatewaySettings
from services.gateway.worker import DeadLetter, EngineTimeout, Processor, WorkerPool
from tests.support.processes import Valkey
from tests.support.stack import next_db

PARTITIONS = 4
QUICK_RETRIES = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05}

# What one attempt does: return this outcome, raise this error, or await this and return it.
Step = str | Exception | Callable[[], Awaitable[str]]


class Scripted:
    """The pool's processor, scripted per message text: the n-th attempt of a message does
    ``steps[text][n - 1]`` (the last step repeats). Records every attempt, in order."""

    def __init__(self, steps: dict[str, list[Step]]) -> None:
        self.steps = steps
        self.attempts: list[str] = []

    async def process(self, entry: Entry, attempt: int, waited_for_limit: bool = False) -> str:
        text = entry.message.text
        self.attempts.append(text)
        steps = self.steps[text]
        step = steps[min(self.attempts.count(text), len(steps)) - 1]
        if isinstance(step, Exception):
            raise step
        return step if isinstance(step, str) else await step()


# Every pool a test makes, with its Redis client: stopped and closed after the test (below).
_made: list[tuple[WorkerPool, Any]] = []


def new_pool(
    url: str, processor: Scripted | None = None, **settings_fields: Any
) -> tuple[WorkerPool, Any]:
    settings = GatewaySettings(
        app_env="test", redis_url=url, queue_partitions=PARTITIONS, **settings_fields
    )
    redis: Any = make_redis(url)
    queue = Queue(redis, settings.queue_partitions, settings.dedupe_ttl_seconds)
    pool = WorkerPool(settings, queue, cast(Processor, processor))
    _made.append((pool, redis))
    return pool, redis


@pytest.fixture(autouse=True)
async def stop_the_pools() -> AsyncIterator[None]:
    """Tests share one event loop: a pool left running by a failed assertion would go on
    taking work (and logging) through every later test. A pool run on a ``Stalling`` loop is
    stopped by its test, on that loop."""
    yield
    here = asyncio.get_running_loop()
    while _made:
        pool, redis = _made.pop()
        on_this_loop = all(task.get_loop() is here for task in pool._tasks)
        if on_this_loop:
            if pool._tasks and not pool._stopping.is_set():
                await pool.stop()
            await redis.aclose()


async def fresh_url(valkey: Valkey) -> str:
    url = f"redis://127.0.0.1:{valkey.port}/{next_db()}"
    redis: Any = make_redis(url)
    await redis.flushdb()  # none other uses it (next_db); emptied all the same, as gateways do
    await redis.aclose()
    return url


def message(user: str, text: str) -> InboundMessage:
    return InboundMessage(
        channel="cloud_api",
        provider_message_id=f"wamid.{uuid.uuid4().hex}",
        channel_identity="100200300",
        user_id=user,
        type="text",
        timestamp=datetime.now(UTC),
        text=text,
    )


async def enqueue(pool: WorkerPool, *messages: InboundMessage) -> None:
    for one in messages:  # one at a time: in this order on their partitions
        await pool.queue.enqueue([one], uuid.uuid4().hex, time.time())


async def until(condition: Callable[[], Any], seconds: float = 30) -> None:
    """Wait for ``condition`` (sync or async) to hold; fails after ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            held = condition()
            if await held if inspect.isawaitable(held) else held:
                return
            await asyncio.sleep(0.02)


async def finished(pool: WorkerPool) -> bool:
    """Every queued entry acknowledged (answered or dead-lettered)."""
    return (await pool.queue.stats())["length"] == 0


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


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
    await pool.start()
    await holding_all(pool)
    async with asyncio.timeout(10):
        await pool.stop()
    assert swallowed.is_set()  # the first cancellation was lost, and stop() still returned
    assert pool.held_partitions == []
    assert await redis.zscore(WORKERS, pool.worker_id) is None


async def test_a_redis_outage_is_one_warning_and_one_line_when_it_ends(tmp_path: Path) -> None:
    """The heartbeat and the scheduler retry every 0.2-1 s while Redis is down: one warning, not
    one a retry, then one line when Redis answers again, and the partitions are taken back."""
    valkey = Valkey(tmp_path / "valkey").start()
    # Leases survive the restart (AOF) until they expire: short ones, to take them back soon.
    pool, _ = new_pool(valkey.url, visibility_timeout_seconds=2)
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
        valkey.stop()  # the pool is stopped after the test (stop_the_pools), Redis down or not
    warned = [e for e in logs if e["log_level"] == "warning" and e["event"].startswith("worker ")]
    assert len(warned) == 1, warned
    assert warned[0]["event"] in ("worker heartbeat failed", "worker scheduling failed")
    assert warned[0]["repeats_logged_at"] == "debug"
    (recovered,) = [e for e in logs if e["event"] == "worker reaches Redis again"]
    assert recovered["failures"] >= 5 and recovered["seconds"] >= 2
    # Each partition loop stops once when Redis goes away (and says so): bounded by the share.
    stopped = [e for e in logs if e["event"] == "partition loop stopped"]
    assert len(stopped) <= PARTITIONS


async def test_a_dependency_outage_is_retried_past_max_attempts_even_across_a_takeover(
    valkey: Valkey,
) -> None:
    """A dependency's failures do not use up MAX_ATTEMPTS: they retry, and a worker that takes
    the message over meanwhile (a rolling deploy during the outage) knows they were transient.
    (Was a bug: any 2 failures here, 5 by default, about 15 s of outage, dead-lettered it.)"""
    url = await fresh_url(valkey)
    outage = Scripted(
        {
            "hi": [
                rpc_error(grpc.StatusCode.UNAVAILABLE, "business service down"),
                SendError("Graph API 503", retryable=True, outcome="server_error", code=503),
                RedisError("connection reset"),
                TimeoutError(),  # a send's deadline
                rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "session service slow"),
            ]
        }
    )
    first, _ = new_pool(url, outage, max_attempts=2, **QUICK_RETRIES)
    back = Scripted({"hi": ["answered"]})
    second, _ = new_pool(url, back, max_attempts=2, **QUICK_RETRIES)
    await first.start()
    await enqueue(first, message("15550001", "hi"))
    await until(lambda: len(outage.attempts) >= 6)
    await first.stop()
    await second.start()
    await until(lambda: finished(second))
    await second.stop()
    assert back.attempts == ["hi"]
    assert await second.queue.dead_letters(None, 10) == []


async def the_dead_letter(pool: WorkerPool, sent: InboundMessage) -> dict[str, Any]:
    """Run ``pool`` until ``sent``, its only message, is finished: the dead letter it became."""
    await pool.start()
    await enqueue(pool, sent)
    await until(lambda: finished(pool))
    await pool.stop()
    [(_, record)] = await pool.queue.dead_letters(None, 10)
    return dict(record)


async def test_the_message_s_own_failures_still_dead_letter_after_max_attempts(
    valkey: Valkey,
) -> None:
    """Engine errors and the engine's deadline reproduce: MAX_ATTEMPTS of them end the message,
    however many transient failures came in between."""
    url = await fresh_url(valkey)
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "search down")
    processor = Scripted(
        {
            "bad": [
                unavailable,
                RuntimeError("the engine failed"),
                unavailable,
                EngineTimeout("no answer within 20 s"),
            ]
        }
    )
    pool, _ = new_pool(url, processor, max_attempts=2, **QUICK_RETRIES)
    record = await the_dead_letter(pool, message("15550002", "bad"))
    assert len(processor.attempts) == 4
    assert record["reason"] == "max_attempts"
    assert record["error"] == "EngineTimeout: no answer within 20 s"


async def test_transient_failures_dead_letter_once_the_retry_window_has_passed(
    valkey: Valkey,
) -> None:
    url = await fresh_url(valkey)
    processor = Scripted({"hi": [rpc_error(grpc.StatusCode.UNAVAILABLE, "business down")]})
    pool, _ = new_pool(url, processor, max_attempts=2, retry_window_seconds=0.3, **QUICK_RETRIES)
    record = await the_dead_letter(pool, message("15550003", "hi"))
    assert len(processor.attempts) > 2
    assert record["reason"] == "retry_window"
    assert record["error"] == "gRPC UNAVAILABLE: business down"


def a_user(first: int, wanted: Callable[[str], bool]) -> str:
    """The first test user id (155500<n>, n from ``first`` on) for which ``wanted`` holds."""
    return next(user for n in range(first, 200) if wanted(user := f"155500{n}"))


def users_on_different_partitions() -> tuple[str, str]:
    first = "15550010"
    mine = partition_of(message(first, "").channel_identity, first, PARTITIONS)
    other = a_user(
        11, lambda user: partition_of(message(user, "").channel_identity, user, PARTITIONS) != mine
    )
    return first, other


async def test_a_message_waiting_to_retry_holds_no_slot_and_its_partition_waits(
    valkey: Valkey,
) -> None:
    """One attempt at a time per process here (WORKER_CONCURRENCY=1): while A's message waits a
    minute to retry, B's, on another partition, is answered; A's next message is not started
    before A's first is done. (Was a bug: the wait held the slot, so one failing business held up
    every other one in the process.)"""
    url = await fresh_url(valkey)
    a, b = users_on_different_partitions()
    processor = Scripted(
        {
            "a1": [SendError("Graph API 503", retryable=True, outcome="error", code=503)],
            "a2": ["answered"],
            "b1": ["answered"],
        }
    )
    pool, _ = new_pool(
        url, processor, worker_concurrency=1, retry_base_seconds=60, retry_max_seconds=60
    )
    await pool.start()
    await enqueue(pool, message(a, "a1"), message(a, "a2"))
    await until(lambda: processor.attempts == ["a1"])
    await enqueue(pool, message(b, "b1"))
    await until(lambda: "b1" in processor.attempts)
    assert processor.attempts == ["a1", "b1"]  # a2 waits behind a1, on A's partition
    await pool.stop()


async def test_stop_finishes_the_message_in_flight_and_leaves_the_rest_to_the_next_worker(
    valkey: Valkey,
) -> None:
    """SIGTERM: the message in flight is finished, the ones read with it are not started; the
    next worker answers them, in order. (Was a bug: each partition went through its whole read
    batch, up to 10 messages, first.)"""
    url = await fresh_url(valkey)
    user = "15550020"
    texts = ["m1", "m2", "m3", "m4"]
    # m1 finishes once stopping has been asked for: stop() comes while it is in flight.
    processor = Scripted(
        {**{text: ["answered"] for text in texts}, "m1": [lambda: stopped_then(first, "answered")]}
    )
    first, _ = new_pool(url, processor)
    later = Scripted({text: ["answered"] for text in texts})
    second, _ = new_pool(url, later)
    await first.start()
    await enqueue(first, *(message(user, text) for text in texts))
    await until(lambda: processor.attempts == ["m1"])
    async with asyncio.timeout(30):
        await first.stop()
    assert processor.attempts == ["m1"]
    await second.start()
    await until(lambda: finished(second))
    await second.stop()
    assert later.attempts == ["m2", "m3", "m4"]


async def stopped_then(pool: WorkerPool, outcome: str) -> str:
    await pool._stopping.wait()
    return outcome


async def test_stop_keeps_to_the_shutdown_grace_and_hands_the_partitions_back(
    valkey: Valkey,
) -> None:
    """A message still in flight when SHUTDOWN_GRACE_SECONDS is over is left pending for the
    next holder of its partition, whose lease is given back at once. (Was a bug: stop() waited
    for it however long it took, until the process was killed.)"""
    url = await fresh_url(valkey)
    hung = asyncio.Event()  # never set
    processor = Scripted({"stuck": [lambda: stopped_then_hung(hung)], "next": ["answered"]})
    first, redis = new_pool(url, processor, shutdown_grace_seconds=0.5)
    later = Scripted({"stuck": ["answered"], "next": ["answered"]})
    second, _ = new_pool(url, later)
    await first.start()
    await enqueue(first, message("15550030", "stuck"), message("15550030", "next"))
    await until(lambda: processor.attempts == ["stuck"])
    async with asyncio.timeout(30):
        await first.stop()
    assert [key async for key in redis.scan_iter("gw:lease:*")] == []
    await second.start()
    await until(lambda: finished(second))
    await second.stop()
    assert later.attempts == ["stuck", "next"]


async def stopped_then_hung(hung: asyncio.Event) -> str:
    await hung.wait()
    return "answered"


def users_of_two_businesses_on_one_partition() -> tuple[
    Callable[[str], InboundMessage], Callable[[str], InboundMessage]
]:
    """Messages of a user of one business (number 100200300) and of a user of another (number
    900800700) whose messages share a partition, as any two users' may."""
    a = "15550040"
    mine = partition_of(message(a, "").channel_identity, a, PARTITIONS)
    b = a_user(41, lambda user: partition_of("900800700", user, PARTITIONS) == mine)
    return (
        lambda text: message(a, text),
        lambda text: replace(message(b, text), channel_identity="900800700"),
    )


async def test_a_business_being_throttled_does_not_hold_up_another_business_on_its_partition(
    valkey: Valkey,
) -> None:
    """Meta rate-limits one business's number (130429: every send of it fails and is retried);
    a user of another business whose messages share the partition is answered meanwhile, while
    the throttled business's user's next message still waits for their first (order per user).
    (Was a bug: the partition waited out each retry, up to RETRY_WINDOW_SECONDS per message, so
    every user of every business behind it waited too.)"""
    url = await fresh_url(valkey)
    a, b = users_of_two_businesses_on_one_partition()
    throttled = SendError("Graph API rate limit (130429)", retryable=True, outcome="rate_limited")
    processor = Scripted(
        {"a1": [throttled, "answered"], "a2": ["answered"], "b1": ["answered"], "b2": ["answered"]}
    )
    pool, _ = new_pool(url, processor, retry_base_seconds=3, retry_max_seconds=3)
    await pool.start()
    await enqueue(pool, a("a1"), a("a2"))
    await until(lambda: processor.attempts == ["a1"])
    await enqueue(pool, b("b1"), b("b2"))
    await until(lambda: processor.attempts[-1:] == ["b2"], seconds=2)
    assert processor.attempts == ["a1", "b1", "b2"]  # a2 waits behind a1
    await until(lambda: finished(pool))
    await pool.stop()
    assert processor.attempts == ["a1", "b1", "b2", "a1", "a2"]


async def consumers(redis: Any, partition: int) -> list[str]:
    """The names of the consumers in the partition's group."""
    found = await redis.xinfo_consumers(stream_key(partition), "workers")
    return [c["name"].decode() for c in found]


async def test_every_live_worker_holds_partitions_when_there_are_enough(valkey: Valkey) -> None:
    """A worker added (an HPA scale-up, a rollout's surge) takes its part of the partitions.
    (Was a bug: each held up to ceil(partitions / live workers), so three workers on four
    partitions held two, two and none, and with QUEUE_PARTITIONS 16 anything from 9 to 15
    workers left some idle: a ready pod that took no message, and no capacity added.)"""
    url = await fresh_url(valkey)
    pools: list[tuple[WorkerPool, Any]] = []
    try:
        for count in (1, 2, 3):  # one at a time, each after the last had settled
            pools.append(new_pool(url, Scripted({})))
            await pools[-1][0].start()

            def settled(count: int = count) -> bool:
                held = [pool.held_partitions for pool, _ in pools]
                share = PARTITIONS // count
                return sum(map(len, held)) == PARTITIONS and all(len(h) >= share for h in held)

            await until(settled)
        held = sorted(p for pool, _ in pools for p in pool.held_partitions)
        assert held == list(range(PARTITIONS))
    finally:
        for pool, client in pools:
            await pool.stop()
            await client.aclose()


async def test_restarted_workers_leave_no_consumer_behind_in_the_groups(valkey: Valkey) -> None:
    """Every worker process reads as a consumer of its own name (host, pid, a random part), and
    Redis keeps a consumer in its group until it is deleted: each restart, deploy or rebalance
    added one per partition, for ever (XINFO, and redis_exporter's per-consumer series, grew
    with them). A worker that takes a partition over now deletes the consumers it claimed
    everything from; one with entries still pending (a worker still reading) is kept."""
    url = await fresh_url(valkey)
    users = {
        partition_of("100200300", str(15550100 + n), PARTITIONS): str(15550100 + n)
        for n in range(64)
    }
    assert len(users) == PARTITIONS
    redis: Any = make_redis(url)
    try:
        for generation in range(4):  # a rolling restart: one worker after the other
            processor = Scripted({f"g{generation}": ["answered"]})
            pool, _ = new_pool(url, processor)
            await pool.start()
            await holding_all(pool)
            await enqueue(pool, *(message(u, f"g{generation}") for u in users.values()))
            await until(functools.partial(finished, pool))
            await pool.stop()
            for partition in range(PARTITIONS):
                names = await consumers(redis, partition)
                assert names == [pool.worker_id], (generation, partition, names)
        # A consumer with entries pending (a stalled former holder; here entries read by hand and
        # not acknowledged) is deleted only once they are claimed: they are still answered.
        await enqueue(pool, message(users[0], "late"))
        await redis.xreadgroup("workers", "stalled", {stream_key(0): ">"})
        later = Scripted({"late": ["answered"]})
        last, _ = new_pool(url, later)
        await last.start()
        await until(lambda: finished(last))
        await last.stop()
        assert later.attempts == ["late"]
        assert await consumers(redis, 0) == [last.worker_id]
    finally:
        await redis.aclose()


async def test_a_run_of_unreadable_pending_entries_does_not_hide_the_messages_after_it(
    valkey: Valkey,
) -> None:
    """A partition taken over holds, pending, more unreadable entries in a row than one read
    returns (here 12: written by hand, or by a bug) and then a real message. The unreadable
    ones are dead-lettered; the message is answered. (Was a bug: a read of only unreadable
    entries returned nothing, which ended the pending phase: the message stayed pending for
    ever under the new holder's name, never read again.)"""
    url = await fresh_url(valkey)
    user = "15550400"
    partition = partition_of("100200300", user, PARTITIONS)
    stream = stream_key(partition)
    processor = Scripted({"after the junk": ["answered"]})
    pool, redis = new_pool(url, processor)
    await pool.queue.ensure_groups()
    for n in range(12):
        await redis.xadd(stream, {"m": f"not a message {n}"})
    await enqueue(pool, message(user, "after the junk"))
    await redis.xreadgroup("workers", "crashed", {stream: ">"})  # all pending, then gone
    await pool.start()
    await until(lambda: processor.attempts == ["after the junk"], seconds=10)
    await until(functools.partial(finished, pool))
    await pool.stop()
    dead = await pool.queue.dead_letters(None, 20)
    assert [record["reason"] for _, record in dead] == ["corrupt_entry"] * 12


async def test_a_replay_that_dies_midway_blocks_its_record_for_a_minute_at_most(
    valkey: Valkey,
) -> None:
    """A replay claims its record first (so that two at once queue it once). A gateway process
    that died in the middle of one left that claim for an hour: every replay of the record was
    404 meanwhile, while the list still showed it. The claim now lasts a minute until the message
    is queued, and an hour once it is (in case the record's delete failed)."""
    url = await fresh_url(valkey)
    pool, redis = new_pool(url, Scripted({}))
    queue = pool.queue
    fields = {"m": encode_message(message("15550500", "replay me")), "rid": "r1"}
    dead_id = await queue.dead_letter("max_attempts", "boom", fields=fields)
    requeue = queue.requeue
    midway, finish = asyncio.Event(), asyncio.Event()

    async def slow_requeue(fields: dict[str, str]) -> str:
        midway.set()
        await finish.wait()
        return await requeue(fields)

    queue.requeue = slow_requeue  # type: ignore[method-assign]
    replay = asyncio.create_task(queue.replay(dead_id))
    await until(midway.is_set)
    assert 0 < await redis.ttl(replay_claim_key(dead_id)) <= 60  # what a crash here leaves
    finish.set()
    assert await replay
    assert 60 < await redis.ttl(replay_claim_key(dead_id)) <= 3600


class Stalling:
    """A pool's own event loop, in a thread, which can be stalled and resumed: as a whole worker
    process is by a long pause (CPU starvation, a VM or container freeze, SIGSTOP)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.resumed = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coroutine

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wrapped(), self.loop))

    def stall(self) -> None:
        self.resumed.clear()
        self.loop.call_soon_threadsafe(self.resumed.wait)

    def close(self) -> None:
        self.resumed.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def test_a_worker_that_stalled_past_its_lease_takes_nothing_from_its_successor(
    valkey: Valkey,
) -> None:
    """A worker stalls past its leases while idle; another takes its partitions over and starts
    a user's m1; m2 arrives; the stalled worker resumes. It must not read m2: the successor
    answers m1, m2 and m3 in order. (Was a bug: the resumed worker's next read, before its lease
    renewal said the lease was gone, took m2, which it then handled alongside m1 or left; either
    way m2 stayed pending under its name, where the successor never looked, and m3 was answered
    before it.)"""
    url = await fresh_url(valkey)
    user = "15550200"
    events: list[str] = []

    def step(text: str, seconds: float = 0) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            events.append(f"{text} started")
            await asyncio.sleep(seconds)
            events.append(f"{text} done")
            return "answered"

        return run

    steps: dict[str, list[Step]] = {"m1": [step("m1", 1.5)], "m2": [step("m2")], "m3": [step("m3")]}
    stalling = Stalling()
    # Its Redis client connects on its first call, on the loop that makes it.
    first, first_redis = new_pool(url, Scripted(steps), visibility_timeout_seconds=1.5)
    second, _ = new_pool(url, Scripted(steps), visibility_timeout_seconds=1.5)
    try:
        await stalling.run(first.start())
        await until(lambda: first.held_partitions == list(range(PARTITIONS)))
        await asyncio.sleep(0.3)  # idle: waiting for new messages
        stalling.stall()
        await second.start()
        await holding_all(second)  # once the stalled worker's leases lapsed
        await enqueue(second, message(user, "m1"))
        await until(lambda: "m1 started" in events)
        await enqueue(second, message(user, "m2"))
        stalling.resumed.set()
        await asyncio.sleep(0.5)  # the resumed worker finds its leases gone
        await enqueue(second, message(user, "m3"))
        await until(lambda: finished(second), seconds=15)
        await second.stop()
        await stalling.run(first.stop())
    finally:
        await stalling.run(first_redis.aclose())
        stalling.close()
    assert events == [f"{m} {s}" for m in ("m1", "m2", "m3") for s in ("started", "done")]


async def test_a_worker_stalled_past_its_lease_does_not_dead_letter_what_its_successor_answers(
    valkey: Valkey,
) -> None:
    """A worker stalls in the middle of m1, past its lease; its successor takes m1 over and
    answers it. Resumed, the first worker's attempt ends in a dead letter (its own send was
    refused, say): that record must not be written, since m1 was answered. (Was a bug: it was,
    so an operator replaying the dead letters answered m1 a second time.)"""
    url = await fresh_url(valkey)
    started = threading.Event()
    stalling = Stalling()

    async def refused_after_a_pause() -> str:
        started.set()
        await asyncio.sleep(0.3)  # the stall comes here
        raise DeadLetter("send_error", "refused")

    first, first_redis = new_pool(
        url, Scripted({"m1": [refused_after_a_pause]}), visibility_timeout_seconds=1.5
    )
    successor = Scripted({"m1": ["answered"]})
    second, _ = new_pool(url, successor, visibility_timeout_seconds=1.5)
    try:
        await stalling.run(first.start())
        await until(lambda: first.held_partitions == list(range(PARTITIONS)))
        await enqueue(second, message("15550300", "m1"))
        await until(started.is_set)
        stalling.stall()
        await second.start()
        await until(lambda: successor.attempts == ["m1"], seconds=15)
        await until(lambda: finished(second))
        stalling.resumed.set()
        await asyncio.sleep(1.0)  # the first worker's attempt ends now
        await second.stop()
        await stalling.run(first.stop())
        assert await second.queue.dead_letters(None, 10) == []
    finally:
        await stalling.run(first_redis.aclose())
        stalling.close()


async def test_a_redis_that_lost_its_data_is_read_again(valkey: Valkey) -> None:
    """Redis loses everything (a flush, a restart without persistence) under a running worker:
    leases, streams and groups. Its partitions are taken again and new messages answered."""
    url = await fresh_url(valkey)
    processor = Scripted({"before": ["answered"], "after": ["answered"]})
    pool, redis = new_pool(url, processor, visibility_timeout_seconds=1.5)
    await pool.start()
    await holding_all(pool)
    await enqueue(pool, message("15550300", "before"))
    await until(lambda: finished(pool))
    await redis.flushdb()
    await asyncio.sleep(1)
    await enqueue(pool, message("15550300", "after"))
    await until(lambda: finished(pool), seconds=10)
    await pool.stop()
    assert processor.attempts == ["before", "after"]


async def test_erasing_a_user_deletes_their_queued_entries_and_dead_letters_only(
    valkey: Valkey,
) -> None:
    """``Queue.erase_user`` (``DELETE /admin/users/…``): the user's entries of the business,
    pending or not, go with their attempts, errors and sent logs; so do their dead letters, and
    an unusable payload's that names their number; the same number's messages through Twilio
    (``+`` and the number) too. Another user's, a longer number holding
    theirs, and their messages to another business stay; the workers then answer the rest."""
    url = await fresh_url(valkey)
    user, other, longer = "15550500", "15550501", "115550500"
    by_twilio = replace(
        message(f"+{user}", "a3"), channel="twilio", channel_identity="+15550100200"
    )
    theirs = [message(user, "a1"), message(user, "a2"), by_twilio]
    elsewhere = replace(message(user, "a elsewhere"), channel_identity="999888777")
    processor = Scripted({"b1": ["answered"], "a elsewhere": ["answered"]})
    pool, redis = new_pool(url, processor)
    await pool.queue.ensure_groups()
    await enqueue(pool, *theirs, message(other, "b1"), elsewhere)
    partition = partition_of("100200300", user, PARTITIONS)
    stream = stream_key(partition)
    await redis.xreadgroup("workers", "crashed", {stream: ">"})  # pending, holder gone
    first = (await redis.xrange(stream, count=1))[0][0].decode()
    await pool.queue.attempt(partition, first)
    await pool.queue.record_error(partition, first, "failed once")
    async with redis.pipeline(transaction=False) as pipe:  # theirs past the first page
        for n in range(1200):
            pipe.xadd("gw:dead", {"reason": "unusable_payload", "raw": f'{{"n":{n}}}'})
        await pipe.execute()
    dead = replace(message(user, "dead and theirs"), provider_message_id="wamid.dead")
    await pool.queue.dead_letter("max_attempts", "x", fields={"m": encode_message(dead)})
    await pool.queue.dead_letter(
        "max_attempts", "x", fields={"m": encode_message(message(other, "stays"))}
    )
    await pool.queue.dead_letter("unusable_payload", "x", raw={"from": user, "type": "?"})
    await pool.queue.dead_letter("unusable_payload", "x", raw={"from": longer})
    sent = [
        "gw:sent:cloud_api:wamid.dead",
        f"gw:sent:cloud_api:{theirs[0].provider_message_id}",
    ]
    for key in sent:
        await redis.sadd(key, "fingerprint")

    erased = await pool.queue.erase_user({user, f"+{user}"}, {"100200300", "+15550100200"})

    assert erased == {"queued": 3, "dead_letters": 2, "sent_logs": 2}
    assert await redis.exists(*sent) == 0
    assert await redis.hgetall(f"gw:att:{{{partition}}}") == {}
    assert await redis.hgetall(f"gw:err:{{{partition}}}") == {}
    left = [record for _, record in await pool.queue.dead_letters(None, 2000)][1200:]
    assert len(left) == 2
    assert f'"user_id":"{other}"' in left[0]["orig_m"] and longer in left[1]["raw"]
    await pool.start()
    await until(lambda: sorted(processor.attempts) == ["a elsewhere", "b1"], seconds=10)
    await until(functools.partial(finished, pool))
    await pool.stop()
    assert sorted(processor.attempts) == ["a elsewhere", "b1"]


async def test_dedupe_markers_hold_no_message_id_and_the_old_names_still_count(
    valkey: Valkey,
) -> None:
    """A marker is named by a digest of the provider message id (a Cloud API id holds the
    user's number, and markers outlive an erasure by ``DEDUPE_TTL_SECONDS``); a marker written
    under the old name (the id itself) before an upgrade still drops the redelivery."""
    url = await fresh_url(valkey)
    pool, redis = new_pool(url)
    fresh, old = message("15550600", "new"), message("15550600", "accepted before")
    p = pool.queue.partition(old)
    await redis.set(legacy_dedupe_key(p, "cloud_api", old.provider_message_id), "1-0")
    assert await pool.queue.enqueue([old], "rid", time.time()) == [None]
    [entry_id] = await pool.queue.enqueue([fresh], "rid", time.time())
    assert entry_id is not None
    assert await pool.queue.enqueue([fresh], "rid", time.time()) == [None]
    names = [key.decode() for key in await redis.keys("gw:dd:*")]
    assert dedupe_key(p, "cloud_api", fresh.provider_message_id) in names
    assert [name for name in names if fresh.provider_message_id in name] == []
