"""Redis goes away mid-conversation: the fallback serves, and writes back when Redis returns."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from parley.session.v1 import session_pb2 as pb
from parley.session.v1.session_pb2_grpc import SessionServiceStub
from services.common.errors import Unavailable
from services.common.healthcheck import check
from services.common.redis_client import RedisClient, make_client
from services.session import metrics
from services.session.memory_store import MemoryStore
from services.session.model import Conversation, ConversationKey, encode_message
from services.session.redis_store import RedisStore
from services.session.store import SessionStore
from tests.session.conftest import SERVICE, bot_message, new_key, start_session, user_message
from tests.support.processes import Valkey, wait_for


def status(stub: SessionServiceStub) -> pb.GetStorageStatusResponse:
    response: pb.GetStorageStatusResponse = stub.GetStorageStatus(pb.GetStorageStatusRequest())
    return response


def say(stub: SessionServiceStub, key: pb.ConversationKey, n: int) -> pb.Conversation:
    """One turn as the gateway does it: get (create), then update under that version."""
    current = stub.GetConversation(pb.GetConversationRequest(key=key, create=True)).conversation
    request = pb.UpdateConversationRequest(
        key=key,
        append=[user_message(f"user {n}", f"wamid.{n}"), bot_message(f"bot {n}")],
        expected_version=current.version,
    )
    request.set_state["turn"].number_value = n
    conversation: pb.Conversation = stub.UpdateConversation(request).conversation
    return conversation


def test_outage_is_served_from_memory_and_written_back(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    running = start_session(tmp_path, fresh_valkey.url, SESSION_HISTORY_LIMIT="20")
    key = new_key("outage-biz")
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            for n in range(3):
                before = say(stub, key, n)
            assert before.version == 4

            fresh_valkey.stop()
            for n in range(3, 6):
                during = say(stub, key, n)  # no error: the fallback serves
            assert during.id == before.id and during.version == 7
            outage = status(stub)
            assert outage.backend == pb.STORAGE_BACKEND_MEMORY and outage.fallback_active
            assert outage.pending_writebacks == 1 and outage.HasField("fallback_since")
            assert check(running.address, SERVICE) == "SERVING"
            assert running.metrics()["parley_session_fallback_active"] == 1

            fresh_valkey.start()  # same port and data directory: the pre-outage data is back
            assert wait_for(lambda: not status(stub).fallback_active, 15), running.process.log
            after = status(stub)
            assert after.backend == pb.STORAGE_BACKEND_REDIS
            assert after.pending_writebacks == 0 and after.writebacks_total == 1
            metrics = running.metrics()
            assert metrics["parley_session_fallback_active"] == 0
            assert metrics["parley_session_writebacks_total"] == 1

            # The whole conversation is in Redis itself, not only in this process.
            raw = redis.Redis(port=fresh_valkey.port)
            (meta_key,) = raw.scan_iter(match="conversation:{outage-biz:*}:*:meta")
            prefix = meta_key.decode().removesuffix(":meta")
            assert raw.hget(meta_key, "v") == b"7"
            assert raw.hget(meta_key, "id") == before.id.encode()
            history = [m.decode() for m in raw.lrange(prefix + ":history", 0, -1)]
            assert len(history) == 12
            assert all(f'"user {n}"' in history[2 * n] for n in range(6))
            assert raw.hget(prefix + ":state", "turn") == b"5.0"
            assert raw.ttl(meta_key) > 800

            # And the service reads it from Redis again, carrying on from version 7.
            assert say(stub, key, 6).version == 8
        warnings = [e for e in running.log_events() if "Redis unreachable" in str(e.get("event"))]
        assert len(warnings) == 1  # once per outage, not once per request
    finally:
        running.stop()


def test_fallback_off_answers_unavailable_and_not_serving(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    running = start_session(tmp_path, fresh_valkey.url, SESSION_FALLBACK="off")
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            key = new_key()
            say(stub, key, 0)
            fresh_valkey.stop()
            with pytest.raises(grpc.RpcError) as error:
                stub.UpdateConversation(
                    pb.UpdateConversationRequest(key=key, append=[user_message("x")])
                )
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis" in str(error.value.details())
            assert wait_for(lambda: check(running.address, SERVICE) == "NOT_SERVING", 10)
            assert not status(stub).fallback_active
            fresh_valkey.start()
            assert wait_for(lambda: check(running.address, SERVICE) == "SERVING", 10)
            assert say(stub, key, 1).version == 3  # the refused update changed nothing
    finally:
        running.stop()


def test_a_full_fallback_store_is_one_warning_per_outage(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """An outage with more users than SESSION_FALLBACK_MAX_CONVERSATIONS drops the oldest outage
    writes, each counted. It was also one warning per dropped write, each after a sweep of the
    whole store: the log grew by a line per message for as long as the outage lasted (thousands a
    minute on a busy replica). Now: one warning, the repeats at debug, and the total in the line
    that says Redis answers again."""
    running = start_session(
        tmp_path, fresh_valkey.url, SESSION_FALLBACK_MAX_CONVERSATIONS="5", LOG_LEVEL="INFO"
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            say(stub, new_key("full-fallback"), 0)
            fresh_valkey.stop()
            for n in range(40):  # 40 users, each an outage write, in a store of 5
                say(stub, new_key("full-fallback"), n)
            dropped = running.metrics()["parley_session_fallback_dropped_total"]
            assert dropped >= 30
            fresh_valkey.start()
            assert wait_for(lambda: not status(stub).fallback_active, 20)
        warnings = running.process.log_events("fallback store full: outage writes dropped")
        assert len(warnings) == 1, len(warnings)
        [back] = running.process.log_events("Redis answers again: serving from Redis")
        assert back["dropped"] == dropped
    finally:
        running.stop()


def resident_mb(pid: int) -> float:
    status_text = Path(f"/proc/{pid}/status").read_text()
    return int(status_text.split("VmRSS:")[1].split()[0]) / 1024


def test_the_fallback_s_copies_cost_about_what_they_hold(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """While Redis answers, the fallback keeps a copy of every conversation the replica writes,
    up to SESSION_FALLBACK_MAX_CONVERSATIONS (10,000). Each message and state value written was
    kept as orjson handed it over, in a block of at least 4 KiB: a bot conversation of ten
    messages and a list of offers (~8 KiB of content) took ~55 KiB, so a replica that had written
    10,000 conversations held ~630 MB, and the Kubernetes manifest's 256 Mi limit was reached
    after ~3,500 users (an OOM kill, the copies lost). Now ~8 KiB."""
    running = start_session(tmp_path, fresh_valkey.url)
    offer = {"price": "698.84", "carrier": "AF", "segments": ["JFK-CDG", "CDG-LCY"]}
    offers = json.dumps([offer] * 8)
    reply = "*1.* $698.84 · AF 20:40 JFK → 14:15 LCY (+1) · 12h 35m · 1 stop\n" * 5
    try:
        pid = running.process.process.pid

        async def write(count: int) -> None:
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = SessionServiceStub(channel)
                slots = asyncio.Semaphore(16)

                async def one(n: int) -> None:
                    async with slots:
                        key = new_key("mirror-size")
                        await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
                        request = pb.UpdateConversationRequest(
                            key=key,
                            append=[
                                m
                                for t in range(5)
                                for m in (
                                    user_message(f"NYC to London {t}", f"wamid.{n}.{t}"),
                                    bot_message(reply),
                                )
                            ],
                        )
                        request.set_state["results"].string_value = offers
                        await stub.UpdateConversation(request)

                await asyncio.gather(*(one(n) for n in range(count)))

        asyncio.run(write(300))  # the process's own warm-up: connections, caches
        before = resident_mb(pid)
        asyncio.run(write(2000))
        per_conversation_kib = (resident_mb(pid) - before) * 1024 / 2000
        assert per_conversation_kib < 20, per_conversation_kib
    finally:
        running.stop()


async def test_changed_on_both_sides_the_higher_version_wins(valkey: Valkey) -> None:
    """Another replica kept writing to Redis during this one's outage: Redis's newer copy stays,
    and this replica's outage writes are counted as discarded, not silently merged."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    redis_store = RedisStore(client, ttl_seconds=60, history_limit=10)
    memory = MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10)
    store = SessionStore(redis_store, memory, fallback="memory", probe_seconds=0.05)
    ours = ConversationKey("both-sides", "+15550000001", "client")
    theirs = ConversationKey("both-sides", "+15550000002", "client")
    ended = ConversationKey("both-sides", "+15550000003", "client")
    restarted = ConversationKey("both-sides", "+15550000004", "client")
    msg = encode_message("user", "hello", 0)
    try:
        for key in (ours, theirs, ended, restarted):
            await store.update(
                key, append=[msg], set_state={}, remove_state=[], expected_version=None
            )
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        # Ended during the outage; and ended then started afresh.
        assert await store.end(ended) and await store.end(restarted)
        fresh, created = await store.get(restarted, create=True)
        assert created and fresh is not None
        for key in (ours, theirs):  # served by memory: version 2, dirty
            conversation, _ = await store.update(
                key,
                append=[msg],
                set_state={"side": b'"memory"'},
                remove_state=[],
                expected_version=1,
            )
            assert conversation.version == 2
        # Meanwhile another replica wrote "theirs" twice in Redis (version 3).
        for _ in range(2):
            await redis_store.update(
                theirs,
                append=[],
                set_state={"side": b'"redis"'},
                remove_state=[],
                expected_version=None,
                new_id="x",
            )
        for _ in range(100):  # the probe finds Redis answering and writes back
            if not store.fallback_active:
                break
            await asyncio.sleep(0.05)
        assert not store.fallback_active
        mine = await redis_store.load(ours)
        other = await redis_store.load(theirs)
        assert mine is not None and mine.version == 2 and mine.state["side"] == b'"memory"'
        assert other is not None and other.version == 3 and other.state["side"] == b'"redis"'
        assert await redis_store.load(ended) is None  # the end reached Redis too
        again = await redis_store.load(restarted)
        assert again is not None and again.id == fresh.id and not again.history
        assert store.writebacks_total == 2
    finally:
        await store.close()
        await client.aclose()


