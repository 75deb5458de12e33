"""The search path on a real Valkey: cache, single-flight (in process and across replicas),
stale-on-error, the breaker driven by a failing provider, warming, the rate limit, and
degrading when Redis is down."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from prometheus_client import REGISTRY

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument, Unavailable
from services.common.redis_client import make_redis
from services.search.breaker import CircuitBreaker, State
from services.search.cache import ResultCache
from services.search.engine import DeadlineExceeded, SearchEngine
from services.search.places import Places
from services.search.providers.base import Provider, ProviderUnavailable, Query
from services.search.ratelimit import ProviderRateLimiter, RateLimitTimeout
from services.search.settings import SearchSettings
from services.search.validation import SearchChecks, today_in
from tests.support.processes import Valkey, free_port

DAY = dt.date.today() + dt.timedelta(days=14)
_names = itertools.count()


class FakeProvider(Provider):
    """A scriptable provider: counts calls, can be slow, held until released, fail, or reject."""

    demo_data = False

    def __init__(self, delay: float = 0.0) -> None:
        self.name = f"fake{next(_names)}"  # own cache keys per test
        self.breaker_name = f"{self.name}_api"
        self.delay = delay
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.failing = False
        self.reject = False
        self.hold: asyncio.Event | None = None  # when given, each call waits until it is set
        self.called = asyncio.Event()

    async def search(self, query: Query, deadline: float) -> list[search_pb2.FlightOffer]:
        self.calls += 1
        self.called.set()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.failing:
                raise ProviderUnavailable("fake outage")
            if self.reject:
                raise InvalidArgument("origin", "the provider does not serve this route")
            return [
                search_pb2.FlightOffer(
                    id=f"{query.key()}#{self.calls}",
                    total_price=search_pb2.Money(currency_code="USD", amount="100.00"),
                )
            ]
        finally:
            self.concurrent -= 1


class PlacesProvider(FakeProvider):
    """A fake provider with a locations API too (asked for text the local index cannot place)."""

    async def locations(self, keyword: str, limit: int, deadline: float) -> list[search_pb2.Place]:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        return [search_pb2.Place(code="DAG", name=keyword)]


def query(origin: str = "JFK", destination: str = "LHR", day: dt.date = DAY) -> Query:
    return Query(origin, destination, day, None, 1, search_pb2.CABIN_ECONOMY, False, 10, "")


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


Build = Callable[..., SearchEngine]


async def until_half_open(breaker: CircuitBreaker, seconds: float = 5.0) -> None:
    """Poll (the breaker turns half-open lazily, when asked) until the recovery timeout passed."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.02)):
        if breaker.state is State.HALF_OPEN or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert breaker.state is State.HALF_OPEN


@pytest.fixture
async def build(valkey: Valkey, places: Places) -> AsyncIterator[Build]:
    clients: list[aioredis.Redis] = []
    engines: list[SearchEngine] = []

    def make(provider: Provider, url: str | None = None, **settings: object) -> SearchEngine:
        url = url or valkey.url
        # Generous timeouts: a loaded machine (CI) took over 0.2 s to accept a connection to
        # the live Valkey, and the cache stepped aside; a dead port is refused at once anyway.
        client = make_redis(url, retries=0, connect_timeout=2.0, socket_timeout=2.0)
        clients.append(client)
        config = SearchSettings(redis_url=url, **settings)  # type: ignore[arg-type]
        cache = ResultCache(
            client,
            ttl_seconds=config.redis_cache_ttl_seconds,
            grace_seconds=config.search_stale_grace_seconds,
            lock_seconds=config.search_lock_seconds,
        )
        engines.append(SearchEngine(places, provider, cache, config, url))
        return engines[-1]

    yield make
    for engine in engines:
        await engine.aclose()
    for client in clients:
        await client.aclose()


async def test_second_search_is_a_cache_hit_with_its_age(build: Build) -> None:
    provider = FakeProvider()
    engine = build(provider)
    first = await engine.search(query(), soon())
    assert (first.from_cache, first.stale, first.provider) == (False, False, provider.name)
    assert first.age.ToNanoseconds() == 0
    second = await engine.search(query(), soon())
    assert second.from_cache and not second.stale
    assert second.fetch_time == first.fetch_time
    assert 0 <= second.age.ToMilliseconds() < 5000
    assert [o.id for o in second.offers] == [o.id for o in first.offers]
    assert provider.calls == 1


