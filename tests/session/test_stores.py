"""The in-memory fallback behaves as the Redis scripts do (same sequence, same answers)."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from services.common.errors import VersionConflict
from services.common.redis_client import make_client
from services.session.memory_store import MemoryStore
from services.session.model import (
    INDEX_SHARDS,
    MAX_STATE_BYTES,
    MAX_STATE_KEYS,
    Conversation,
    ConversationKey,
    Cursor,
    StateTooLarge,
    decode_cursor,
    encode_message,
    index_key,
    new_conversation_id,
)
from services.session.redis_store import MAX_EXAMINED, RedisStore
from tests.support.processes import Valkey

STORE_DB = 13


async def answer(call: Callable[[], Any]) -> Any:
    """A store call's answer, awaited when the store is async."""
    result = call()
    return await result if inspect.isawaitable(result) else result


@pytest.fixture
async def stores(valkey: Valkey) -> AsyncIterator[tuple[RedisStore, MemoryStore]]:
    client = make_client(f"redis://127.0.0.1:{valkey.port}/{STORE_DB}")
    await client.flushdb()
    yield (
        RedisStore(client, ttl_seconds=60, history_limit=3),
        MemoryStore(max_conversations=100, ttl_seconds=60, history_limit=3),
    )
    await client.flushdb()
    await client.aclose()


async def update(store: Any, key: ConversationKey, **step: Any) -> tuple[Any, ...]:
    kwargs = {"append": [], "set_state": {}, "remove_state": [], "expected_version": None}
    try:
        result = await answer(lambda: store.update(key, new_id="same-id", **(kwargs | step)))
    except VersionConflict as conflict:
        return ("conflict", conflict.current_version)
    conversation, created = result[0], result[1]
    return (
        conversation.id,
        conversation.history,
        conversation.state,
        conversation.version,
        created,
    )


async def test_same_sequence_same_answers(stores: tuple[RedisStore, MemoryStore]) -> None:
    key = ConversationKey("parity", "+15550000001", "client")
    steps: list[dict[str, Any]] = [
        {"append": [encode_message("user", "a", 1)], "expected_version": 0},
        {
            "append": [encode_message("assistant", f"m{n}", n) for n in range(4)],
            "expected_version": 1,
        },
        {"expected_version": 1},  # stale
        {"set_state": {"k": b"1", "gone": b"true"}, "remove_state": ["gone"]},
        {"expected_version": 0},  # exists already
        {"remove_state": ["k", "never-there"], "expected_version": 3},
    ]
    answers = [[await update(store, key, **step) for step in steps] for store in stores]
    assert answers[0] == answers[1]
    last = answers[0][-1]
    assert last[3] == 4 and last[2] == {}
    assert last[1] == [encode_message("assistant", f"m{n}", n) for n in (1, 2, 3)]
    assert answers[0][2] == ("conflict", 2) and answers[0][4] == ("conflict", 3)
    for store in stores:
        assert await answer(lambda s=store: s.touch(key)) is not None
        assert await answer(lambda s=store: s.end(key))
        got = await answer(lambda s=store: s.get(key, create=False, new_id="x"))
        assert got[0] is None


async def test_listing_pages_the_same_way(stores: tuple[RedisStore, MemoryStore]) -> None:
    keys = [ConversationKey("parity-list", f"+1555000{n:04d}", "client") for n in range(30)]
    for store in stores:
        for key in keys:
            await update(store, key)
        seen: list[str] = []
        cursor = Cursor()
        while True:
            page = await answer(lambda s=store, c=cursor: s.list_page("parity-list", None, 7, c))
            assert len(page.items) <= 7
            seen.extend(s.key.user_id for s in page.items)
            if not page.next_token:
                break
            cursor = decode_cursor(page.next_token)
        assert sorted(seen) == sorted(k.user_id for k in keys)


def replica(client: Any) -> tuple[RedisStore, MemoryStore]:
    """One session process's stores: its Redis side and its mirror."""
    return (
        RedisStore(client, ttl_seconds=60, history_limit=3),
        MemoryStore(max_conversations=100, ttl_seconds=60, history_limit=3),
    )


async def read(store: RedisStore, mirror: MemoryStore, key: ConversationKey) -> Any:
    """A get as SessionStore does it: offer the mirrored copy, mirror the answer."""
    conversation, _, _ = await store.get(
        key, create=True, new_id=new_conversation_id(), known=mirror.mirrored(key)
    )
    mirror.mirror(conversation)
    return conversation