def test_write_back_refused_by_a_full_redis_waits_and_loses_nothing(tmp_path: Path) -> None:
    # Redis comes back over its maxmemory: the write-back is refused (not an outage any more,
    # not a bug either). The service keeps serving from memory and writes back once Redis has
    # room again.
    policy = ("--maxmemory-policy", "noeviction")
    before_outage = Valkey(tmp_path / "valkey", None, *policy).start()
    running = start_session(tmp_path, before_outage.url)
    key = new_key("full-biz")
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            say(stub, key, 0)
            before_outage.stop()
            assert say(stub, key, 1).version == 3  # from memory

            full = Valkey(tmp_path / "valkey", before_outage.port, *policy, "--maxmemory", "1")
            full.start()
            try:
                assert wait_for(lambda: "write-back refused by Redis" in running.process.log, 10), (
                    running.process.log[-3000:]
                )
                assert status(stub).fallback_active and status(stub).pending_writebacks == 1
                assert say(stub, key, 2).version == 4  # still served, from memory

                full.client().config_set("maxmemory", 0)
                assert wait_for(lambda: not status(stub).fallback_active, 10)
                meta = next(full.client().scan_iter(match="conversation:{full-biz:*}:*:meta"))
                assert full.client().hget(meta, "v") == b"4"
                assert say(stub, key, 3).version == 5
            finally:
                full.stop()
        assert "write-back failed" not in running.process.log  # no stack trace for a refusal
    finally:
        running.stop()