async def test_hundred_identical_uncached_searches_make_one_provider_call(build: Build) -> None:
    provider = FakeProvider(delay=0.05)
    engine = build(provider)
    answers = await asyncio.gather(*(engine.search(query(), soon()) for _ in range(100)))
    assert provider.calls == 1
    assert {a.offers[0].id for a in answers} == {answers[0].offers[0].id}


async def test_a_familys_search_is_neither_joined_to_nor_cached_as_the_adults_alone(
    build: Build,
) -> None:
    """Children and infants are part of the single-flight and cache key: two adults and two
    adults with a child and a lap infant, searched at the same moment, are two provider calls,
    each answered with its own party's offers, and each cached under its own key."""
    provider = FakeProvider()
    provider.hold = asyncio.Event()
    engine = build(provider)
    adults = query()
    family = replace(adults, children=1, infants=1)
    alone = asyncio.create_task(engine.search(adults, soon()))
    await provider.called.wait()
    with_family = asyncio.create_task(engine.search(family, soon()))
    for _ in range(100):  # until the family's call has reached the provider too
        if provider.calls == 2:
            break
        await asyncio.sleep(0.01)
    provider.hold.set()
    answers = await asyncio.gather(alone, with_family)
    assert provider.calls == 2
    assert [a.offers[0].id.split("#")[0] for a in answers] == [adults.key(), family.key()]
    assert family.key() != adults.key()
    again = await engine.search(family, soon())
    assert again.from_cache and again.offers[0].id == answers[1].offers[0].id


def searches(provider: Provider) -> dict[str, float]:
    """search_requests_total for ``provider``, by result."""
    return {
        result: REGISTRY.get_sample_value(
            "search_requests_total", {"provider": provider.name, "result": result}
        )
        or 0.0
        for result in ("hit", "miss", "stale", "error")
    }


async def test_every_search_is_counted_once_by_how_it_was_answered(build: Build) -> None:
    """search_requests_total is "flight searches by how they were answered" (hit ratio = hit /
    all). It counted the shared fetch instead: 100 identical searches at once were 1 miss, and
    a caller that ran out of time was an error while the fetch it started was a miss as well."""
    provider = FakeProvider(delay=0.05)
    engine = build(provider)
    await asyncio.gather(*(engine.search(query(), soon()) for _ in range(100)))
    await engine.search(query(), soon())
    assert searches(provider) == {"hit": 1, "miss": 100, "stale": 0, "error": 0}

    provider = FakeProvider()
    provider.hold = asyncio.Event()
    engine = build(provider)
    await engine.cache.get_bytes("connected")
    impatient = asyncio.create_task(engine.search(query("LAX", "SFO"), soon(0.5)))
    await provider.called.wait()
    patient = asyncio.create_task(engine.search(query("LAX", "SFO"), soon(30)))
    with pytest.raises(DeadlineExceeded):
        await impatient
    provider.hold.set()
    await patient
    assert searches(provider) == {"hit": 0, "miss": 1, "stale": 0, "error": 1}


async def test_single_flight_holds_across_replicas(build: Build) -> None:
    provider = FakeProvider(delay=0.5)  # one provider account, two replicas
    replicas = [build(provider), build(provider)]
    answers = await asyncio.gather(
        *(replicas[i % 2].search(query("LAX", "JFK"), soon()) for i in range(40))
    )
    assert provider.calls == 1
    assert {a.offers[0].id for a in answers} == {answers[0].offers[0].id}
    # The replica that waited answered from the cache the other one filled.
    assert any(a.from_cache for a in answers) and any(not a.from_cache for a in answers)


