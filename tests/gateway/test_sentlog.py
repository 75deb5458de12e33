"""SentLog: replies are recognised by content, not position, and recording never fails a turn."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import redis.asyncio as redis
import structlog.testing

from services.common.redis_pipeline import AutoPipeline
from services.gateway.engine import Button, InboundMessage, Reply
from services.gateway.queue import Entry
from services.gateway.worker import SentLog
from tests.support.processes import Valkey


def entry(message_id: str) -> Entry:
    message = InboundMessage(
        channel="cloud_api",
        provider_message_id=message_id,
        channel_identity="1",
        user_id="2",
        type="text",
        timestamp=datetime.now(UTC),
        text="x",
    )
    return Entry(0, "1-0", message, "rid", 0.0, {})


def sent_log(client: redis.Redis, message_id: str) -> SentLog:
    """The log as a worker builds it: its queue's pipeline and the registered script."""
    scripts = AutoPipeline(client)
    return SentLog(scripts, client.register_script(SentLog.MARK), entry(message_id), 60)


async def test_a_retry_without_the_early_reply_still_sends_the_answer(valkey: Valkey) -> None:
    client = redis.Redis.from_url(valkey.url)
    try:
        log = sent_log(client, "wamid.sentlog-1")
        early, answer = Reply("searching …"), Reply("here are your flights")
        # First attempt: the early reply went out, then the worker died.
        await log.mark(SentLog.fingerprint(early, []))
        already = await log.fingerprints()
        # Second attempt: no early reply this time; the answer is first in the list.
        assert SentLog.fingerprint(answer, []) not in already
        # A retry that does repeat the early reply recognises it.
        assert SentLog.fingerprint(early, []) in already
    finally:
        await client.aclose()


async def test_identical_replies_are_told_apart_and_buttons_count() -> None:
    same = Reply("ok")
    assert SentLog.fingerprint(same, []) != SentLog.fingerprint(same, [same])
    with_button = Reply("ok", buttons=(Button("y", "Yes"),))
    assert SentLog.fingerprint(same, []) != SentLog.fingerprint(with_button, [])


async def test_recording_while_redis_is_down_does_not_fail_the_turn() -> None:
    client = redis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens there
    try:
        await sent_log(client, "wamid.sentlog-2").mark("f:0")
    finally:
        await client.aclose()


async def test_parts_of_a_reply_are_told_apart_and_the_first_keeps_its_fingerprint() -> None:
    fingerprint = SentLog.fingerprint(Reply("long"), [])
    # What a worker of an earlier version recorded for a reply it had sent counts for part 0.
    assert SentLog.part(fingerprint, 0) == fingerprint
    assert len({SentLog.part(fingerprint, index) for index in range(3)}) == 3


async def test_a_record_refused_by_a_demoted_master_is_written_once_a_master_answers(
    fresh_valkey: Valkey,
) -> None:
    """A failover demotes the master while a reply is recorded: ``READONLY``, then the new
    master. The record is tried again and lands, as for a Redis out of memory. (Was a bug:
    taken for an unreachable Redis and dropped, so a retry whose turn was not saved either
    sent the reply a second time.)"""
    client = redis.Redis.from_url(fresh_valkey.url)
    admin = redis.Redis.from_url(fresh_valkey.url)
    try:
        await admin.replicaof("127.0.0.1", 1)  # a replica now: every write answers READONLY
        log = sent_log(client, "wamid.sentlog-demoted")
        with structlog.testing.capture_logs() as lines:
            marking = asyncio.create_task(log.mark("f:0"))
            for _ in range(1000):  # until its first try is refused (or it returned)
                if marking.done() or lines:
                    break
                await asyncio.sleep(0.01)
            assert lines and lines[0]["event"] == "could not record a sent reply", lines
            await admin.replicaof("no", "one")  # the failover is over: a master again
            await marking
        assert await log.fingerprints() == {"f:0"}
    finally:
        await admin.replicaof("no", "one")
        await client.aclose()
        await admin.aclose()
