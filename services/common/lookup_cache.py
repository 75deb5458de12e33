"""A per-process lookup cache: TTL + LRU, negative entries, single-flight, invalidation.

One implementation for the business service's cache of its store and the gateway worker's cache
of ``LookupBusiness`` answers. Metrics are the caller's: counters are passed in.

- A business is one entry, reachable by every lookup key it has (each ``phone_number_id``,
  each number, its subdomain). The LRU bound counts businesses, so warming 1,000 businesses
  with three keys each fits a cache of 1,000.
- Unknown (or unservable) identities are remembered as "not found" for a short TTL, in a
  separate LRU of the same bound, so a flood of webhooks for unknown numbers neither reaches the
  database nor evicts real businesses.
- Concurrent misses for one key share one load (single-flight). The load runs in a task of its
  own, so a caller whose deadline expires does not cancel it for the others.
- Every write invalidates the keys it touched. A load that started before an invalidation does
  not store its (possibly stale) answer, and callers arriving after the invalidation start a new
  load rather than joining the old one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _NoCount:
    def inc(self, amount: float = 1) -> None:
        pass


_NO_COUNT = _NoCount()


@dataclass(frozen=True)
class CacheCounters:
    """Where a cache counts its events (e.g. Prometheus counters or labelled children)."""

    hits: _Counter = _NO_COUNT
    misses: _Counter = _NO_COUNT
    negative_hits: _Counter = _NO_COUNT
    evicted_positive: _Counter = _NO_COUNT
    evicted_negative: _Counter = _NO_COUNT


class Cacheable(Protocol):
    @property
    def business_id(self) -> str: ...

    @property
    def lookup_keys(self) -> tuple[str, ...]: ...


V = TypeVar("V", bound=Cacheable)


@dataclass
class _Entry(Generic[V]):
    value: V
    expires_at: float


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    negative_hits: int
    evictions: int
    size: int
    negative_size: int
    capacity: int

    @property
    def hit_ratio(self) -> float:
        answered = self.hits + self.negative_hits
        total = answered + self.misses
        return answered / total if total else 0.0


class LookupCache(Generic[V]):
    def __init__(
        self,
        capacity: int,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        counters: CacheCounters = CacheCounters(),
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()  # business id -> entry
        self._index: dict[str, str] = {}  # lookup key -> business id
        self._negative: OrderedDict[str, float] = OrderedDict()  # lookup key -> expires at
        self._flights: dict[str, asyncio.Task[V | None]] = {}
        self._epoch = 0  # bumped by every invalidation
        self.hits = self.misses = self.negative_hits = self.evictions = 0
        self._counters = counters

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            negative_hits=self.negative_hits,
            evictions=self.evictions,
            size=len(self._entries),
            negative_size=len(self._negative),
            capacity=self.capacity,
        )

    # --- reads ------------------------------------------------------------------------------

    def peek(self, key: str) -> tuple[bool, V | None]:
        """(found in cache, value) without loading; counts a hit or negative hit when found."""
        now = self._clock()
        business_id = self._index.get(key)
        if business_id is not None:
            entry = self._entries.get(business_id)
            if entry is not None and entry.expires_at > now:
                self._entries.move_to_end(business_id)
                self.hits += 1
                self._counters.hits.inc()
                return True, entry.value
            self._drop_business(business_id)
        expires_at = self._negative.get(key)
        if expires_at is not None:
            if expires_at > now:
                self.negative_hits += 1
                self._counters.negative_hits.inc()
                return True, None
            del self._negative[key]
        return False, None

    async def get(self, key: str, load: Callable[[], Awaitable[V | None]]) -> tuple[V | None, bool]:
        """(value or None for "not found", answered from cache)."""
        found, value = self.peek(key)
        if found:
            return value, True
        self.misses += 1
        self._counters.misses.inc()
        flight = self._flights.get(key)
        if flight is None:
            # The epoch is taken now, not when the task first runs: a write landing in between
            # must still stop this load's answer from being cached.
            flight = asyncio.get_running_loop().create_task(self._load(key, load, self._epoch))
            flight.add_done_callback(_consume_exception)
            self._flights[key] = flight
        # shield: one caller's cancellation (its deadline) must not cancel the shared load.
        return await asyncio.shield(flight), False

    async def _load(
        self, key: str, load: Callable[[], Awaitable[V | None]], epoch: int
    ) -> V | None:
        me = asyncio.current_task()
        try:
            value = await load()
        finally:
            if self._flights.get(key) is me:
                del self._flights[key]
        if epoch == self._epoch:  # nothing was invalidated meanwhile: the answer is current
            if value is None:
                self._put_negative(key)
            else:
                self.put(value)
        return value

    # --- writes -----------------------------------------------------------------------------

    def put(self, value: V) -> None:
        business_id = value.business_id
        if business_id in self._entries:
            self._drop_business(business_id)
        self._entries[business_id] = _Entry(value, self._clock() + self.ttl)
        for key in value.lookup_keys:
            self._index[key] = business_id
            self._negative.pop(key, None)
        while len(self._entries) > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self._unindex(evicted.value)
            self.evictions += 1
            self._counters.evicted_positive.inc()

    def _put_negative(self, key: str) -> None:
        if self.negative_ttl <= 0:
            return
        self._negative[key] = self._clock() + self.negative_ttl
        self._negative.move_to_end(key)
        while len(self._negative) > self.capacity:
            self._negative.popitem(last=False)
            self.evictions += 1
            self._counters.evicted_negative.inc()

    def _unindex(self, value: V) -> None:
        for key in value.lookup_keys:
            if self._index.get(key) == value.business_id:
                del self._index[key]

    def _drop_business(self, business_id: str) -> None:
        entry = self._entries.pop(business_id, None)
        if entry is not None:
            self._unindex(entry.value)

    def invalidate(self, keys: Iterable[str] = (), business_ids: Iterable[str] = ()) -> None:
        """Forget these keys and businesses at once (positive, negative and in-flight)."""
        self._epoch += 1
        for business_id in business_ids:
            self._drop_business(business_id)
        for key in keys:
            owner = self._index.get(key)
            if owner is not None:
                self._drop_business(owner)
            self._negative.pop(key, None)
            self._flights.pop(key, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._index.clear()
        self._negative.clear()
        self._flights.clear()

    def warm(self, values: Iterable[V]) -> int:
        loaded = 0
        for value in values:
            if loaded >= self.capacity:
                break
            self.put(value)
            loaded += 1
        return loaded

    @property
    def epoch(self) -> int:
        return self._epoch


def _consume_exception(task: asyncio.Task[object]) -> None:
    # Every waiter may have gone (deadlines): retrieve the error so asyncio does not warn.
    if not task.cancelled():
        task.exception()