async def test_write_back_never_replaces_or_ends_another_conversation(valkey: Valkey) -> None:
    """Versions restart with every conversation id. While replica A was in an outage, replica B
    ended the user's conversation and started another: A's outage end and A's outage copy of the
    old one lose to it (counted as discarded), whatever the version numbers say."""
    client_a = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    client_b = make_client(f"redis://127.0.0.1:{valkey.port}/8")

    def replica(client: RedisClient) -> SessionStore:
        return SessionStore(
            RedisStore(client, ttl_seconds=60, history_limit=10),
            MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10),
            fallback="memory",
            probe_seconds=3600,  # the test writes back itself
        )

    a, b = replica(client_a), replica(client_b)
    ended_on_a = ConversationKey("cross-id", "+15550000001", "client")
    written_on_a = ConversationKey("cross-id", "+15550000002", "client")

    async def say(store: SessionStore, key: ConversationKey, text: str) -> Conversation:
        conversation, _ = await store.update(
            key,
            append=[encode_message("user", text, 0)],
            set_state={},
            remove_state=[],
            expected_version=None,
        )
        return conversation

    try:
        for key in (ended_on_a, written_on_a):
            for n in range(3):
                old = await say(a, key, f"old {n}")
        a.enter_outage(ConnectionError("test: pretend A lost Redis"))
        assert await a.end(ended_on_a)  # A ends version 3
        await asyncio.sleep(0.002)  # what B starts below is of a later millisecond than A's end
        for n in range(2):
            await say(a, written_on_a, f"A outage {n}")  # A's copy reaches version 5
        newer = {}
        for key in (ended_on_a, written_on_a):  # through B: ended, and a new one at version 2
            assert await b.end(key)
            for n in range(2):
                newer[key] = await say(b, key, f"new via B {n}")
        discarded = metrics.WRITEBACK_DISCARDED._value.get()

        await a._write_back()

        for key in (ended_on_a, written_on_a):
            kept = await b.redis.load(key)
            assert kept is not None and kept.id == newer[key].id != old.id
            assert kept.version == 2 and kept.history == newer[key].history
        assert metrics.WRITEBACK_DISCARDED._value.get() - discarded == 2
        assert a.memory.pending == 0 and a.writebacks_total == 0
    finally:
        for store in (a, b):
            await store.close()
        for client in (client_a, client_b):
            await client.aclose()


