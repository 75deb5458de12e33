"""The lookup cache: TTL, LRU, negative entries, single-flight, invalidation, warm-up."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.business.core import BusinessCore, CachedBusiness
from services.business.crypto import TokenCipher
from services.business.sqlite_store import SqliteStore
from services.business.store import BusinessStore
from services.common.business_keys import KeyKind, lookup_key
from services.common.errors import Unavailable
from services.common.invalidation import InvalidationBus
from services.common.lookup_cache import LookupCache
from services.common.tasks import wait_shielded
from tests.business.conftest import create_business, when_writer_starts
from tests.support.processes import Valkey


@dataclass(frozen=True)
class Item:
    business_id: str
    lookup_keys: tuple[str, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ttl_expiry_and_every_key_of_a_business_hits() -> None:
    clock = Clock()
    cache: LookupCache[Item] = LookupCache(capacity=10, ttl=300, negative_ttl=30, clock=clock)
    item = Item("b1", ("pnid:1", "num:+1", "sub:a"))
    loads = 0

    async def load() -> Item:
        nonlocal loads
        loads += 1
        return item

    assert await cache.get("pnid:1", load) == (item, False)
    assert await cache.get("num:+1", load) == (item, True)  # loaded once, keyed by all its keys
    assert await cache.get("sub:a", load) == (item, True)
    clock.now += 301
    assert await cache.get("sub:a", load) == (item, False)
    assert loads == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 2, 1)
    assert stats.hit_ratio == 0.5


async def test_lru_bound_counts_businesses_and_evicts_the_least_recent() -> None:
    cache: LookupCache[Item] = LookupCache(capacity=2, ttl=300, negative_ttl=30)
    a, b, c = (Item(n, (f"pnid:{n}", f"sub:{n}")) for n in "abc")
    cache.warm([a, b])
    assert cache.peek("pnid:a") == (True, a)  # a is now the most recent
    cache.put(c)
    assert cache.peek("sub:b") == (False, None)  # b evicted, with all its keys
    assert cache.peek("sub:a") == (True, a)
    assert cache.stats().evictions == 1 and len(cache) == 2


async def test_unknown_identities_are_remembered_briefly() -> None:
    clock = Clock()
    cache: LookupCache[Item] = LookupCache(capacity=10, ttl=300, negative_ttl=30, clock=clock)
    loads = 0

    async def load() -> None:
        nonlocal loads
        loads += 1

    for _ in range(50):
        assert await cache.get("pnid:unknown", load) == (None, loads > 0 and _ > 0)
    assert loads == 1 and cache.stats().negative_hits == 49
    clock.now += 31
    await cache.get("pnid:unknown", load)
    assert loads == 2


async def test_negative_entries_cannot_evict_businesses() -> None:
    cache: LookupCache[Item] = LookupCache(capacity=3, ttl=300, negative_ttl=30)
    cache.warm([Item("a", ("pnid:a",))])

    async def nothing() -> None:
        return None

    for i in range(100):
        await cache.get(f"pnid:flood{i}", nothing)
    assert cache.peek("pnid:a")[0]
    assert cache.stats().negative_size == 3


async def test_invalidation_drops_entries_and_in_flight_answers() -> None:
    cache: LookupCache[Item] = LookupCache(capacity=10, ttl=300, negative_ttl=30)
    release = asyncio.Event()
    old = Item("b1", ("pnid:1",))

    async def slow_old() -> Item:
        await release.wait()
        return old

    started = asyncio.create_task(cache.get("pnid:1", slow_old))
    await asyncio.sleep(0)
    cache.invalidate(["pnid:1"], ["b1"])  # a write lands while the load is in flight
    release.set()
    assert await started == (old, False)  # the caller that asked before the write gets it...
    assert cache.peek("pnid:1") == (False, None)  # ...but it is not cached

    cache.put(old)
    cache.invalidate(["pnid:1"])
    assert cache.peek("pnid:1") == (False, None)


async def test_a_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    cache: LookupCache[Item] = LookupCache(capacity=10, ttl=300, negative_ttl=30)
    release = asyncio.Event()
    item = Item("b1", ("pnid:1",))

    async def load() -> Item:
        await release.wait()
        return item

    first = asyncio.create_task(cache.get("pnid:1", load))
    second = asyncio.create_task(cache.get("pnid:1", load))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == (item, False)
    assert cache.peek("pnid:1") == (True, item)


async def test_hundred_concurrent_misses_make_one_database_query(
    store: BusinessStore, core: BusinessCore
) -> None:
    """Single-flight against each real store, counting the queries the store received."""
    created = await create_business(core, "flight", "777000", numbers=("+14155550777",))
    key = lookup_key(KeyKind.PHONE_NUMBER_ID, "777000")
    before = store.queries
    results = await asyncio.gather(
        *(core.lookup(KeyKind.PHONE_NUMBER_ID, "777000", key) for _ in range(100))
    )
    assert store.queries - before == 1
    assert all(found is not None and found.record.id == created.id for found, _ in results)
    # ...and 100 concurrent lookups of an unknown identity: one query, then negative hits.
    missing = lookup_key(KeyKind.PHONE_NUMBER_ID, "404")
    before = store.queries
    misses = await asyncio.gather(
        *(core.lookup(KeyKind.PHONE_NUMBER_ID, "404", missing) for _ in range(100))
    )
    assert all(found is None for found, _ in misses)
    await core.lookup(KeyKind.PHONE_NUMBER_ID, "404", missing)
    assert store.queries - before == 1


async def test_writes_invalidate_locally_at_once(store: BusinessStore, core: BusinessCore) -> None:
    created = await create_business(core, "inv", "888000")
    key = lookup_key(KeyKind.SUBDOMAIN, "inv")
    assert (await core.lookup(KeyKind.SUBDOMAIN, "inv", key))[0] is not None
    assert (await core.lookup(KeyKind.SUBDOMAIN, "inv", key))[1]  # cached now
    await core.deactivate(created.id)
    # Read again at once, and found inactive (kept so, as lookups with include_inactive ask).
    found, cached = await core.lookup(KeyKind.SUBDOMAIN, "inv", key)
    assert found is not None and not found.record.servable and not cached
    # A create clears "not found" entries for the identities it claims.
    new_key = lookup_key(KeyKind.PHONE_NUMBER_ID, "888001")
    assert (await core.lookup(KeyKind.PHONE_NUMBER_ID, "888001", new_key))[0] is None
    await core.update(created.id, {"phone_number_ids": ("888001",), "active": True})
    found, cached = await core.lookup(KeyKind.PHONE_NUMBER_ID, "888001", new_key)
    assert found is not None and not cached
    assert (
        await core.lookup(
            KeyKind.PHONE_NUMBER_ID, "888000", lookup_key(KeyKind.PHONE_NUMBER_ID, "888000")
        )
    )[0] is None


async def test_a_write_that_surely_failed_keeps_the_cached_business(
    tmp_path: Path, cipher: TokenCipher
) -> None:
    """A write the store failed is invalidated where it may have been applied (MongoDB's answer
    lost: test_service.py). A SQLite write that failed was rolled back: the business is as the
    cache holds it, which goes on serving it while the store cannot be written."""
    db = tmp_path / "business.db"
    store = SqliteStore(db)
    cache: LookupCache[CachedBusiness] = LookupCache(capacity=10, ttl=300, negative_ttl=30)
    core = BusinessCore(store, cipher, cache=cache)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        created = await create_business(core, "locked", "777000")
        key = lookup_key(KeyKind.SUBDOMAIN, "locked")
        await core.lookup(KeyKind.SUBDOMAIN, "locked", key)
        writer = await store._write()
        await writer.execute("PRAGMA busy_timeout = 50")  # not the 5 s it waits for the lock
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(Unavailable):
            await core.deactivate(created.id)
        holder.execute("ROLLBACK")
        found, cached = await core.lookup(KeyKind.SUBDOMAIN, "locked", key)
        assert cached and found is not None and found.record.active
    finally:
        holder.close()
        await store.close()


async def test_a_write_cancelled_as_it_commits_is_still_invalidated_everywhere(
    tmp_path: Path, cipher: TokenCipher, valkey: Valkey
) -> None:
    """DeactivateBusiness's deadline cancels it while SQLite commits (for MongoDB: while the
    applied write's reply is on its way). This replica's cache and the other replicas' still
    drop the business (before: both served it, active, until the 300 s TTL)."""
    store = SqliteStore(tmp_path / "business.db")
    channel = f"test:business:invalidate:{tmp_path.name}"
    caches: list[LookupCache[CachedBusiness]] = [
        LookupCache(capacity=10, ttl=300, negative_ttl=30) for _ in range(2)
    ]
    here, there = caches
    publisher = InvalidationBus(valkey.url, channel, here.invalidate, here.clear)
    core = BusinessCore(store, cipher, cache=here, bus=publisher)
    replica = BusinessCore(store, cipher, cache=there)
    seen: list[str] = []
    sentinel = asyncio.Event()

    def remote(keys: list[str], ids: list[str]) -> None:
        there.invalidate(keys, ids)
        seen.extend(ids)
        if "sentinel" in ids:
            sentinel.set()

    subscriber = InvalidationBus(valkey.url, channel, remote, there.clear)
    try:
        created = await create_business(core, "cancelled", "999000")
        key = lookup_key(KeyKind.SUBDOMAIN, "cancelled")
        for each in (core, replica):
            await each.lookup(KeyKind.SUBDOMAIN, "cancelled", key)
            assert (await each.lookup(KeyKind.SUBDOMAIN, "cancelled", key))[1]  # cached
        await subscriber.start()
        await subscriber.subscribed.wait()

        deactivating = asyncio.create_task(core.deactivate(created.id))
        # Queued on the writer's thread before the task has run, so before its COMMIT.
        await when_writer_starts(store, "COMMIT", deactivating.cancel)
        with pytest.raises(asyncio.CancelledError):
            await deactivating
        await wait_shielded()  # what the cancelled call left running
        # Published after whatever the write published: the subscriber sees them in order.
        await publisher.publish([], ["sentinel"])
        await sentinel.wait()

        stored = await store.get(created.id)
        assert stored is not None and not stored.active  # the write was applied
        assert here.peek(key) == (False, None)
        assert created.id in seen and there.peek(key) == (False, None)
    finally:
        await subscriber.stop()
        await publisher.stop()
        await store.close()


async def test_an_inactive_business_is_read_once_for_every_webhook_that_names_it(
    store: BusinessStore, core: BusinessCore
) -> None:
    """The gateway looks up the owner of every webhook's identity with include_inactive: an
    inactive business is cached like the others, not read from the store each time."""
    created = await create_business(core, "off", "889000")
    await core.deactivate(created.id)
    key = lookup_key(KeyKind.PHONE_NUMBER_ID, "889000")
    before = store.queries
    for _ in range(5):
        found, _ = await core.lookup(KeyKind.PHONE_NUMBER_ID, "889000", key)
        assert found is not None and not found.record.servable
    assert store.queries - before == 1
