"""The in-memory fallback behaves as the Redis scripts do (same sequence, same answers)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.common.errors import VersionConflict
from services.common.redis_client import make_client
from services.session.memory_store import MemoryStore
from services.session.model import ConversationKey, Cursor, decode_cursor, encode_message
from services.session.redis_store import RedisStore
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