async def test_an_outage_end_ends_the_conversation_its_replica_had_missed(
    valkey: Valkey,
) -> None:
    """Replica A held a copy of conversation X; through B the user's X was ended and Y started,
    which A never read. A, in an outage, then ended (erased) the user's conversation: its end
    named X, and the write-back, finding Y, kept it as "started after the end", so the erase
    answered 1 and the user's conversation lived on. Y was there before the end: it is ended."""
    client_a = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    client_b = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    a, b = (
        SessionStore(
            RedisStore(client, ttl_seconds=60, history_limit=10),
            MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10),
            fallback="memory",
            probe_seconds=3600,  # the test writes back itself
        )
        for client in (client_a, client_b)
    )
    key = ConversationKey("missed-by-a", "+15550000001", "client")
    update = {"append": [encode_message("user", "hello", 0)], "set_state": {}}
    update |= {"remove_state": [], "expected_version": None}
    try:
        x, _ = await a.update(key, **update)  # type: ignore[arg-type]
        assert await b.end(key)
        y, created = await b.update(key, **update)  # type: ignore[arg-type]
        assert created and y.id != x.id
        a.enter_outage(ConnectionError("test: pretend A lost Redis"))
        assert await a.end(key)  # A's copy is X's

        await a._write_back()

        assert await b.redis.load(key) is None
        assert a.memory.pending == 0
        # Y's id is kept out like X's: an outage copy of Y on another replica stays ended.
        assert await b.redis.put(y) == ("ended", 0, 0)
    finally:
        for store in (a, b):
            await store.close()
        for client in (client_a, client_b):
            await client.aclose()


async def test_an_end_keeps_out_every_copy_of_the_user_s_conversation_made_before_it(
    valkey: Valkey,
) -> None:
    """Replica B, in an outage, went on with conversation X from its copy while X expired in
    Redis; through A the user then ended (erased) X: Redis held nothing, the end kept no id
    out, and B's write-back put X, messages and state, back. The same for a conversation B
    started from memory before the end while Redis still held the old one (the end kept out
    only that one's id). Now an end keeps out every conversation of the user created before it;
    one started after it is written back as usual."""
    url = f"redis://127.0.0.1:{valkey.port}/8"
    client_a, client_b = make_client(url), make_client(url)
    a, b = (
        SessionStore(
            RedisStore(client, ttl_seconds=60, history_limit=10),
            MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10),
            fallback="memory",
            probe_seconds=3600,  # the test writes back itself
        )
        for client in (client_a, client_b)
    )
    expired = ConversationKey("erased-biz", "+15550000001", "client")
    started = ConversationKey("erased-biz", "+15550000002", "client")
    after = ConversationKey("erased-biz", "+15550000003", "client")
    update = {"append": [encode_message("user", "hello", 0)], "set_state": {}}
    update |= {"remove_state": [], "expected_version": None}
    raw = redis.Redis(port=valkey.port, db=8)
    try:
        for key in (expired, started, after):
            await b.update(key, **update)  # type: ignore[arg-type]
        b.enter_outage(ConnectionError("test: pretend B lost Redis"))
        continued, _ = await b.update(expired, **update)  # type: ignore[arg-type]
        assert continued.version == 2
        # X expires in Redis: its keys go as a TTL running out takes them.
        for name in expired.redis_keys()[:3]:
            raw.pexpire(name, 1)
        assert wait_for(lambda: not raw.exists(*expired.redis_keys()[:3]), 5)
        # B's copy of the other one expires in its memory: the user's next turn starts anew.
        b.memory.forget(started)
        _, created = await b.update(started, **update)  # type: ignore[arg-type]
        assert created
        await asyncio.sleep(0.002)  # the ends are of a later millisecond
        assert not await a.end(expired)  # Redis holds nothing for X any more
        assert await a.end(started) and await a.end(after)
        await asyncio.sleep(0.002)  # B's conversation below starts after the end
        b.memory.forget(after)
        later, created = await b.update(after, **update)  # type: ignore[arg-type]
        assert created
        discarded = metrics.WRITEBACK_DISCARDED._value.get()

        await b._write_back()

        assert await a.redis.load(expired) is None
        assert await a.redis.load(started) is None
        kept = await a.redis.load(after)
        assert kept is not None and kept.id == later.id
        assert metrics.WRITEBACK_DISCARDED._value.get() - discarded == 2
        assert b.memory.pending == 0 and b.writebacks_total == 1
        # No number in Redis for the ends: a digest of each user's key.
        members = raw.zrange(f"conversation-erased:{expired.tag}", 0, -1)
        assert members and not any(b"1555" in m for m in members)
    finally:
        raw.close()
        for store in (a, b):
            await store.close()
        for client in (client_a, client_b):
            await client.aclose()