async def test_the_result_is_written_before_the_lock_is_released(
    build: Build, valkey: Valkey
) -> None:
    """The replicas waiting on a query's lock take it being gone without a fresh result as the
    holder's failure and fetch themselves: the holder must write the result first. Read from
    Valkey's keyspace events, in the order Valkey applied the commands. (Was a bug: the lock was
    released in a ``finally`` before the result was written, so a replica polling between the
    two called the provider again.)"""
    provider = FakeProvider()
    engine = build(provider)
    key = ResultCache.key(provider.name, query("SEA", "JFK").key())
    client = aioredis.from_url(valkey.url)
    pubsub = client.pubsub()
    try:
        await client.config_set("notify-keyspace-events", "K$g")
        await pubsub.psubscribe(f"__keyspace@0__:{key}*")
        await engine.search(query("SEA", "JFK"), soon())
        await client.set(f"{key}:done", b"1")  # the last event to wait for
        events: list[tuple[str, str]] = []
        async with asyncio.timeout(10):
            while not events or events[-1] != (f"{key}:done", "set"):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:  # the subscription's confirmation, or nothing yet
                    continue
                channel = message["channel"].decode().removeprefix("__keyspace@0__:")
                events.append((channel, message["data"].decode()))
    finally:
        await pubsub.aclose()
        await client.config_set("notify-keyspace-events", "")
        await client.aclose()
    writes = [event for event in events if event[1] != "expire"]  # SET … PX says both
    assert writes[:3] == [(f"{key}:lock", "set"), (key, "set"), (f"{key}:lock", "del")]


async def test_stale_result_is_served_when_the_provider_fails(build: Build) -> None:
    provider = FakeProvider()
    engine = build(provider, redis_cache_ttl_seconds=60, search_stale_grace_seconds=86400)
    key = ResultCache.key(provider.name, query().key())
    old = search_pb2.SearchFlightsResponse(provider=provider.name)
    old.offers.add(id="yesterday")
    old.fetch_time.FromNanoseconds(int((time.time() - 7200) * 1e9))  # two hours old: expired
    await engine.cache.put(key, old)
    provider.failing = True
    answer = await engine.search(query(), soon())
    assert answer.stale and answer.from_cache
    assert answer.offers[0].id == "yesterday"
    assert 7100 < answer.age.seconds < 7300
    assert provider.calls == 1
    # Without a stale copy the caller gets UNAVAILABLE with a plain message.
    with pytest.raises(Unavailable):
        await engine.search(query("JFK", "CDG"), soon())


async def test_failure_open_half_open_recovery(build: Build) -> None:
    provider = FakeProvider()
    engine = build(
        provider,
        search_breaker_failure_threshold=3,
        search_breaker_recovery_seconds=0.3,
        search_breaker_half_open_probes=1,
    )
    breaker = engine.breaker
    provider.failing = True
    days = [DAY + dt.timedelta(days=i) for i in range(10)]
    for day in days[:3]:
        with pytest.raises(Unavailable):
            await engine.search(query(day=day), soon())
    assert breaker.state is State.OPEN and provider.calls == 3
    # Open: the provider is not called at all.
    with pytest.raises(Unavailable):
        await engine.search(query(day=days[3]), soon())
    assert provider.calls == 3
    # After the recovery timeout: half-open, one probe; it fails → open again.
    await until_half_open(breaker)
    with pytest.raises(Unavailable):
        await engine.search(query(day=days[4]), soon())
    assert breaker.state is State.OPEN and provider.calls == 4
    # The provider recovers; the next probe succeeds and closes the breaker.
    provider.failing = False
    await until_half_open(breaker)
    answer = await engine.search(query(day=days[5]), soon())
    assert not answer.stale and breaker.state is State.CLOSED and provider.calls == 5
    assert breaker.to_proto().failure_count == 0


async def test_open_breaker_serves_stale_without_calling(build: Build) -> None:
    provider = FakeProvider()
    engine = build(provider, search_breaker_failure_threshold=1)
    key = ResultCache.key(provider.name, query().key())
    old = search_pb2.SearchFlightsResponse(provider=provider.name)
    old.fetch_time.FromNanoseconds(int((time.time() - 4000) * 1e9))
    await engine.cache.put(key, old)
    engine.breaker.on_failure()
    assert engine.breaker.state is State.OPEN
    answer = await engine.search(query(), soon())
    assert answer.stale and provider.calls == 0


