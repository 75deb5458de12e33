"""The gateway's rate limits against a real Valkey: moving windows, both in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from services.common.redis_pipeline import AutoPipeline
from services.gateway.ratelimit import RateLimits, window_keys
from tests.support.processes import Valkey

DB = 11


@pytest.fixture
async def client(valkey: Valkey) -> AsyncIterator[redis.Redis]:
    client = redis.Redis(port=valkey.port, db=DB)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def limits(client: redis.Redis, per_user: str, per_business: str) -> RateLimits:
    return RateLimits(AutoPipeline(client), per_user, per_business)


async def test_a_user_over_the_limit_is_refused_and_other_users_are_not(
    client: redis.Redis,
) -> None:
    rate = limits(client, "3/minute", "100/minute")
    assert [(await rate.hit("b1", "alice"))[:2] for _ in range(4)] == [(True, True)] * 3 + [
        (True, False)
    ]
    assert (await rate.hit("b1", "bob"))[:2] == (True, True)
    assert (await rate.hit("b2", "alice"))[:2] == (
        True,
        True,
    )  # the same number at another business


async def test_the_business_limit_counts_every_user(client: redis.Redis) -> None:
    rate = limits(client, "10/minute", "3/minute")
    outcomes = [await rate.hit("b1", f"user-{n}") for n in range(4)]
    assert [hit.business for hit in outcomes] == [True, True, True, False]
    assert all(hit.user for hit in outcomes)  # each user's own window still counted the hit
    # Not counted; the window has room again once its oldest hit leaves it, within the minute.
    assert 59 < outcomes[3].wait <= 60 and all(hit.wait == 0 for hit in outcomes[:3])


async def test_concurrent_hits_are_counted_exactly(client: redis.Redis) -> None:
    rate = limits(client, "50/minute", "1000/minute")
    outcomes = await asyncio.gather(*(rate.hit("b1", "alice") for _ in range(80)))
    assert sum(hit.user for hit in outcomes) == 50
    business_key, user_key = window_keys("b1", "alice")
    assert await client.llen(user_key) == 50
    assert await client.llen(business_key) == 50  # the refused ones count for nothing


async def test_a_user_over_their_limit_does_not_use_up_the_business_window(
    client: redis.Redis,
) -> None:
    """(Was a bug: every message counted in the business's window, those refused for their
    user's limit too, so one user flooding past theirs used up the business's, and the
    business's other users' messages were dead-lettered as business_rate_limited.)"""
    rate = limits(client, "2/minute", "5/minute")
    outcomes = [(await rate.hit("b1", "flooder"))[:2] for _ in range(10)]
    assert outcomes == [(True, True)] * 2 + [(True, False)] * 8
    assert [(await rate.hit("b1", f"user-{n}"))[:2] for n in range(3)] == [(True, True)] * 3
    assert (await rate.hit("b1", "user-9"))[:2] == (False, True)  # 2 + 3: the business's 5


async def test_the_window_moves(client: redis.Redis) -> None:
    rate = limits(client, "2/second", "100/minute")
    assert [(await rate.hit("b1", "alice"))[:2] for _ in range(3)] == [(True, True)] * 2 + [
        (True, False)
    ]
    await asyncio.sleep(1.05)
    assert (await rate.hit("b1", "alice"))[:2] == (True, True)


async def test_windows_expire_and_share_one_cluster_slot(client: redis.Redis) -> None:
    rate = limits(client, "5/minute", "100/minute")
    await rate.hit("b1", "alice")
    business_key, user_key = window_keys("b1", "alice")
    assert 0 < await client.pttl(user_key) <= 60_000
    assert 0 < await client.pttl(business_key) <= 60_000
    slots = {
        await client.execute_command("CLUSTER", "KEYSLOT", k) for k in (business_key, user_key)
    }
    assert len(slots) == 1


def test_a_limit_that_allows_nothing_is_refused_at_start(valkey: Valkey) -> None:
    client = redis.Redis(port=valkey.port)
    with pytest.raises(ValueError, match="at least one"):
        limits(client, "0/minute", "100/minute")
    with pytest.raises(ValueError):
        limits(client, "twenty a minute", "100/minute")


async def test_a_user_s_window_counts_when_each_message_was_queued(client: redis.Redis) -> None:
    """Messages queued a second apart and handled at once (a backlog drained) are within a
    2-per-second limit; messages queued at once are not, whenever they are handled."""
    rate = limits(client, "2/second", "100/minute")
    now_ms = int((await client.time())[0]) * 1000
    spaced = [now_ms - 5000 + 1000 * n for n in range(4)]
    assert [(await rate.hit("b1", "alice", t))[:2] for t in spaced] == [(True, True)] * 4
    at_once = [now_ms - 5000] * 3
    assert [(await rate.hit("b1", "bob", t))[:2] for t in at_once] == [(True, True)] * 2 + [
        (True, False)
    ]


async def test_a_replayed_message_counts_in_its_business_window_only(client: redis.Redis) -> None:
    """Dead letters replayed together are queued at the replay, not when their user wrote them:
    their user's window neither refuses nor counts them; their business's paces them."""
    rate = limits(client, "1/minute", "3/minute")
    assert (await rate.hit("b1", "alice"))[:2] == (True, True)
    replays = [await rate.hit("b1", "alice", replayed=True) for _ in range(3)]
    assert [hit[:2] for hit in replays] == [(True, True)] * 2 + [(False, True)]
    business_key, user_key = window_keys("b1", "alice")
    assert (await client.llen(user_key), await client.llen(business_key)) == (1, 3)
    assert (await rate.hit("b1", "alice"))[:2] == (True, False)  # a new message: as before