@pytest.mark.parametrize("during", ["put", "end_written_back"])
async def test_write_back_keeps_a_conversation_started_while_its_old_one_was_written(
    valkey: Valkey, during: str
) -> None:
    """While the write-back writes conversation X (version 2) back, or another key's end, the
    user ends X and starts Y, which reaches version 2 too: X's end is written back first, then
    Y; Y is neither taken for X's written copy nor put over X."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    redis_store = RedisStore(client, ttl_seconds=60, history_limit=10)
    memory = MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10)
    store = SessionStore(redis_store, memory, fallback="memory", probe_seconds=3600)
    key = ConversationKey(f"cross-id-{during}", "+15550000001", "client")
    other = ConversationKey(f"cross-id-{during}", "+15550000002", "client")
    msg = encode_message("user", "hello", 0)
    update = {"append": [msg], "set_state": {}, "remove_state": [], "expected_version": None}
    call = getattr(redis_store, during)
    started: list[Conversation] = []

    async def call_while_the_user_starts_over(*args: Any) -> Any:
        reply = await call(*args)
        if not started:  # requests served from memory while the reply is on its way
            assert await store.end(key)
            for _ in range(2):
                fresh, _ = await store.update(key, **update)  # type: ignore[arg-type]
            started.append(fresh)
        return reply

    setattr(redis_store, during, call_while_the_user_starts_over)
    try:
        for each in (key, other):
            await store.update(each, **update)  # type: ignore[arg-type]
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        assert await store.end(other)
        x, _ = await store.update(key, **update)  # type: ignore[arg-type]
        assert x.version == 2

        await store._write_back()

        (y,) = started
        assert y.id != x.id and y.version == x.version
        stored = await redis_store.load(key)
        assert stored is not None and (stored.id, stored.version) == (y.id, 2)
        assert await redis_store.load(other) is None
        assert store.memory.pending == 0
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("last", ["A", "B"])
def test_an_ended_conversation_never_comes_back_from_another_replica_s_outage(
    fresh_valkey: Valkey, tmp_path: Path, last: str
) -> None:
    """Two replicas on one Redis. EndConversation is how a user's conversation is erased, and
    replica B's outage copy of it came back: written back by B's recovery after A had ended it
    in Redis (B alone lost Redis), and whichever recovered first when both had (A's outage end
    then lost to B's higher version, or came first and B's copy was put after it: ``last`` is
    the replica held until the other has written back). Now an end leaves the ended id in Redis,
    no write-back puts that id again, and an outage end ends that id whatever its version."""
    a = start_session(tmp_path, fresh_valkey.url)
    b = start_session(tmp_path, fresh_valkey.url)
    raw = redis.Redis(port=fresh_valkey.port)

    def in_redis(key: pb.ConversationKey) -> bytes | None:
        """The id of the conversation Redis holds for ``key``."""
        meta = ConversationKey(key.business_id, key.user_id, "client").redis_keys()[0]
        held: bytes | None = raw.hget(meta, "id")
        return held

    try:
        with grpc.insecure_channel(a.address) as to_a, grpc.insecure_channel(b.address) as to_b:
            on_a, on_b = SessionServiceStub(to_a), SessionServiceStub(to_b)
            alone, both = new_key("erase-biz"), new_key("erase-biz")
            for key in (alone, both):
                say(on_b, key, 0)
                on_a.GetConversation(pb.GetConversationRequest(key=key))  # A has a copy too

            # B loses Redis, keeps the conversation going, and is held (SIGSTOP) until A, on
            # Redis again (its readiness probe may have seen the outage too), has ended it there.
            fresh_valkey.stop()
            assert say(on_b, alone, 1).version == 3
            b.process.signal(signal.SIGSTOP)
            try:
                fresh_valkey.start()
                assert wait_for(lambda: not status(on_a).fallback_active, 15)
                assert on_a.EndConversation(pb.EndConversationRequest(key=alone)).ended
            finally:
                b.process.signal(signal.SIGCONT)
            assert wait_for(lambda: not status(on_b).fallback_active, 15), b.process.log
            assert in_redis(alone) is None

            # Both lose Redis: A ends the conversation from its copy, B writes to its own.
            fresh_valkey.stop()
            assert on_a.EndConversation(pb.EndConversationRequest(key=both)).ended
            say(on_b, both, 1)
            say(on_b, both, 2)
            assert status(on_a).fallback_active and status(on_b).fallback_active
            held, first = (a, on_b) if last == "A" else (b, on_a)
            held.process.signal(signal.SIGSTOP)
            try:
                fresh_valkey.start()
                assert wait_for(lambda: not status(first).fallback_active, 15)
            finally:
                held.process.signal(signal.SIGCONT)
            for stub in (on_a, on_b):
                assert wait_for(lambda s=stub: not status(s).fallback_active, 15)
            assert in_redis(both) is None
            # B's outage copies that lost: the one A ended in Redis, and this one if A's end
            # reached Redis first (else B's copy was written, then ended by A's end).
            discarded = b.metrics()["parley_session_writeback_discarded_total"]
            assert discarded == (2 if last == "B" else 1)

            # The user starts afresh on either replica: a new conversation, written as usual.
            for key in (alone, both):
                fresh = say(on_b, key, 3)
                assert fresh.version == 2 and in_redis(key) == fresh.id.encode()
    finally:
        raw.close()
        a.stop()
        b.stop()


def test_two_outage_copies_at_the_same_version_lose_in_the_open(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """Both replicas lose Redis and each serves one turn of the same conversation from its own
    copy: two different conversations at one version. The first written back stays; the other
    was dropped as if Redis already held it (a "tie"): the user's turn lost with no warning and
    no count. Now a tie with other content is counted and logged as discarded like a higher
    version; only the very same copy (a write-back whose answer was lost) goes quietly."""
    a = start_session(tmp_path, fresh_valkey.url)
    b = start_session(tmp_path, fresh_valkey.url)
    replicas = (a, b)
    try:
        with grpc.insecure_channel(a.address) as to_a, grpc.insecure_channel(b.address) as to_b:
            stubs = (SessionServiceStub(to_a), SessionServiceStub(to_b))
            key = new_key("tie-biz")
            say(stubs[0], key, 0)
            stubs[1].GetConversation(pb.GetConversationRequest(key=key))  # B has a copy too
            fresh_valkey.stop()
            turns = [say(stub, key, n) for n, stub in enumerate(stubs, start=1)]
            assert turns[0].version == turns[1].version == 3 and turns[0].id == turns[1].id
            fresh_valkey.start()
            for stub in stubs:
                assert wait_for(lambda s=stub: not status(s).fallback_active, 15)
            stored = say(stubs[0], key, 3)
        discarded = [r.metrics()["parley_session_writeback_discarded_total"] for r in replicas]
        written = [r.metrics()["parley_session_writebacks_total"] for r in replicas]
        assert sorted(discarded) == [0, 1] and sorted(written) == [0, 1]
        loser = replicas[discarded.index(1)]
        [warning] = loser.process.log_events(
            "outage writes discarded: Redis holds another copy of this version"
        )
        assert warning["ours"] == warning["theirs"] == 3
        winner = turns[written.index(1)]
        assert stored.history[-4].content == winner.history[-2].content  # the turn kept
    finally:
        for running in replicas:
            running.stop()


async def test_a_write_made_while_its_expired_copy_is_written_back_is_kept(
    valkey: Valkey,
) -> None:
    """The write-back found an outage copy expired on Redis's clock (it expired during the
    call, or the replica's clock is behind Redis's) and forgot the key, with whatever the user
    had written to it meanwhile: a conversation started afresh (or the old one continued while
    this replica still found it live) was never written back."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    redis_store = RedisStore(client, ttl_seconds=2, history_limit=10)
    memory = MemoryStore(max_conversations=10, ttl_seconds=2, history_limit=10)
    store = SessionStore(redis_store, memory, fallback="memory", probe_seconds=3600)
    key = ConversationKey("expired-meanwhile", "+15550000001", "client")
    update = {"append": [encode_message("user", "hello", 0)], "set_state": {}}
    update |= {"remove_state": [], "expected_version": None}
    put = redis_store.put
    started: list[Conversation] = []

    async def put_once_the_copy_expired(conversation: Conversation, **kw: Any) -> Any:
        if not started:  # the copy expires and the user writes while the call is on its way
            await asyncio.sleep(max(0, conversation.expire_ms / 1000 - time.time()) + 0.05)
            fresh, created = await store.update(key, **update)  # type: ignore[arg-type]
            assert created
            started.append(fresh)
        return await put(conversation, **kw)

    redis_store.put = put_once_the_copy_expired
    try:
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        await store.update(key, **update)  # type: ignore[arg-type]

        assert await store._write_back() == 1

        (fresh,) = started
        stored = await redis_store.load(key)
        assert stored is not None and (stored.id, stored.version) == (fresh.id, 1)
        assert store.memory.pending == 0
    finally:
        await store.close()
        await client.aclose()