async def test_a_reset_through_one_replica_closes_every_replicas_breaker(build: Build) -> None:
    """ResetCircuitBreaker reaches one replica (the gateway's admin endpoint calls whichever its
    channel picks); the others find the reset in Redis at their next search or listing and
    close their breaker too, unless it opened after the reset. (Was a bug: only the replica
    called was reset; the others refused the provider until their recovery time had passed.)"""
    provider = FakeProvider()
    settings = {"search_breaker_failure_threshold": 1, "search_breaker_recovery_seconds": 600}
    called, searching, listing = (build(provider, **settings) for _ in range(3))
    for replica in (called, searching, listing):
        replica.breaker.on_failure()
    await called.reset_breaker(called.breaker.name)
    assert called.breaker.state is State.CLOSED
    answer = await searching.search(query("BOS", "SFO"), soon())
    assert not answer.stale and provider.calls == 1
    assert searching.breaker.state is State.CLOSED
    assert [b.state for b in await listing.list_breakers()] == [State.CLOSED]
    searching.breaker.on_failure()  # opened after the reset: it stands
    with pytest.raises(Unavailable):
        await searching.search(query("BOS", "SEA"), soon())
    assert provider.calls == 1


async def test_a_call_the_breaker_refuses_is_not_a_provider_call(build: Build) -> None:
    """Half-open with one probe, two searches for different routes race for it while the rate
    limit makes them wait: the loser is refused before it takes a rate-limit slot, and
    search_provider_calls_total counts only the call that reached the provider."""
    provider = FakeProvider()
    provider.rate_limit_per_second = 1
    provider.hold = asyncio.Event()
    engine = build(
        provider, search_breaker_failure_threshold=1, search_breaker_recovery_seconds=0.05
    )
    engine.breaker.on_failure()
    await until_half_open(engine.breaker)
    await engine.limiter.acquire(soon())  # this second's slot is gone: both searches wait
    searches = [
        asyncio.create_task(engine.search(query("JFK", to), soon(30))) for to in ("CDG", "LHR")
    ]
    done, pending = await asyncio.wait(searches, return_when=asyncio.FIRST_COMPLETED)
    with pytest.raises(Unavailable):  # refused, and nothing stale to serve
        done.pop().result()
    provider.hold.set()
    answer = await pending.pop()
    assert not answer.stale and provider.calls == 1
    assert engine.breaker.state is State.CLOSED

    def calls(outcome: str) -> float | None:
        labels = {"provider": provider.name, "outcome": outcome}
        return REGISTRY.get_sample_value("search_provider_calls_total", labels)

    assert (calls("ok"), calls("failed")) == (1, None)


async def test_the_providers_rejection_reaches_the_caller_and_is_not_a_failure(
    build: Build,
) -> None:
    provider = FakeProvider()
    provider.reject = True
    engine = build(provider, search_breaker_failure_threshold=1)
    with pytest.raises(InvalidArgument):
        await engine.search(query(), soon())
    assert engine.breaker.state is State.CLOSED


async def test_a_slow_provider_hits_the_deadline(build: Build) -> None:
    provider = FakeProvider(delay=2.0)
    engine = build(provider)
    with pytest.raises(DeadlineExceeded):
        await engine.search(query(), soon(0.2))
    key = ResultCache.key(provider.name, query("JFK", "CDG").key())
    old = search_pb2.SearchFlightsResponse(provider=provider.name)
    old.fetch_time.FromNanoseconds(int((time.time() - 4000) * 1e9))
    await engine.cache.put(key, old)
    answer = await engine.search(query("JFK", "CDG"), soon(0.2))
    assert answer.stale


async def test_a_copy_past_its_grace_is_never_served(build: Build) -> None:
    """A copy older than the TTL and the grace (one written while SEARCH_STALE_GRACE_SECONDS
    was longer, which Redis keeps to its old expiry) is served neither when the provider fails
    nor when the caller's deadline comes first. (Was a bug: the deadline served it, days old.)"""
    provider = FakeProvider(delay=2.0)
    engine = build(provider, redis_cache_ttl_seconds=60, search_stale_grace_seconds=60)
    key = ResultCache.key(provider.name, query().key())
    old = search_pb2.SearchFlightsResponse(provider=provider.name)
    old.offers.add(id="last week")
    old.fetch_time.FromNanoseconds(int((time.time() - 7 * 86400) * 1e9))
    await engine.cache.client.set(key, old.SerializeToString(), ex=86400)
    with pytest.raises(DeadlineExceeded):
        await engine.search(query(), soon(0.2))
    provider.delay, provider.failing = 0.0, True
    with pytest.raises(Unavailable):
        await engine.search(query(), soon())