async def test_a_get_skips_history_only_while_redis_holds_the_mirrored_version(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """Two replicas on one Redis: each one's mirror is used only while Redis still holds that
    id at that version, so a write through the other replica, an end or a re-creation is seen
    at once."""
    client = stores[0].client
    (a, a_mirror), (b, b_mirror) = replica(client), replica(client)
    key = ConversationKey("b1", "+15550001", "client")
    first = await read(a, a_mirror, key)
    await b.update(key, **(NO_CHECK | {"append": [m(1), m(2)], "set_state": {"step": b'"ask"'}}))
    seen = await read(a, a_mirror, key)  # b's write: A's mirror is stale, Redis sends it all
    assert (seen.version, seen.history, seen.state) == (2, [m(1), m(2)], {"step": b'"ask"'})
    again = await read(a, a_mirror, key)  # unchanged since: no history or state sent
    assert again.history is seen.history and again.state is seen.state
    assert (again.id, again.version) == (first.id, 2)
    assert again.expire_ms >= seen.expire_ms  # the expiry Redis holds now
    # Ended and started afresh by B: the same version number (1), another id.
    await b.end(key)
    recreated = await read(b, b_mirror, key)
    assert recreated.version == 1 and recreated.id != first.id
    after = await read(a, a_mirror, key)
    assert (after.id, after.version, after.history) == (recreated.id, 1, [])


async def test_an_outage_write_that_tied_with_redis_is_not_taken_for_redis_copy(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """Write-back found Redis at the same version (another replica wrote meanwhile): Redis's
    copy wins, so the next get must fetch it, not trust the outage's content."""
    store, mirror = stores
    key = ConversationKey("b1", "+15550002", "client")
    theirs, _, _ = await store.update(key, **(NO_CHECK | {"append": [m(1)]}))  # Redis: v1
    ours, _ = mirror.update(key, **(NO_CHECK | {"append": [m(9)]}))  # outage write: v1 too
    assert ours.version == theirs.version == 1
    mirror.discard(ours)
    got = await read(store, mirror, key)
    assert got.history == [m(1)]


async def test_a_write_back_tells_its_own_copy_from_another_at_the_same_version(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """At the same version, Redis may hold this very copy (a write-back whose answer was lost:
    'same', a touch's later expiry kept) or another replica's outage copy ('kept': counted as
    lost by the write-back, never taken for this one)."""
    store, mirror = stores
    key = ConversationKey("b1", "+15550005", "client")
    ours, _ = mirror.update(key, **(NO_CHECK | {"append": [m(1)], "set_state": {"s": b"1"}}))
    assert await store.put(ours) == ("written", 0, 0)
    touched = ours.expiring_at(ours.expire_ms + 30_000)
    assert await store.put(touched) == ("same", 1, 0)
    loaded = await store.load(key)
    assert loaded is not None and loaded.expire_ms > ours.expire_ms + 20_000
    for other in (
        replace(ours, history=[m(2)]),
        replace(ours, state={"s": b"2"}),
        replace(ours, state={}),
    ):
        assert await store.put(other) == ("kept", 1, 0)
    stored = await store.load(key)
    assert stored is not None and (stored.history, stored.state) == ([m(1)], {"s": b"1"})


NO_CHECK: dict[str, Any] = {
    "append": [],
    "set_state": {},
    "remove_state": [],
    "expected_version": None,
    "new_id": "n",
}


def m(n: int) -> bytes:
    return encode_message("user", f"message {n}", 1_700_000_000_000 + n)


async def write(store: RedisStore, mirror: MemoryStore, key: ConversationKey, **change: Any) -> Any:
    """An update as SessionStore does it: offer the mirrored copy, mirror the answer."""
    conversation, _, _ = await store.update(key, **(NO_CHECK | change), known=mirror.mirrored(key))
    mirror.mirror(conversation)
    return conversation


@pytest.mark.parametrize("limit_reached", [False, True])
async def test_an_update_applied_to_the_mirrored_copy_is_what_redis_holds(
    stores: tuple[RedisStore, MemoryStore], limit_reached: bool
) -> None:
    """While this replica's copy is current, the script sends back only the new version and the
    change is applied here: the result must be exactly what a fresh read from Redis gives,
    through trimming, state set and removed (the same key both: removed wins, as in Redis), a
    write through another replica in between, and a write that changes nothing."""
    client = stores[0].client
    (a, a_mirror), (b, b_mirror) = replica(client), replica(client)
    key = ConversationKey("b1", "+15550003" if limit_reached else "+15550004", "client")
    await write(a, a_mirror, key, append=[m(1)], set_state={"x": b"1", "y": b"2"})
    if limit_reached:  # history limit 3: the next appends trim
        await write(a, a_mirror, key, append=[m(2), m(3)])
    steps: list[dict[str, Any]] = [
        {"append": [m(4), m(5)], "set_state": {"x": b"10", "z": b'"new"'}},
        {"set_state": {"y": b"20"}, "remove_state": ["y", "missing"]},
        {},
    ]
    for step in steps:
        mine = await write(a, a_mirror, key, **step)
        fresh, _, _ = await replica(client)[0].get(key, create=False, new_id="unused")
        assert fresh is not None
        assert (mine.id, mine.version, mine.history, mine.state, mine.created_ms) == (
            fresh.id,
            fresh.version,
            fresh.history,
            fresh.state,
            fresh.created_ms,
        )
        assert mine.updated_ms == fresh.updated_ms
        assert abs(mine.expire_ms - fresh.expire_ms) <= 1  # a read's expiry: its clock + PTTL
    await write(b, b_mirror, key, append=[m(6)])  # A's copy is stale now
    after = await write(a, a_mirror, key, append=[m(7)])
    assert after.history[-2:] == [m(6), m(7)]


async def test_the_state_stays_within_its_bounds_on_both_stores(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """Past MAX_STATE_KEYS keys or MAX_STATE_BYTES, a change that grows the state is refused and
    writes nothing (a reply past gRPC's message limit would make every later get fail)."""
    key = ConversationKey("bounds", "+15550000009", "client")
    full = {f"k{n}": b"1" for n in range(MAX_STATE_KEYS)}
    big = b'"' + b"x" * (MAX_STATE_BYTES // 2) + b'"'
    steps: list[dict[str, Any]] = [
        {"set_state": full},
        {"set_state": {"one-more": b"1"}, "append": [encode_message("user", "lost", 1)]},
        {"set_state": {"k0": b"[1,2,3]"}},  # a new value for a key: no more keys
        {"set_state": {"new": b"1"}, "remove_state": ["k1"]},  # one in, one out
        {"set_state": {"brief": b"1"}, "remove_state": ["brief"]},  # set, then removed
        {"remove_state": [f"k{n}" for n in range(2, 100)]},
        {"set_state": {"a": big}},
        {"set_state": {"b": big}},  # past the bytes
        {"set_state": {"a": b"1"}},
    ]
    answers = []
    for store in stores:
        seen = []
        for step in steps:
            try:
                seen.append(await update(store, key, **step))
            except StateTooLarge as refused:
                seen.append(("refused", refused.message))
        answers.append(seen)
    assert answers[0] == answers[1]
    refused = [n for n, seen in enumerate(answers[0]) if seen[0] == "refused"]
    assert refused == [1, 7]
    assert answers[0][1][1].startswith(f"the conversation's state would hold {MAX_STATE_KEYS + 1}")
    after_refusal = answers[0][2]
    assert after_refusal[3] == 2 and after_refusal[1] == []  # nothing of the refused update
    last = answers[0][-1]
    assert len(last[2]) == MAX_STATE_KEYS - 98 + 1 and last[2]["a"] == b"1"


async def test_a_state_past_its_bounds_from_before_them_can_shrink_not_grow(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """A conversation imported or written back whole carries no size: Redis counts it once."""
    redis_store, _ = stores
    key = ConversationKey("bounds", "+15550000010", "client")
    state = {f"k{n}": b"12345" for n in range(MAX_STATE_KEYS + 10)}
    now = int(time.time() * 1000)
    imported = Conversation("imported", key, [], state, 5, now, now, now + 60_000)
    assert (await redis_store.put(imported, write_back=False))[0] == "written"
    with pytest.raises(StateTooLarge):
        await update(redis_store, key, set_state={"more": b"1"})
    shrunk = await update(redis_store, key, remove_state=["k0"], set_state={"k1": b"1"})
    assert len(shrunk[2]) == MAX_STATE_KEYS + 9 and shrunk[3] == 6
    with pytest.raises(StateTooLarge):
        await update(redis_store, key, set_state={"more": b"1"})
    meta = await redis_store.client.hget(key.redis_keys()[0], "s")
    assert int(meta) == sum(len(k) + len(v) for k, v in shrunk[2].items())


def in_shard(shard: int, role: str, count: int, prefix: str) -> list[ConversationKey]:
    """``count`` keys of one business whose conversations share index shard ``shard``."""
    keys: list[ConversationKey] = []
    n = 0
    while len(keys) < count:
        key = ConversationKey("walk", f"{prefix}{n:05d}", role)  # type: ignore[arg-type]
        if key.shard == shard:
            keys.append(key)
        n += 1
    return keys


async def test_a_listing_misses_nothing_when_entries_it_walked_past_move_meanwhile(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """As SCAN promises: a conversation live for the whole walk is listed, even when others
    are written while one page is read (their entries move to a later expiry)."""
    redis_store, _ = stores
    clients = in_shard(0, "client", 16, "+1555100")
    (admin,) = in_shard(0, "admin", 1, "+1555200")
    for key in [*clients, admin]:
        await update(redis_store, key)
    # One expiry each, the admin's last, all earlier than any write's from now on.
    client = redis_store.client
    index = admin.redis_keys()[3]
    first = min(score for _, score in await client.zrange(index, 0, -1, withscores=True))
    await client.zadd(index, {k.member: first - 100 + n for n, k in enumerate([*clients, admin])})
    zrange = client.zrange
    moved = []

    async def zrange_then_a_write(*args: Any, **kwargs: Any) -> Any:
        """The real ZRANGE; after the first, another replica writes a conversation the walk
        has passed, as could happen between any two of its reads."""
        batch = await zrange(*args, **kwargs)
        if not moved:
            moved.append(await update(redis_store, clients[3]))
        return batch

    client.zrange = zrange_then_a_write  # type: ignore[method-assign]
    try:
        page = await redis_store.list_page("walk", "admin", 1, Cursor())
    finally:
        client.zrange = zrange  # type: ignore[method-assign]
    assert moved
    assert [s.key for s in page.items] == [admin]


async def test_a_listing_walks_past_many_entries_of_one_expiry(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """Entries of one score (written in one millisecond) are told apart by member, however
    many there are, and none is listed twice or left out."""
    redis_store, _ = stores
    clients = in_shard(0, "client", 40, "+1555300")
    (admin,) = in_shard(0, "admin", 1, "+1555400")
    for key in [*clients, admin]:
        await update(redis_store, key)
    client = redis_store.client
    index = admin.redis_keys()[3]
    score = max(score for _, score in await client.zrange(index, 0, -1, withscores=True))
    await client.zadd(index, {key.member: score for key in [*clients, admin]})

    page = await redis_store.list_page("walk", "admin", 1, Cursor())
    assert [s.key for s in page.items] == [admin]
    seen: list[ConversationKey] = []
    cursor = Cursor()
    while True:
        page = await redis_store.list_page("walk", None, 5, cursor)
        seen.extend(s.key for s in page.items)
        if not page.next_token:
            break
        cursor = decode_cursor(page.next_token)
    assert sorted(seen) == sorted([*clients, admin])


async def test_a_listing_page_walks_at_most_its_budget_across_shards(
    stores: tuple[RedisStore, MemoryStore],
) -> None:
    """A page's work is bounded (MAX_EXAMINED index entries), however many of the business's
    conversations its role filter passes over: each of the 16 shards had a budget of its own,
    so a page of admins in a business of clients read up to 16 times that before it answered."""
    redis_store, _ = stores
    client = redis_store.client
    per_shard = MAX_EXAMINED // 2  # under one shard's budget, far over it in all 16
    now = int(time.time() * 1000)
    for shard in range(INDEX_SHARDS):
        clients = in_shard(shard, "client", per_shard, f"+1555{shard:02d}")
        # Index entries only: a walk reads the index, and keys only of what it picks.
        entries = {k.member: now + 60_000 + n for n, k in enumerate(clients)}
        await client.zadd(index_key("walk", shard), entries)
    zrange = client.zrange
    read = 0

    async def counted_zrange(*args: Any, **kwargs: Any) -> Any:
        nonlocal read
        batch = await zrange(*args, **kwargs)
        read += len(batch)
        return batch

    client.zrange = counted_zrange  # type: ignore[method-assign]
    try:
        cursor, pages = Cursor(), 0
        while True:
            read = 0
            page = await redis_store.list_page("walk", "admin", 10, cursor)
            assert page.items == []
            assert read <= MAX_EXAMINED + per_shard  # the last batch read may pass the budget
            pages += 1
            if not page.next_token:
                break
            cursor = decode_cursor(page.next_token)
    finally:
        client.zrange = zrange  # type: ignore[method-assign]
    assert pages >= INDEX_SHARDS * per_shard // MAX_EXAMINED
