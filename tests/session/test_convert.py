"""The response side of a conversation: stored entries become the same protos, cached or not."""

from __future__ import annotations

import orjson
from google.protobuf import json_format

from parley.session.v1 import session_pb2 as pb
from services.session import convert
from services.session.convert import CACHED_ENTRY_BYTES, conversation_reply
from services.session.model import Conversation, ConversationKey, decode_message


def stored(content: str, at: int, role: str = "u", provider_id: str = "") -> bytes:
    return orjson.dumps(
        {"r": role, "c": content, "t": at, **({"p": provider_id} if provider_id else {})}
    )


def conversation_proto(stored: Conversation) -> pb.Conversation:
    """What a get answers for ``stored``."""
    reply = conversation_reply(stored, False)
    return pb.GetConversationResponse.FromString(reply.data).conversation


def field_by_field(stored: Conversation, key: pb.ConversationKey) -> pb.Conversation:
    """The proto a reply must carry for ``stored``, built without the code under test."""
    proto = pb.Conversation(id=stored.id, key=key, version=stored.version)
    proto.create_time.FromMilliseconds(stored.created_ms)
    proto.update_time.FromMilliseconds(stored.updated_ms)
    proto.expire_time.FromMilliseconds(stored.expire_ms)
    for raw in stored.history:
        role, content, time_ms, provider_id = decode_message(raw)
        message = proto.history.add(
            role=pb.MessageRole.Value(f"MESSAGE_ROLE_{role.upper()}"),
            content=content,
            provider_message_id=provider_id,
        )
        message.time.FromMilliseconds(time_ms)
    for name, raw in stored.state.items():
        json_format.Parse(raw, proto.state[name])
    return proto


def conversation(history: list[bytes], state: dict[str, bytes] | None = None) -> Conversation:
    return Conversation(
        id="c-1",
        key=ConversationKey("b", "+15550001", "client"),
        history=history,
        state=state if state is not None else {"origin": b'"TLV"'},
        version=3,
        created_ms=1_700_000_000_000,
        updated_ms=1_700_000_000_500,
        expire_ms=1_700_000_900_500,
    )


def test_stored_messages_convert_the_same_every_time_and_stay_unshared() -> None:
    long = "y" * (CACHED_ENTRY_BYTES + 1)  # past the cache's bound: converted every time
    history = [
        stored("hi", 1_700_000_000_123, provider_id="wamid.1"),
        stored("hello!", 1_700_000_000_456, role="a"),
        stored(long, 1_700_000_000_789, role="s"),
    ]
    first = conversation_proto(conversation(history))
    assert [(m.role, m.content, m.provider_message_id) for m in first.history] == [
        (pb.MESSAGE_ROLE_USER, "hi", "wamid.1"),
        (pb.MESSAGE_ROLE_ASSISTANT, "hello!", ""),
        (pb.MESSAGE_ROLE_SYSTEM, long, ""),
    ]
    assert (first.history[0].time.seconds, first.history[0].time.nanos) == (
        1_700_000_000,
        123_000_000,
    )
    first.history[0].content = "changed by a caller"  # the response's own copy
    again = conversation_proto(conversation([bytes(raw) for raw in history]))
    assert again.history[0].content == "hi"
    assert again.SerializeToString() != first.SerializeToString()
    first.history[0].content = "hi"
    assert again == first


def test_state_values_convert_the_same_every_time_cached_or_not() -> None:
    long = {"notes": "z" * (CACHED_ENTRY_BYTES + 1)}  # past the cache's bound
    state = {
        "origin": b'"TLV"',
        "passengers": b"2",
        "dates": orjson.dumps({"from": "2026-12-01", "flexible": True, "legs": [1, None]}),
        "long": orjson.dumps(long),
    }
    first = conversation_proto(conversation([], state))
    assert first.state["origin"].string_value == "TLV"
    assert first.state["passengers"].number_value == 2
    dates = first.state["dates"].struct_value.fields
    assert dates["flexible"].bool_value is True
    assert [v.WhichOneof("kind") for v in dates["legs"].list_value.values] == [
        "number_value",
        "null_value",
    ]
    assert first.state["long"].struct_value.fields["notes"].string_value == long["notes"]
    again = conversation_proto(conversation([], {k: bytes(v) for k, v in state.items()}))
    assert again == first


def test_a_reply_is_the_encoding_of_the_message_built_field_by_field() -> None:
    key = pb.ConversationKey(business_id="b", user_id="+15550001", role=pb.CONVERSATION_ROLE_CLIENT)
    # Long enough that the conversation's length takes a varint of two and then three bytes.
    for n in (0, 1, 200, 2000):
        history = [
            stored("m" * 90, 1_700_000_000_000 + i, "uas"[i % 3], f"wamid.{i}" if i % 2 else "")
            for i in range(n % 97)
        ]
        history += [stored("x" * n, 1_700_000_000_999)] if n else []
        stored_conversation = conversation(history)
        for reply_type in (pb.GetConversationResponse, pb.UpdateConversationResponse):
            for created in (False, True):
                for basic in (False, True):
                    data = conversation_reply(stored_conversation, created, basic=basic).data
                    reply = reply_type.FromString(data)
                    expected = field_by_field(stored_conversation, key)
                    if basic:
                        del expected.history[:]
                        expected.state.clear()
                    assert reply.created is created
                    assert reply.conversation == expected
                    assert reply_type.FromString(reply.SerializeToString()) == reply


def test_appended_messages_reply_as_stored() -> None:
    """An update's new messages, as checked and stored, reply with what the request said (time
    set or not, any Unicode, empty content, long entries past the cache)."""
    key = pb.ConversationKey(business_id="b", user_id="+15550001", role=pb.CONVERSATION_ROLE_CLIENT)
    request = pb.UpdateConversationRequest(
        append=[
            pb.Message(role=pb.MESSAGE_ROLE_USER, content="שלום 👋", provider_message_id="wamid.9"),
            pb.Message(role=pb.MESSAGE_ROLE_ASSISTANT, content="x" * 300),
            pb.Message(role=pb.MESSAGE_ROLE_SYSTEM, content=""),
        ]
    )
    request.append[1].time.FromMilliseconds(1_699_999_999_001)
    violations: convert.Violations = []
    appended = convert.appended_messages(request.append, violations, now_ms=1_700_000_000_007)
    assert violations == []
    fresh = conversation(appended)
    reply = pb.GetConversationResponse.FromString(conversation_reply(fresh, False).data)
    assert reply.conversation == field_by_field(fresh, key)
    # Read back later as stored (new bytes objects): the same answer.
    again = conversation([bytes(bytearray(raw)) for raw in appended])
    assert conversation_reply(again, False).data == conversation_reply(fresh, False).data