async def test_a_callers_deadline_is_not_a_provider_failure(build: Build) -> None:
    """The provider is healthy but slower than the caller's deadline: the breaker counts only the
    provider's own failures, so impatient callers cannot open it for everyone."""
    provider = PlacesProvider()
    provider.hold = asyncio.Event()  # answers only after the callers gave up
    engine = build(provider, search_breaker_failure_threshold=1)
    local = await engine.resolve("zzyzx springs", 3, soon(0.2))  # the local answer stands
    assert "DAG" not in [c.place.code for c in local]
    assert engine.breaker.state is State.CLOSED and engine.breaker.failure_count == 0
    provider.hold.set()
    found = await engine.resolve("zzyzx springs", 3, soon())
    assert "DAG" in [c.place.code for c in found]


async def test_only_places_a_search_accepts_are_offered(build: Build) -> None:
    """The locations API knows codes the local index does not (a new airport, a city code of
    its own), and SearchFlights refuses those as unknown: such a place is not offered, or a
    user who picked it would be told the place does not exist. (Was a bug: it was offered.)"""

    class SomeUnknown(PlacesProvider):
        async def locations(
            self, keyword: str, limit: int, deadline: float
        ) -> list[search_pb2.Place]:
            return [
                search_pb2.Place(code="ZZX", name="Zzyzx Springs"),  # no such code locally
                search_pb2.Place(code="DAG", name="Barstow-Daggett"),
            ]

    engine = build(SomeUnknown())
    found = [c.place.code for c in await engine.resolve("zzyzx springs", 5, soon())]
    assert found == ["DAG"]
    with pytest.raises(InvalidArgument):  # what a search with the other one gets
        SearchChecks(engine.places)(
            search_pb2.SearchFlightsRequest(
                origin="ZZX", destination="LAX", departure_date=DAY.isoformat()
            )
        )


async def test_a_corrupt_cache_entry_is_a_miss(build: Build) -> None:
    """A cached answer that is not ours (another format, a corrupt value) is asked for again
    and replaced, a search's and a locations lookup's alike. (Was a bug for the locations: it
    failed every ResolvePlace of that text with an internal error until it expired.)"""
    provider = PlacesProvider()
    engine = build(provider)
    flights = ResultCache.key(provider.name, query().key())
    await engine.cache.client.set(flights, b'{"offers": []}', ex=3600)
    answer = await engine.search(query(), soon())
    assert not answer.from_cache and answer.offers and provider.calls == 1
    provider.calls = 0
    key = f"search:v1:{provider.name}:places2:3:zzyzx springs"
    await engine.cache.client.set(key, b'{"candidates": []}', ex=3600)
    found = await engine.resolve("zzyzx springs", 3, soon())
    assert "DAG" in [c.place.code for c in found] and provider.calls == 1
    again = await engine.resolve("zzyzx springs", 3, soon())  # from the entry written anew
    assert "DAG" in [c.place.code for c in again] and provider.calls == 1


async def test_a_city_and_its_airport_under_one_code_are_one_candidate(build: Build) -> None:
    """Amadeus's location search answers a city and its airport under one code (its own Munich
    example: CITY MUC and AIRPORT MUC): the user was offered the same place twice."""

    class CityAndAirport(PlacesProvider):
        async def locations(
            self, keyword: str, limit: int, deadline: float
        ) -> list[search_pb2.Place]:
            return [
                search_pb2.Place(code="DAG", name="Daggett", kind=search_pb2.PLACE_KIND_CITY),
                search_pb2.Place(code="DAG", name="Barstow", kind=search_pb2.PLACE_KIND_AIRPORT),
            ]

    engine = build(CityAndAirport())
    found = await engine.resolve("zzyzx springs", 5, soon())
    assert [c.place.code for c in found].count("DAG") == 1


async def test_a_patient_caller_is_answered_by_the_fetch_an_impatient_one_started(
    build: Build,
) -> None:
    """The shared fetch runs on the provider's time: the caller that started it runs out of its
    own (DEADLINE_EXCEEDED), a caller with time left that joined it gets the answer."""
    provider = FakeProvider()
    provider.hold = asyncio.Event()  # the provider answers after the impatient caller gave up
    engine = build(provider, search_breaker_failure_threshold=1)
    await engine.cache.get_bytes("connected")  # the first search's GET needs no new connection
    impatient = asyncio.create_task(engine.search(query(), soon(1.0)))
    started = asyncio.create_task(provider.called.wait())
    await asyncio.wait([started, impatient], return_when=asyncio.FIRST_COMPLETED)
    assert started.done(), "the impatient caller's fetch did not start within its deadline"
    patient = asyncio.create_task(engine.search(query(), soon(30)))
    with pytest.raises(DeadlineExceeded):
        await impatient
    provider.hold.set()
    answer = await patient
    assert not answer.stale and answer.offers and provider.calls == 1
    assert engine.breaker.state is State.CLOSED and engine.breaker.failure_count == 0


