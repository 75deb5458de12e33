"""Key names and page tokens: any id round-trips, any token from outside is refused cleanly."""

from __future__ import annotations

import uuid
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from services.session.model import (
    INDEX_SHARDS,
    Conversation,
    ConversationKey,
    Cursor,
    decode_cursor,
    encode_cursor,
    new_conversation_id,
)

ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=128)


@settings(deadline=None)  # a loaded shared machine must not fail a property
@given(business=ids, user=ids, role=st.sampled_from(["client", "admin"]))
def test_any_ids_round_trip_through_key_names(business: str, user: str, role: str) -> None:
    key = ConversationKey(business, user, role)  # type: ignore[arg-type]
    meta, history, state, index = key.redis_keys()
    assert ConversationKey.from_meta_key(meta) == key
    # One hash tag for the conversation and its index shard: the first {...} of each name.
    tags = {name[name.index("{") : name.index("}") + 1] for name in (meta, history, state, index)}
    assert len(tags) == 1
    assert key.shard == zlib.crc32(f"{role}:{user}".encode()) % INDEX_SHARDS
    for name in (meta, history, state, index):
        assert not set(name) & set("*?[]\\ \n")  # safe in SCAN patterns and logs


@settings(deadline=None)
@given(st.text(max_size=200))
def test_tokens_from_outside_are_refused_or_valid(token: str) -> None:
    try:
        cursor = decode_cursor(token)
    except ValueError:
        return
    assert 0 <= cursor.shard < INDEX_SHARDS


@settings(deadline=None)
@given(
    shard=st.integers(0, INDEX_SHARDS - 1),
    score=st.none() | st.integers(0, 2**53),
    member=st.text(max_size=300),
)
def test_our_tokens_round_trip(shard: int, score: int | None, member: str) -> None:
    cursor = Cursor(shard, score, member)
    assert decode_cursor(encode_cursor(cursor)) == cursor


def test_new_conversation_ids_are_random_version_4_uuids() -> None:
    ids = [new_conversation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # canonical: lower case, dashes where uuid4 puts them
    # Every variant nibble (8, 9, a, b) turns up: the two random bits under it are used.
    assert {text[19] for text in ids} == set("89ab")


def test_a_change_trims_history_only_when_it_appends_as_the_script_does() -> None:
    """A history longer than the limit (the limit was lowered since) stays as it is until the
    next append, in Redis and so in any copy the service keeps of it."""
    key = ConversationKey("b", "+1555", "client")
    long = Conversation("c", key, [b"1", b"2", b"3"], {"a": b"1"}, 4, 1, 2, 3)
    same = long.changed([], {"b": b"2"}, ["a"], history_limit=2, updated_ms=5, expire_ms=6)
    assert (same.history, same.state, same.version) == ([b"1", b"2", b"3"], {"b": b"2"}, 5)
    grown = long.changed([b"4"], {}, [], history_limit=2, updated_ms=5, expire_ms=6)
    assert grown.history == [b"3", b"4"]
    assert long.history == [b"1", b"2", b"3"] and long.state == {"a": b"1"}  # kept as it was
