"""The hand-written wire encoding of replies against protobuf's own, field by field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from parley.session.v1 import session_pb2 as pb
from services.session import wire
from services.session.model import ConversationKey

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Times as a Timestamp can hold them (years 1 to 9999), in ms.
TIME_MS = st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999)
TEXT = st.text(max_size=300)  # any Unicode: the length field counts UTF-8 bytes


@given(INT64)
def test_varints_match_protobufs_own(n: int) -> None:
    encoded = pb.Conversation(version=n).SerializeToString()  # tag, then the varint
    assert wire.varint(n) == encoded[1:] or (n == 0 and encoded == b"")


@given(TIME_MS)
def test_timestamps_match_protobufs_own(ms: int) -> None:
    expected = pb.Message()
    expected.time.FromMilliseconds(ms)  # present even when zero: time is a message field
    assert wire.timestamp(b"\x1a", ms) == expected.SerializeToString()


@given(
    st.sampled_from(list(pb.MessageRole.values())),
    TEXT,
    TIME_MS,
    st.text(max_size=80),
)
def test_history_entries_match_protobufs_own(
    role: int, content: str, time_ms: int, provider_id: str
) -> None:
    expected = pb.Conversation()
    message = expected.history.add(role=role, content=content, provider_message_id=provider_id)
    message.time.FromMilliseconds(time_ms)
    assert wire.history_entry(role, content, time_ms, provider_id) == expected.SerializeToString()


@given(
    st.text(max_size=40),
    st.text(max_size=130),
    st.text(max_size=130),
    st.sampled_from(list(pb.ConversationRole.values())),
    INT64,
    TIME_MS,
    TIME_MS,
    TIME_MS,
    st.booleans(),
)
def test_heads_and_replies_match_protobufs_own(
    conversation_id: str,
    business_id: str,
    user_id: str,
    role: int,
    version: int,
    created_ms: int,
    updated_ms: int,
    expire_ms: int,
    created: bool,
) -> None:
    expected = pb.Conversation(
        id=conversation_id,
        key=pb.ConversationKey(business_id=business_id, user_id=user_id, role=role),
        version=version,
    )
    expected.create_time.FromMilliseconds(created_ms)
    expected.update_time.FromMilliseconds(updated_ms)
    expected.expire_time.FromMilliseconds(expire_ms)
    key = ConversationKey(business_id, user_id, "client")  # the role is given as its value
    start = wire.conversation_start(conversation_id, key, role, created_ms)
    times = wire.conversation_times(version, updated_ms, expire_ms)
    # Fields may come in any order: the head parses as the same message, not the same bytes.
    assert pb.Conversation.FromString(start + times) == expected
    for reply_type in (pb.GetConversationResponse, pb.UpdateConversationResponse):
        expected_reply = reply_type(conversation=expected, created=created)
        reply = reply_type.FromString(wire.reply([start, times], created))
        assert reply == expected_reply
        assert reply.SerializeToString() == expected_reply.SerializeToString()