async def test_no_provider_call_for_a_caller_with_no_time_left(build: Build) -> None:
    """A WarmCache call out of time (or a search whose deadline passed on the way) starts no
    provider call, and so can neither use the provider's rate limit nor count as its failure."""
    provider = PlacesProvider()
    engine = build(provider, search_breaker_failure_threshold=1)
    assert await engine.warm([("JFK", "LHR"), ("LAX", "SFO")], 3, time.monotonic()) == (0, 0, 6)
    with pytest.raises(DeadlineExceeded):
        await engine.search(query(), time.monotonic())
    await engine.resolve("zzyzx springs", 3, time.monotonic())
    assert provider.calls == 0
    assert engine.breaker.state is State.CLOSED and engine.breaker.failure_count == 0


async def test_warming_counts_and_bounds_concurrency(build: Build) -> None:
    provider = FakeProvider(delay=0.02)
    engine = build(provider, search_warm_concurrency=3)
    warmed, failed, not_started = await engine.warm([("JFK", "LHR"), ("NYC", "PAR")], 5, soon(20))
    assert (warmed, failed, not_started) == (10, 0, 0)
    assert provider.calls == 10 and provider.max_concurrent <= 3
    # Fresh entries are not fetched again; the warmed searches are now hits.
    assert await engine.warm([("JFK", "LHR")], 5, soon(20)) == (5, 0, 0)
    assert provider.calls == 10
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    assert (await engine.search(query("JFK", "LHR", day=tomorrow), soon())).from_cache
    provider.failing = True
    assert await engine.warm([("LAX", "SFO")], 2, soon(20)) == (0, 2, 0)