def test_an_end_that_cannot_know_the_conversation_is_unavailable_not_ended_false(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """During an outage, a replica that holds no copy of the conversation answered an end with
    ``ended: false``, "there was none", while Redis (which it cannot reach) held it: an erase
    reported ``conversations: 0`` and the conversation lived on. Now it answers UNAVAILABLE
    (the gateway's channel retries that on another replica; its erase answers 503)."""
    a = start_session(tmp_path, fresh_valkey.url)
    b = start_session(tmp_path, fresh_valkey.url)
    try:
        with grpc.insecure_channel(a.address) as to_a, grpc.insecure_channel(b.address) as to_b:
            on_a, on_b = SessionServiceStub(to_a), SessionServiceStub(to_b)
            key, held = new_key("unknown-end"), new_key("unknown-end")
            say(on_b, key, 0)  # A never saw this one
            say(on_a, held, 0)
            fresh_valkey.stop()
            with pytest.raises(grpc.RpcError) as error:
                on_a.EndConversation(pb.EndConversationRequest(key=key))
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no copy" in str(error.value.details())
            assert status(on_a).fallback_active  # served by the fallback, which cannot tell
            assert on_a.EndConversation(pb.EndConversationRequest(key=held)).ended
            fresh_valkey.start()
            for stub in (on_a, on_b):  # B's readiness probe may have seen the outage too
                assert wait_for(lambda s=stub: not status(s).fallback_active, 15)
            assert on_a.EndConversation(pb.EndConversationRequest(key=key)).ended
            for ended in (key, held):
                with pytest.raises(grpc.RpcError) as missing:
                    on_b.GetConversation(pb.GetConversationRequest(key=ended))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        a.stop()
        b.stop()


async def test_the_write_back_keeps_several_puts_in_flight_and_stops_at_a_failure(
    fresh_valkey: Valkey,
) -> None:
    """The write-back put one conversation at a time: under load, a replica whose Redis came
    back kept serving from memory for 30 s (its users' writes dirtying conversations about as
    fast as it wrote them back, 56,635 puts for ~10,000 conversations), every conversation it
    served forked from the other replicas' on Redis, and outage writes went on being dropped from
    the full store. Now several are in flight at once (3 s in the same run), and Redis gone again
    is found out by the calls in flight: none starts after a failure."""
    client = make_client(fresh_valkey.url)
    redis_store = RedisStore(client, ttl_seconds=60, history_limit=10)
    memory = MemoryStore(max_conversations=100, ttl_seconds=60, history_limit=10)
    store = SessionStore(
        redis_store, memory, fallback="memory", probe_seconds=3600, write_back_concurrency=8
    )
    keys = [ConversationKey("in-flight", f"+1555000{n:04d}", "client") for n in range(40)]
    update = {"append": [encode_message("user", "hello", 0)], "set_state": {}}
    update |= {"remove_state": [], "expected_version": None}
    put = redis_store.put
    in_flight, most, started, stopped = 0, 0, 0, False

    async def counted_put(conversation: Conversation, **kw: Any) -> Any:
        nonlocal in_flight, most, started, stopped
        started += 1
        if started == 5 and not stopped:
            fresh_valkey.stop()  # Redis goes away again mid-write-back
            stopped = True
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await put(conversation, **kw)
        finally:
            in_flight -= 1

    redis_store.put = counted_put  # type: ignore[method-assign]
    try:
        await store.readiness()  # Redis seen
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        for key in keys:
            await store.update(key, **update)  # type: ignore[arg-type]

        with pytest.raises(redis.exceptions.ConnectionError):
            await store._write_back()
        assert started <= 8 + 4  # those in flight when it went, and none after
        fresh_valkey.start()
        await store._write_back()
        assert most == 8 and memory.pending == 0
        for key in keys:
            stored = await redis_store.load(key)
            assert stored is not None and stored.version == 1
    finally:
        await store.close()
        await client.aclose()


def test_an_outage_counts_as_expired_in_memory_only_what_was_written_there(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """The fallback keeps a copy of every conversation the replica served, expired or not, and
    the first sweep of an outage counted every expired copy in
    ``parley_session_conversations_expired_total{store="memory"}``: thousands at once on a busy
    replica, each a conversation that had expired in Redis (counted there, as Redis's to count).
    Now only outage writes that expire in memory are counted there."""
    running = start_session(tmp_path, fresh_valkey.url, REDIS_TTL_SECONDS="1")
    memory_expired = 'parley_session_conversations_expired_total{store="memory"}'
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            for _ in range(5):  # copies kept by the fallback, then expired in Redis
                stub.GetConversation(pb.GetConversationRequest(key=new_key("swept"), create=True))
            time.sleep(1.1)
            fresh_valkey.stop()
            written = stub.GetConversation(
                pb.GetConversationRequest(key=new_key("swept"), create=True)
            )
            assert written.created and status(stub).fallback_active
            # The probe sweeps every 0.2 s; the outage write expires after 1 s and is counted.
            assert wait_for(lambda: running.metrics().get(memory_expired, 0) >= 1, 10)
            assert running.metrics()[memory_expired] == 1
    finally:
        running.stop()


def test_a_replica_stopped_after_redis_returned_writes_back_before_it_goes(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """A replica stopped (a roll-out, a scale-down) after Redis had come back but before its
    next probe, or in the middle of its write-back, dropped its outage writes with a warning.
    Now it writes them back before it goes, when Redis answers."""
    running = start_session(tmp_path, fresh_valkey.url, SESSION_FALLBACK_PROBE_SECONDS="60")
    key = new_key("last-write-back")
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            say(stub, key, 0)
            fresh_valkey.stop()
            during = say(stub, key, 1)
            assert status(stub).pending_writebacks == 1
            fresh_valkey.start()  # the next probe is a minute away
        running.process.signal(signal.SIGTERM)
        assert running.process.wait() == 0
        raw = redis.Redis(port=fresh_valkey.port)
        meta = ConversationKey(key.business_id, key.user_id, "client").redis_keys()[0]
        assert raw.hget(meta, "v") == str(during.version).encode(), running.process.log[-2000:]
        assert not running.process.log_events(
            "stopping during a Redis outage: outage writes not written back are lost"
        )
        raw.close()
    finally:
        running.stop()


async def test_an_outage_write_found_expired_by_a_call_is_counted_as_expired(
    valkey: Valkey,
) -> None:
    """An outage write that expired in memory was counted in
    ``parley_session_conversations_expired_total{store="memory"}`` only when the probe's sweep
    found it: one that a call found first (the user wrote again after it expired, so the call
    started a new conversation in its place), or the write-back did, was never counted."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    redis_store = RedisStore(client, ttl_seconds=1, history_limit=10)
    memory = MemoryStore(max_conversations=10, ttl_seconds=1, history_limit=10)
    store = SessionStore(redis_store, memory, fallback="memory", probe_seconds=3600)
    key = ConversationKey("expired-found-by-a-call", "+15550000001", "client")
    expired = metrics.EXPIRED.labels("memory")
    before = expired._value.get()
    try:
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        first, created = await store.get(key, create=True)
        assert first is not None and created
        await asyncio.sleep(max(0, first.expire_ms / 1000 - time.time()) + 0.05)
        again, created = await store.get(key, create=True)  # before any sweep
        assert again is not None and created and again.id != first.id
        store._count_memory_expiry()  # what the probe does next
        assert expired._value.get() - before == 1
    finally:
        await store.close()
        await client.aclose()


async def test_index_entries_a_write_back_prunes_are_counted_as_expired(valkey: Valkey) -> None:
    """Every write to a shard prunes its expired index entries, and the write counts them in
    ``parley_session_conversations_expired_total{store="redis"}``: a write-back's too. A
    write-back, often the first write to a shard after an outage as long as the TTL, pruned
    them and counted nothing, so they were never counted."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")
    redis_store = RedisStore(client, ttl_seconds=1, history_limit=10)
    memory = MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10)
    store = SessionStore(redis_store, memory, fallback="memory", probe_seconds=3600)
    users = (
        ConversationKey("pruned-by-write-back", f"+1555000{n:04d}", "client") for n in range(99)
    )
    gone = next(users)
    written = next(key for key in users if key.shard == gone.shard)
    expired = metrics.EXPIRED.labels("redis")
    update = {"append": [encode_message("user", "hello", 0)], "set_state": {}}
    update |= {"remove_state": [], "expected_version": None}
    try:
        await store.readiness()  # Redis seen
        first, _ = await store.get(gone, create=True)
        assert first is not None
        store.enter_outage(ConnectionError("test: pretend Redis went away"))
        await store.update(written, **update)  # type: ignore[arg-type]
        await asyncio.sleep(max(0, first.expire_ms / 1000 - time.time()) + 0.05)
        before = expired._value.get()

        assert await store._write_back() == 1

        assert await client.zscore(gone.redis_keys()[3], gone.member) is None  # pruned
        assert expired._value.get() - before == 1
    finally:
        await store.close()
        await client.aclose()


async def test_a_read_or_touch_that_cannot_know_the_conversation_is_unavailable(
    valkey: Valkey,
) -> None:
    """During an outage, a replica that holds no copy of a conversation answered a get without
    ``create`` and a touch NOT_FOUND, "no live conversation for this key", while Redis (which
    it cannot reach) held it live: the admin API said the user had none, and a caller keeping it
    alive took it for gone. Now it answers UNAVAILABLE, as an end does (the channel's retry may
    reach a replica that knows); a copy it holds, or an end it made, is still answered."""
    client = make_client(f"redis://127.0.0.1:{valkey.port}/8")

    def replica() -> SessionStore:
        redis_store = RedisStore(client, ttl_seconds=60, history_limit=10)
        memory = MemoryStore(max_conversations=10, ttl_seconds=60, history_limit=10)
        return SessionStore(redis_store, memory, fallback="memory", probe_seconds=3600)

    a, b = replica(), replica()
    unknown, held, ended = (
        ConversationKey("cannot-know", f"+155500000{n}", "client") for n in range(3)
    )
    try:
        for key in (unknown, held, ended):  # B made all three; A has seen two
            await b.get(key, create=True)
        for key in (held, ended):
            await a.get(key, create=False)
        a.enter_outage(ConnectionError("test: pretend Redis went away"))
        assert await a.end(ended)

        with pytest.raises(Unavailable):
            await a.get(unknown, create=False)
        with pytest.raises(Unavailable):
            await a.touch(unknown)
        conversation, _ = await a.get(held, create=False)
        assert conversation is not None and await a.touch(held) is not None
        assert await a.get(ended, create=False) == (None, False)  # its own end: none here
        assert await a.touch(ended) is None
    finally:
        await a.close()
        await b.close()
        await client.aclose()
