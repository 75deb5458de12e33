"""SessionService over real gRPC against a real Valkey: data, versions, TTL, listing, input."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import struct_pb2

from parley.session.v1 import session_pb2 as pb
from parley.session.v1.session_pb2_grpc import SessionServiceStub
from services.common.clients import make_channel
from services.common.errors import error_info, field_violations
from services.common.struct_values import python_to_value
from services.session.convert import MAX_APPEND, MAX_CONTENT, MAX_PROVIDER_ID, MAX_STATE_VALUE_BYTES
from services.session.model import MAX_STATE_BYTES, ConversationKey, erased_key
from services.session.settings import SessionSettings
from tests.session.conftest import (
    SERVICE,
    SESSION_DB,
    Running,
    bot_message,
    new_key,
    start_session,
    user_message,
)
from tests.support.processes import Valkey, wait_for

Stub = SessionServiceStub


def redis_db(valkey: Valkey) -> redis.Redis:
    return redis.Redis(port=valkey.port, db=SESSION_DB)


def timed_message(seconds: int, nanos: int = 0) -> pb.Message:
    message = user_message("at a time")
    message.time.seconds, message.time.nanos = seconds, nanos
    return message


async def test_get_creates_once_and_then_returns_the_same_conversation(stub: Stub) -> None:
    key = new_key()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConversation(pb.GetConversationRequest(key=key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    first = await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
    assert first.created
    conversation = first.conversation
    assert uuid.UUID(conversation.id)
    assert conversation.version == 1
    assert conversation.key == key
    assert not conversation.history and not conversation.state
    lifetime = conversation.expire_time.ToMilliseconds() - conversation.update_time.ToMilliseconds()
    assert lifetime == 900_000

    again = await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
    assert not again.created
    assert again.conversation.id == conversation.id
    assert again.conversation.version == 1


async def test_update_appends_trims_and_patches_state_in_redis(stub: Stub, valkey: Valkey) -> None:
    key = new_key(business="acme:{eu}")  # hash-tag and separator characters in an id
    created = await stub.UpdateConversation(
        pb.UpdateConversationRequest(key=key, append=[user_message("m0", "wamid.0")])
    )
    assert created.created and created.conversation.version == 1
    for n in range(1, 12):
        request = pb.UpdateConversationRequest(
            key=key, append=[user_message(f"m{n}"), bot_message(f"r{n}")]
        )
        request.set_state["step"].number_value = n
        request.set_state["slots"].struct_value.update({"from": "TLV", "pax": [1, {"a": None}]})
        request.set_state["gone"].bool_value = True
        request.remove_state_keys.append("gone")
        response = await stub.UpdateConversation(request)
    conversation = response.conversation
    assert conversation.version == 12
    # The newest 10 of 23 messages, oldest first.
    contents = [m.content for m in conversation.history]
    assert contents == ["m7", "r7", "m8", "r8", "m9", "r9", "m10", "r10", "m11", "r11"]
    assert [m.role for m in conversation.history[:2]] == [
        pb.MESSAGE_ROLE_USER,
        pb.MESSAGE_ROLE_ASSISTANT,
    ]
    assert set(conversation.state) == {"step", "slots"}
    assert conversation.state["step"].number_value == 11
    slots = conversation.state["slots"].struct_value
    assert slots["from"] == "TLV" and slots["pax"][1]["a"] is None

    # What Redis holds: three keys in one hash tag, TTL ~900 s, and the index entry.
    db = redis_db(valkey)
    keys = sorted(k.decode() for k in db.scan_iter(match="conversation:{acme%3A%7Beu%7D:*"))
    assert len(keys) == 3, keys
    assert {k.rsplit(":", 1)[1] for k in keys} == {"history", "meta", "state"}
    tags = {k[k.index("{") : k.index("}") + 1] for k in keys}
    assert len(tags) == 1
    slots_of = {db.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
    index = f"conversation-index:{tags.pop()}"
    slots_of.add(db.execute_command("CLUSTER", "KEYSLOT", index))
    assert len(slots_of) == 1  # the index shard shares the conversation's slot
    for k in keys:
        assert 895 <= db.ttl(k) <= 900
    assert db.llen(keys[0]) == 10
    # The index outlives its newest entry (≤ 900 s) by at least a TTL, extended once per TTL.
    assert 2 * 900 - 5 <= db.ttl(index) <= 3 * 900
    assert db.zscore(index, f"client:{key.user_id}") == pytest.approx(
        conversation.expire_time.ToMilliseconds(), abs=1
    )

    fetched = await stub.GetConversation(pb.GetConversationRequest(key=key))
    assert fetched.conversation == conversation


async def test_version_conflict_is_aborted_with_the_current_version_and_changes_nothing(
    stub: Stub, session_service: Running
) -> None:
    key = new_key()
    await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(key=key, append=[user_message("hi")], expected_version=1)
    )
    conflicts_before = session_service.metrics().get("parley_session_version_conflicts_total", 0)
    for stale in (1, 0, 5):
        request = pb.UpdateConversationRequest(
            key=key, append=[user_message("lost?")], expected_version=stale
        )
        request.set_state["x"].string_value = "y"
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await stub.UpdateConversation(request)
        assert conflict.value.code() == grpc.StatusCode.ABORTED
        info = error_info(conflict.value)  # type: ignore[arg-type]
        assert info is not None and info.metadata["current_version"] == "2"
    after = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert after.version == 2
    assert [m.content for m in after.history] == ["hi"]
    assert not after.state
    assert (
        session_service.metrics()["parley_session_version_conflicts_total"] == conflicts_before + 3
    )


async def test_expected_version_zero_creates_only_when_none_is_live(stub: Stub) -> None:
    key = new_key(role=pb.CONVERSATION_ROLE_ADMIN)
    made = await stub.UpdateConversation(
        pb.UpdateConversationRequest(key=key, append=[user_message("a")], expected_version=0)
    )
    assert made.created and made.conversation.version == 1
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.UpdateConversation(pb.UpdateConversationRequest(key=key, expected_version=0))
    assert again.value.code() == grpc.StatusCode.ABORTED


async def test_touch_restarts_the_ttl_and_end_deletes(stub: Stub, valkey: Valkey) -> None:
    key = new_key()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.TouchConversation(pb.TouchConversationRequest(key=key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stub.UpdateConversation(
        pb.UpdateConversationRequest(key=key, append=[user_message("a")])
    )
    db = redis_db(valkey)
    prefix = f"conversation:{{biz:*}}:client:{key.user_id}:"
    keys = list(db.scan_iter(match=prefix + "*"))
    assert {k.rsplit(b":", 1)[1] for k in keys} == {b"meta", b"history"}  # no state yet
    for k in keys:
        db.expire(k, 30)
    touched = await stub.TouchConversation(pb.TouchConversationRequest(key=key))
    assert touched.expire_time.ToMilliseconds() > created.conversation.expire_time.ToMilliseconds()
    assert all(db.ttl(k) > 800 for k in keys)
    after = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert after.version == created.conversation.version  # a touch is not a write

    ended = await stub.EndConversation(pb.EndConversationRequest(key=key))
    assert ended.ended
    assert not list(db.scan_iter(match=prefix + "*"))
    assert not (await stub.EndConversation(pb.EndConversationRequest(key=key))).ended
    fresh = await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
    assert fresh.created and fresh.conversation.id != created.conversation.id


async def list_all(stub: Stub, business: str, page_size: int, role: int = 0) -> list[Any]:
    found, token, pages = [], "", 0
    while True:
        page = await stub.ListConversations(
            pb.ListConversationsRequest(
                business_id=business, page_size=page_size, page_token=token, role=role
            )
        )
        assert len(page.conversations) <= page_size
        found.extend(page.conversations)
        token, pages = page.next_page_token, pages + 1
        if not token:
            return found
        assert pages < 100


async def test_list_pages_through_one_business_only(stub: Stub) -> None:
    business = f"lister-{uuid.uuid4().hex[:8]}"
    keys = [new_key(business) for _ in range(23)] + [
        new_key(business, pb.CONVERSATION_ROLE_ADMIN) for _ in range(4)
    ]
    await asyncio.gather(
        *(
            stub.UpdateConversation(
                pb.UpdateConversationRequest(key=k, append=[user_message("x"), bot_message("y")])
            )
            for k in keys
        )
    )
    await stub.GetConversation(pb.GetConversationRequest(key=new_key("other"), create=True))

    found = await list_all(stub, business, 5)
    assert sorted(c.key.user_id for c in found) == sorted(k.user_id for k in keys)
    assert all(c.message_count == 2 and c.version == 1 for c in found)
    admins = await list_all(stub, business, 3, pb.CONVERSATION_ROLE_ADMIN)
    assert sorted(c.key.user_id for c in admins) == sorted(k.user_id for k in keys[23:])

    await stub.EndConversation(pb.EndConversationRequest(key=keys[0]))
    remaining = await list_all(stub, business, 50)
    assert keys[0].user_id not in {c.key.user_id for c in remaining}
    assert len(remaining) == 26


async def test_a_page_token_continues_only_the_listing_it_came_from(stub: Stub) -> None:
    """(Was a bug: a token was a bare position in the index, taken with any business and
    role: another listing's token silently skipped that listing's first shards.)"""
    business, other = (f"paged-{uuid.uuid4().hex[:8]}" for _ in range(2))
    keys = [new_key(business) for _ in range(6)]
    await asyncio.gather(
        *(stub.GetConversation(pb.GetConversationRequest(key=k, create=True)) for k in keys)
    )
    first = await stub.ListConversations(
        pb.ListConversationsRequest(business_id=business, page_size=2)
    )
    token = first.next_page_token
    assert token
    for business_id, role in ((other, 0), (business, pb.CONVERSATION_ROLE_CLIENT)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListConversations(
                pb.ListConversationsRequest(business_id=business_id, role=role, page_token=token)
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(error.value)) == {"page_token"}  # type: ignore[arg-type]
    # Another page size is the same listing (AIP-158): the rest follows.
    rest = await stub.ListConversations(
        pb.ListConversationsRequest(business_id=business, page_size=50, page_token=token)
    )
    seen = [c.key.user_id for c in [*first.conversations, *rest.conversations]]
    assert sorted(seen) == sorted(k.user_id for k in keys)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.GetConversationRequest(), {"key"}),
        (
            pb.GetConversationRequest(key=pb.ConversationKey(user_id="u", role=1)),
            {"key.business_id"},
        ),
        (
            pb.GetConversationRequest(
                key=pb.ConversationKey(business_id="b", user_id="u" * 129, role=0)
            ),
            {"key.user_id", "key.role"},
        ),
        (
            pb.GetConversationRequest(
                key=pb.ConversationKey(business_id="b\n", user_id="u", role=2)
            ),
            {"key.business_id"},
        ),
        (
            pb.UpdateConversationRequest(
                key=new_key(), append=[user_message("x" * 4097), pb.Message(content="no role")]
            ),
            {"append[0].content", "append[1].role"},
        ),
        (
            pb.UpdateConversationRequest(key=new_key(), append=[user_message("x")] * 51),
            {"append"},
        ),
        (pb.UpdateConversationRequest(key=new_key(), expected_version=-1), {"expected_version"}),
        (  # past Timestamp's range (9999), and before 1970, which export / import cannot carry
            pb.UpdateConversationRequest(
                key=new_key(),
                append=[
                    timed_message(253_402_300_800),
                    timed_message(0, nanos=-1),
                    timed_message(-1),
                    timed_message(253_402_300_799),
                ],
            ),
            {"append[0].time", "append[1].time", "append[2].time"},
        ),
        (
            pb.UpdateConversationRequest(key=new_key(), remove_state_keys=[""]),
            {"remove_state_keys[0]"},
        ),
        (  # too many changes: named by the fields that hold them
            pb.UpdateConversationRequest(key=new_key(), remove_state_keys=["k"] * 101),
            {"remove_state_keys"},
        ),
        (
            pb.UpdateConversationRequest(
                key=new_key(),
                set_state={f"s{n}": struct_pb2.Value(bool_value=True) for n in range(60)},
                remove_state_keys=["k"] * 41,
            ),
            {"set_state", "remove_state_keys"},
        ),
        (pb.ListConversationsRequest(business_id="", page_size=501), {"business_id", "page_size"}),
        (pb.ListConversationsRequest(business_id="b", page_token="not-ours"), {"page_token"}),
        (pb.ListConversationsRequest(business_id="b", role=9), {"role"}),
        (
            pb.TouchConversationRequest(key=pb.ConversationKey(business_id="b", user_id="u")),
            {"key.role"},
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, request_: Any, fields: set[str]
) -> None:
    method = {
        pb.GetConversationRequest: stub.GetConversation,
        pb.UpdateConversationRequest: stub.UpdateConversation,
        pb.ListConversationsRequest: stub.ListConversations,
        pb.TouchConversationRequest: stub.TouchConversation,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await method(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == fields  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_",
    [
        pb.UpdateConversationRequest(  # no role, too long: 100 violations
            key=new_key(), append=[pb.Message(content="x" * 4097)] * MAX_APPEND
        ),
        pb.UpdateConversationRequest(  # 100 keys too long, each named in its field
            key=new_key(),
            set_state={
                f"{n:03}" + "é" * 300: struct_pb2.Value(bool_value=True) for n in range(100)
            },
        ),
    ],
)
async def test_a_request_with_a_hundred_bad_fields_is_invalid_argument_naming_them(
    stub: Stub, request_: pb.UpdateConversationRequest
) -> None:
    """(Was a bug: every violation went into the status, which travels in the reply's
    trailers; past the client's 16 KiB limit the call failed as RESOURCE_EXHAUSTED, *received
    metadata size exceeds hard limit*, naming nothing.)"""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UpdateConversation(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    named = field_violations(error.value)  # type: ignore[arg-type]
    assert named and set(named) <= {
        f"append[{i}].{f}" for i in range(MAX_APPEND) for f in ("role", "content")
    } | {f"set_state[{n:03}" + "é" * 37 + "]" for n in range(100)}
    assert "more" in (error.value.details() or "")


async def test_state_value_without_a_kind_is_refused(stub: Stub) -> None:
    request = pb.UpdateConversationRequest(key=new_key())
    request.set_state["empty"].Clear()
    request.set_state["nan"].number_value = float("nan")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UpdateConversation(request)
    assert set(field_violations(error.value)) == {"set_state[empty]", "set_state[nan]"}  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConversation(pb.GetConversationRequest(key=request.key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was written


def nested(depth: int, container: str, inside: object = 1) -> object:
    """``inside`` in ``depth`` JSON lists (or objects)."""
    for _ in range(depth):
        inside = [inside] if container == "list" else {"a": inside}
    return inside


def as_value(data: object) -> struct_pb2.Value:
    value = struct_pb2.Value()
    python_to_value(data, value)
    return value


async def test_a_state_value_nested_deeper_than_a_reply_can_carry_is_refused_unwritten(
    stub: Stub,
) -> None:
    # protobuf reads 100 levels. A request nests a state value 3 deep, a reply 4, and each JSON
    # list in it takes 2 more, each object 3: a value at 97 levels (a list 49 deep) parsed as a
    # request but not as a reply. It was written, and every later get and update of the
    # conversation failed (INTERNAL, "Exception deserializing response") until it expired.
    key = new_key()
    deepest = pb.UpdateConversationRequest(key=key, append=[user_message("kept")])
    deepest.set_state["plan"].CopyFrom(as_value(nested(48, "list")))
    deepest.set_state["slots"].CopyFrom(as_value(nested(32, "object")))
    deepest.set_state["mixed"].CopyFrom(as_value(nested(30, "object", nested(3, "list"))))
    await stub.UpdateConversation(deepest)
    for too_deep in (nested(49, "list"), nested(31, "object", nested(2, "list"))):
        request = pb.UpdateConversationRequest(key=key, append=[user_message("lost")])
        request.set_state["too_deep"].CopyFrom(as_value(too_deep))
        request.set_state["fine"].number_value = 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateConversation(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(refused.value)) == {"set_state[too_deep]"}  # type: ignore[arg-type]
    got = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert got.version == 1 and set(got.state) == {"plan", "slots", "mixed"}  # nothing written
    assert [m.content for m in got.history] == ["kept"]
    assert got.state["plan"] == as_value(nested(48, "list"))


async def test_a_state_past_its_bounds_is_failed_precondition_and_the_conversation_lives(
    stub: Stub,
) -> None:
    # Updates each within the per-update checks (100 keys of 32 KiB) would, unbounded, grow a
    # conversation past gRPC's 4 MiB reply, and every later get of it would fail.
    key = new_key()
    first = pb.UpdateConversationRequest(key=key)
    for n in range(30):
        first.set_state[f"slot{n}"].string_value = "x" * 32_000
    await stub.UpdateConversation(first)
    more = pb.UpdateConversationRequest(key=key, append=[user_message("lost")])
    for n in range(30):
        more.set_state[f"more{n}"].string_value = "x" * 32_000
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UpdateConversation(more)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "remove keys first" in (refused.value.details() or "")
    got = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert got.version == 1 and len(got.state) == 30 and not got.history  # nothing written


async def test_a_basic_view_answers_without_history_or_state(stub: Stub) -> None:
    key = new_key()
    request = pb.UpdateConversationRequest(
        key=key, append=[user_message("hello")], view=pb.CONVERSATION_VIEW_BASIC
    )
    request.set_state["step"].number_value = 1
    basic = (await stub.UpdateConversation(request)).conversation
    assert basic.version == 1 and basic.id and basic.key == key and basic.expire_time.seconds
    assert not basic.history and not basic.state
    full = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert [m.content for m in full.history] == ["hello"] and full.state["step"].number_value == 1


async def test_fifty_concurrent_updates_with_retry_lose_nothing(stub: Stub) -> None:
    """The gateway's flow: get (create), then update under the version read, retry on ABORTED."""
    key = new_key()
    retries = 0

    async def writer(n: int) -> None:
        nonlocal retries
        conversation = (
            await stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
        ).conversation
        while True:
            request = pb.UpdateConversationRequest(
                key=key, append=[user_message(f"msg {n}")], expected_version=conversation.version
            )
            # A read-modify-write counter: a lost update would show as a short count.
            count = conversation.state["count"].number_value if "count" in conversation.state else 0
            request.set_state["count"].number_value = count + 1
            request.set_state[f"seen {n}"].bool_value = True
            try:
                await stub.UpdateConversation(request)
                return
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.ABORTED
                retries += 1
                conversation = (
                    await stub.GetConversation(pb.GetConversationRequest(key=key))
                ).conversation

    await asyncio.gather(*(writer(n) for n in range(50)))
    final = (await stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert final.version == 51  # created at 1, then exactly one increment per message
    assert final.state["count"].number_value == 50
    assert {name for name in final.state if name.startswith("seen ")} == {
        f"seen {n}" for n in range(50)
    }
    assert len(final.history) == 10  # the limit; each is a distinct message of the 50
    assert len({m.content for m in final.history}) == 10
    assert retries > 0  # the writers really did race


def test_expired_conversation_is_gone_and_the_next_get_creates_anew(
    session_redis_url: str, tmp_path: Any
) -> None:
    running = start_session(tmp_path, session_redis_url, REDIS_TTL_SECONDS="1")
    try:
        with grpc.insecure_channel(running.address) as channel:
            sync_stub = SessionServiceStub(channel)
            key = new_key("ttl-biz")
            first = sync_stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
            time.sleep(1.1)
            listed = sync_stub.ListConversations(pb.ListConversationsRequest(business_id="ttl-biz"))
            assert not listed.conversations
            second = sync_stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
            assert second.created
            assert second.conversation.id != first.conversation.id
            # The write found the old index entry expired, pruned it and counted it.
            assert wait_for(
                lambda: (
                    running.metrics().get(
                        'parley_session_conversations_expired_total{store="redis"}', 0
                    )
                    >= 1
                ),
                5,
            )
    finally:
        running.stop()


async def test_storage_status_says_redis(stub: Stub) -> None:
    status = await stub.GetStorageStatus(pb.GetStorageStatusRequest())
    assert status.backend == pb.STORAGE_BACKEND_REDIS
    assert not status.fallback_active
    assert not status.HasField("fallback_since")


def test_redis_out_of_memory_refuses_writes_by_name_and_changes_nothing(tmp_path: Any) -> None:
    # maxmemory reached under noeviction: Redis answers every write with OOM. The service says
    # so (RESOURCE_EXHAUSTED, not an INTERNAL error), keeps answering reads, does not fall back
    # to memory (Redis is up), and writes again once memory is freed.
    full = Valkey(tmp_path / "valkey", None, "--maxmemory-policy", "noeviction").start()
    running = start_session(tmp_path, full.url)
    db = full.client()
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            key = new_key("oom-biz")
            first = stub.UpdateConversation(
                pb.UpdateConversationRequest(key=key, append=[user_message("hello")]), timeout=5
            )
            erased = new_key("oom-biz")
            stub.UpdateConversation(pb.UpdateConversationRequest(key=erased), timeout=5)
            db.config_set("maxmemory", 1)  # always over it: every write is refused
            with pytest.raises(grpc.RpcError) as refused:
                stub.UpdateConversation(
                    pb.UpdateConversationRequest(key=key, append=[bot_message("lost")]), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "out of memory" in (refused.value.details() or "")
            with pytest.raises(grpc.RpcError) as not_created:  # a new one is a write too
                stub.GetConversation(
                    pb.GetConversationRequest(key=new_key("oom-biz"), create=True), timeout=5
                )
            assert not_created.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            read = stub.GetConversation(pb.GetConversationRequest(key=key), timeout=5)
            assert read.conversation.version == first.conversation.version
            assert [m.content for m in read.conversation.history] == ["hello"]
            status = stub.GetStorageStatus(pb.GetStorageStatusRequest(), timeout=5)
            assert status.backend == pb.STORAGE_BACKEND_REDIS
            # An end (an erase) frees memory: it runs, its ended id recorded all the same.
            ended = stub.EndConversation(pb.EndConversationRequest(key=erased), timeout=5)
            assert ended.ended and db.keys("conversation-ended:{oom-biz:*}")
            assert not db.keys("conversation:{oom-biz:*}:*:meta")[1:]  # only the first one
            # One that finds nothing (expired) runs too: it records when the user's ended.
            missing = new_key("oom-biz")
            assert not stub.EndConversation(pb.EndConversationRequest(key=missing)).ended
            assert db.exists(erased_key(ConversationKey("oom-biz", missing.user_id, "client")))

            db.config_set("maxmemory", 0)
            again = stub.UpdateConversation(
                pb.UpdateConversationRequest(key=key, append=[bot_message("back")]), timeout=5
            )
            assert again.conversation.version == first.conversation.version + 1
            assert [m.content for m in again.conversation.history] == ["hello", "back"]
        assert any(e.get("event") == "Redis refused a call" for e in running.log_events())
    finally:
        running.stop()
        full.stop()


async def test_a_conversation_at_every_bound_still_answers_through_the_gateways_channel(
    session_redis_url: str, tmp_path: Path
) -> None:
    # The largest conversation the checks allow: SESSION_HISTORY_LIMIT at its maximum, every
    # message 4,096 four-byte characters with a 256-character provider id, and a state at 1 MiB
    # of the JSON whose protobuf encoding is largest (lists of 0.0: 4 bytes as JSON, 11 as a
    # Value). Its reply is ~20 MiB: past gRPC's 4 MiB default, every get of it would fail.
    limit = SessionSettings.model_fields["session_history_limit"].metadata[-1].le
    running = start_session(tmp_path, session_redis_url, SESSION_HISTORY_LIMIT=str(limit))
    try:
        async with make_channel(running.address, SERVICE) as channel:
            stub = SessionServiceStub(channel)
            key = new_key()
            longest = user_message("😀" * MAX_CONTENT, provider_id="é" * MAX_PROVIDER_ID)
            for _ in range(0, limit, MAX_APPEND):
                await stub.UpdateConversation(
                    pb.UpdateConversationRequest(
                        key=key, append=[longest] * MAX_APPEND, view=pb.CONVERSATION_VIEW_BASIC
                    ),
                    timeout=30,
                )
            zeros = (MAX_STATE_VALUE_BYTES - 2) // 4  # "0.0," each, in [ ]
            for n in range(MAX_STATE_BYTES // MAX_STATE_VALUE_BYTES):
                request = pb.UpdateConversationRequest(key=key, view=pb.CONVERSATION_VIEW_BASIC)
                request.set_state[f"{n:02}"].list_value.values.extend(
                    [struct_pb2.Value(number_value=0.0)] * zeros
                )
                await stub.UpdateConversation(request, timeout=30)
            got = await stub.GetConversation(pb.GetConversationRequest(key=key), timeout=30)
            assert len(got.conversation.history) == limit
            assert len(got.conversation.state) == MAX_STATE_BYTES // MAX_STATE_VALUE_BYTES
            assert got.ByteSize() > 4 * 1024 * 1024
            updated = await stub.UpdateConversation(
                pb.UpdateConversationRequest(key=key, append=[longest]), timeout=30
            )
            assert len(updated.conversation.history) == limit
    finally:
        running.stop()