async def test_warming_refreshes_an_entry_past_half_its_ttl(build: Build) -> None:
    """Entries fresh for more than half their TTL are left alone; the others are fetched again,
    so a cache warmed every half TTL never lets a popular search miss. (Was a bug: the fetch
    found the entry still fresh under its lock, took it for another replica's new answer and
    returned it, so an entry was warmed again only once it had expired.)"""
    provider = FakeProvider()
    engine = build(provider)
    tomorrow = today_in("America/New_York") + dt.timedelta(days=1)
    key = ResultCache.key(provider.name, query(day=tomorrow).key())
    aging = search_pb2.SearchFlightsResponse(provider=provider.name)
    aging.fetch_time.FromSeconds(int(time.time()) - engine.cache.ttl * 3 // 4)
    await engine.cache.put(key, aging)
    assert await engine.warm([("JFK", "LHR")], 1, soon()) == (1, 0, 0)
    assert provider.calls == 1
    refreshed = await engine.cache.get(key)
    assert refreshed is not None and refreshed.age() < engine.cache.ttl / 2
    young = await engine.warm([("JFK", "LHR")], 1, soon())  # now fresh for most of its TTL
    assert young == (1, 0, 0) and provider.calls == 1


async def test_a_warmed_entry_answers_searches_for_fewer_offers(build: Build) -> None:
    """Warming fetches 10 offers a query; the bot asks for 9 (three pages of three), and a caller
    may ask for fewer: those are answered from the warmed entry, cheapest first, not fetched
    again. (Was a bug: the number asked was part of the cache key, so warming never answered
    one of the bot's searches.)"""

    class Many(FakeProvider):
        async def search(self, query: Query, deadline: float) -> list[search_pb2.FlightOffer]:
            self.calls += 1
            return [
                search_pb2.FlightOffer(
                    id=f"{n}", total_price=search_pb2.Money(currency_code="USD", amount=f"{n}")
                )
                for n in range(100, 100 + query.max_results)
            ]

    provider = Many()
    engine = build(provider)
    day = today_in("America/New_York") + dt.timedelta(days=1)
    assert await engine.warm([("JFK", "LHR")], 1, soon()) == (1, 0, 0)
    for asked in (9, 3, 10):
        answer = await engine.search(replace(query("JFK", "LHR", day), max_results=asked), soon())
        assert answer.from_cache and [o.id for o in answer.offers] == [
            str(n) for n in range(100, 100 + asked)
        ]
    assert provider.calls == 1
    # Callers of one fetch that ask for different numbers each get theirs.
    later = day + dt.timedelta(days=1)
    together = await asyncio.gather(
        *(
            engine.search(replace(query("JFK", "LHR", later), max_results=n), soon())
            for n in (2, 9, 5)
        )
    )
    assert [len(a.offers) for a in together] == [2, 9, 5] and provider.calls == 2
    more = await engine.search(replace(query("JFK", "LHR", day), max_results=20), soon())
    assert not more.from_cache and len(more.offers) == 20 and provider.calls == 3


async def test_warming_uses_popular_routes_when_none_are_given(build: Build) -> None:
    provider = FakeProvider()
    engine = build(provider, search_popular_routes="JFK-LHR,LHR-JFK")
    assert await engine.warm([], 2, soon(20)) == (4, 0, 0)


async def test_search_works_uncached_when_redis_is_down(build: Build) -> None:
    provider = FakeProvider()
    engine = build(provider, url=f"redis://127.0.0.1:{free_port()}/0")
    first = await engine.search(query(), soon())
    second = await engine.search(query(), soon())
    assert not first.from_cache and not second.from_cache and provider.calls == 2
    assert not engine.cache.available  # it stepped aside instead of timing out every call


async def test_rate_limit_is_shared_through_redis(valkey: Valkey) -> None:
    name = f"limit{next(_names)}"
    a = ProviderRateLimiter(name, 5, valkey.url)
    b = ProviderRateLimiter(name, 5, valkey.url)
    for _ in range(5):
        await a.acquire(soon(0.5))
    with pytest.raises(RateLimitTimeout):
        await b.acquire(time.monotonic() + 0.05)
    unlimited = ProviderRateLimiter(name, 0, valkey.url)
    for _ in range(100):
        await unlimited.acquire(time.monotonic())


async def test_rate_limited_requests_are_spaced_not_sent_in_a_burst(valkey: Valkey) -> None:
    """N a second means one every 1/N s, for every replica together: Amadeus's test keys allow
    10 a second and no more than 1 request every 100 ms, so ten at once get nine 429s. (Was a
    bug: only the moving window of N per second was kept, which lets N go at the same moment.)"""
    name = f"limit{next(_names)}"
    # 0.4 a second: a window of 2 per 5 s, which lets two go at once, and one every 2.5 s.
    a = ProviderRateLimiter(name, 0.4, valkey.url)
    b = ProviderRateLimiter(name, 0.4, valkey.url)  # another replica
    await a.acquire(soon())
    for limiter in (a, b):
        with pytest.raises(RateLimitTimeout):  # the window has room; the gap does not
            await limiter.acquire(time.monotonic() + 0.1)
    await b.acquire(soon())  # once the gap has passed
    alone = ProviderRateLimiter(name, 0.4, None)  # in-process, as while Redis is unreachable
    await alone.acquire(soon())
    with pytest.raises(RateLimitTimeout):
        await alone.acquire(time.monotonic() + 0.1)


async def commands_sent(observer: aioredis.Redis, action: Awaitable[object]) -> dict[str, int]:
    """The commands Valkey ran while ``action`` ran (the observer's INFO aside), by name."""
    before = await observer.info("commandstats")
    await action
    after = await observer.info("commandstats")
    ran = {
        name.removeprefix("cmdstat_"): stats["calls"] - before.get(name, {}).get("calls", 0)
        for name, stats in after.items()
    }
    return {name: calls for name, calls in ran.items() if calls and name != "info"}


async def test_a_rate_limit_decision_is_one_redis_round_trip(tmp_path: Path) -> None:
    """Each decision, a request let go or one held back, is one EVALSHA on one connection: the
    window and the gap in one script (what else Valkey counts is that script's own commands).
    (Was a bug: a request let go cost three round trips, the window's test, the gap's SET NX PX
    and the window's hit, on two clients, and one held back by the gap a PTTL more.)"""
    valkey = Valkey(tmp_path / "valkey").start()
    observer = aioredis.from_url(valkey.url)
    fast = ProviderRateLimiter("trips", 1000, valkey.url)  # a 1 ms gap
    slow = ProviderRateLimiter("held", 0.5, valkey.url)  # a 2 s gap
    in_script = {"time", "lindex", "lpush", "ltrim", "expire"}
    try:
        await fast.acquire(soon())  # connects and loads the script: once a process
        await slow.acquire(soon())
        await asyncio.sleep(0.01)  # past the 1 ms gap
        let_go = await commands_sent(observer, fast.acquire(soon()))
        assert let_go.pop("evalsha") == 1 and set(let_go) == in_script, let_go

        async def held() -> None:  # by the 2 s gap, with no time to wait it out
            with pytest.raises(RateLimitTimeout):
                await slow.acquire(time.monotonic() + 0.5)

        held_back = await commands_sent(observer, held())
        assert held_back.pop("evalsha") == 1 and set(held_back) <= in_script, held_back
    finally:
        await observer.aclose()
        valkey.stop()


async def test_request_times_are_redis_s_not_each_replica_s(
    valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window and the gap are kept in the times of Redis's clock, so a replica whose clock
    runs ahead holds no other back for longer than the gap. (Was a bug: each replica wrote its
    own clock's time; one 30 s ahead wrote times that the others took for 30 s from now, and
    while it kept sending, they found its last request never over.)"""
    name = f"limit{next(_names)}"
    ahead = ProviderRateLimiter(name, 10, valkey.url)
    observer = aioredis.from_url(valkey.url)
    wall = time.time
    try:
        with monkeypatch.context() as patched:
            patched.setattr(time, "time", lambda: wall() + 30)
            await ahead.acquire(soon())
        (written,) = await observer.lrange(ahead.key, 0, -1)
        # Valkey runs on this machine: its clock is the test's, not the replica's.
        assert float(written) < wall() + 1
    finally:
        await ahead.aclose()
        await observer.aclose()


async def test_rate_limit_falls_back_to_memory_without_redis() -> None:
    limiter = ProviderRateLimiter("nolimit", 3, f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(3):
        await limiter.acquire(soon(2))
    with pytest.raises(RateLimitTimeout):
        await limiter.acquire(time.monotonic() + 0.05)


def outage_lines(logs: list[dict[str, Any]], failed: str, recovered: str) -> tuple[int, int, int]:
    """(warnings, debug repeats, recoveries) among captured log entries."""
    levels = [e["log_level"] for e in logs if e["event"] == failed]
    return (
        levels.count("warning"),
        levels.count("debug"),
        sum(e["event"] == recovered for e in logs),
    )


async def test_a_cache_outage_is_one_warning_and_one_line_when_it_ends(tmp_path: Path) -> None:
    """The cache retries Redis every few seconds while it is down (each search in between goes
    uncached): one warning for the outage, not one a retry, and one line once Redis answers."""
    valkey = Valkey(tmp_path / "valkey").start()
    client = make_redis(valkey.url)
    cache = ResultCache(client, 60, 60, 1.0, retry_after_error=0.05)
    try:
        with structlog.testing.capture_logs() as logs:
            await cache.put_bytes("k", b"v")
            valkey.stop()
            for _ in range(4):  # four retries, each after the cache stepped aside
                assert await cache.get_bytes("k") is None
                assert not cache.available
                await asyncio.sleep(0.06)
            valkey.start()
            assert await cache.get_bytes("k") == b"v"
    finally:
        await client.aclose()
        valkey.stop()
    failed, recovered = "cache unavailable, searching uncached", "cache reachable again"
    assert outage_lines(logs, failed, recovered) == (1, 3, 1)
    assert [e["failures"] for e in logs if e["event"] == recovered] == [4]


async def test_a_rate_limit_store_outage_is_one_warning_and_one_line_when_it_ends(
    tmp_path: Path,
) -> None:
    valkey = Valkey(tmp_path / "valkey").start()
    limiter = ProviderRateLimiter("outage", 1000, valkey.url, retry_after_error=0.05)
    try:
        with structlog.testing.capture_logs() as logs:
            await limiter.acquire(soon())
            valkey.stop()
            for _ in range(3):  # each on the in-process window, after one try of Redis
                await limiter.acquire(soon())
                await asyncio.sleep(0.06)
            valkey.start()
            await limiter.acquire(soon())
    finally:
        valkey.stop()
    failed = "rate limit store unreachable, limiting in-process"
    assert outage_lines(logs, failed, "rate limit store reachable again") == (1, 2, 1)
