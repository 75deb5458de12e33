"""The search path: cache → single-flight → breaker → rate limit → provider, and back.

1. A fresh cache entry answers at once (one Redis GET).
2. Otherwise identical concurrent searches in this process share one task, and across replicas
   one holder of a short Redis lock fetches while the others poll the result key.
3. The fetch runs under the provider's circuit breaker and client-side rate limit, on its own
   time (``SEARCH_PROVIDER_TIMEOUT_SECONDS``), not the time of the caller that started it; each
   caller waits for it up to its own deadline. Only the provider's own failures count against
   the breaker, and no fetch is started for a caller with no time left.
4. When the provider fails, its breaker is open, or the deadline passes, the last result for
   the query is served marked stale if it is still within the grace period; if there is none
   the caller gets UNAVAILABLE (or DEADLINE_EXCEEDED) with a plain message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from parley.search.v1 import search_pb2
from services.common.errors import ServiceError, Unavailable
from services.search.breaker import BreakerOpen, CircuitBreaker, State
from services.search.cache import KEY_PREFIX, LOCAL_TOKEN, Cached, ResultCache
from services.search.places import PlaceInfo, Places, normalize
from services.search.providers.base import Provider, ProviderUnavailable, Query
from services.search.ratelimit import ProviderRateLimiter, RateLimitTimeout
from services.search.settings import SearchSettings
from services.search.validation import same_place, today_in

log = structlog.get_logger("parley.search")
T = TypeVar("T")
# Searches for fewer offers than this are answered from the search for this many (the default
# one, which warming fills): cached once, not once per number asked.
SHARED_MAX_RESULTS = 10

SEARCHES = Counter(
    "search_requests_total",
    "Flight searches by how they were answered: hit, miss, stale, error.",
    ["provider", "result"],
)
PROVIDER_CALLS = Counter(
    "search_provider_calls_total",
    "Calls to a provider by outcome: ok, rejected (the query was wrong), failed.",
    ["provider", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "search_provider_seconds",
    "Time a provider took to answer a search.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def _timestamp(epoch: float) -> search_pb2.SearchFlightsResponse:
    response = search_pb2.SearchFlightsResponse()
    response.fetch_time.FromNanoseconds(int(epoch * 1e9))
    return response


class SearchEngine:
    def __init__(
        self,
        places: Places,
        provider: Provider,
        cache: ResultCache,
        settings: SearchSettings,
        redis_url_for_limits: str | None,
    ) -> None:
        self.places = places
        self.provider = provider
        self.cache = cache
        self.settings = settings
        self.breaker = CircuitBreaker(
            provider.breaker_name,
            failure_threshold=settings.search_breaker_failure_threshold,
            recovery_timeout=settings.search_breaker_recovery_seconds,
            half_open_probes=settings.search_breaker_half_open_probes,
        )
        self.breakers = {self.breaker.name: self.breaker}
        self.limiter = ProviderRateLimiter(
            provider.name, provider.rate_limit_per_second, redis_url_for_limits
        )
        # A provider that retries within a call takes a slot per request; others one per call.
        self._paced_by_provider = provider.pace_requests(self.limiter.acquire)
        self._inflight: dict[str, asyncio.Task[search_pb2.SearchFlightsResponse]] = {}
        self._hits = SEARCHES.labels(provider.name, "hit")
        for origin, destination in settings.popular_routes:
            for place in (origin, destination):
                if places.get(place) is None:
                    raise ValueError(f"SEARCH_POPULAR_ROUTES: unknown IATA code {place}")
            # A warm without routes would spend a provider call a day on a trip SearchFlights
            # refuses (WarmCache refuses the same route when a caller names it).
            if same_place(origin, destination, places):
                raise ValueError(
                    f"SEARCH_POPULAR_ROUTES: {origin}-{destination} is one place (they share an"
                    " airport): no trip to warm"
                )

    async def aclose(self) -> None:
        """Close what the engine opened (the rate limit's client); the cache's client and the
        provider belong to whoever made them."""
        await self.limiter.aclose()

    # -- breakers ----------------------------------------------------------------------------

    def _reset_key(self, name: str) -> str:
        return f"{KEY_PREFIX}:breaker-reset:{name}"

    async def reset_breaker(self, name: str) -> CircuitBreaker | None:
        """Close the breaker ``name`` here and, through Redis, on every replica where it opened
        before now (ResetCircuitBreaker reaches one replica); None when there is none."""
        breaker = self.breakers.get(name)
        if breaker is None:
            return None
        breaker.reset()
        # Past the recovery time a breaker opened before now is half-open anyway.
        seconds = math.ceil(breaker.recovery_timeout)
        await self.cache.put_bytes(self._reset_key(name), repr(time.time()).encode(), seconds)
        return breaker

    async def list_breakers(self) -> list[CircuitBreaker]:
        await self._follow_resets()
        return list(self.breakers.values())

    async def _follow_resets(self) -> None:
        """Close this replica's breaker when another replica reset it after it opened here."""
        breaker = self.breaker
        opened = breaker.opened_wall_time
        if opened is None or breaker.state is State.CLOSED:
            return
        raw = await self.cache.get_bytes(self._reset_key(breaker.name))
        try:
            reset_at = float(raw) if raw is not None else 0.0
        except ValueError:  # not ours
            return
        if reset_at > opened:
            breaker.reset()
            log.info("circuit breaker reset through another replica", name=breaker.name)

    # -- flights -----------------------------------------------------------------------------

    def _answer(
        self, cached: Cached, *, stale: bool, now: float
    ) -> search_pb2.SearchFlightsResponse:
        response = cached.response
        response.from_cache = True
        response.stale = stale
        response.age.FromNanoseconds(int(cached.age(now) * 1e9))
        return response

    async def search(self, query: Query, deadline: float) -> search_pb2.SearchFlightsResponse:
        asked = query.max_results
        # Fewer than SHARED_MAX_RESULTS offers are the cheapest of that many, fetched and cached
        # under one key: the bot's 9, warming's 10 and a caller's 3 share an entry.
        if asked < SHARED_MAX_RESULTS:
            query = replace(query, max_results=SHARED_MAX_RESULTS)
        key = ResultCache.key(self.provider.name, query.key())
        cached = await self.cache.get(key)
        now = time.time()
        if cached is not None and self.cache.is_fresh(cached, now):
            self._hits.inc()
            answer = _still_to_leave(self._answer(cached, stale=False, now=now), query, now)
        else:
            answer = await self._coalesced(key, query, cached, deadline)
            answer = _still_to_leave(answer, query, time.time())
            if len(answer.offers) > asked:  # one answer for every caller of the fetch: a copy
                shared, answer = answer, search_pb2.SearchFlightsResponse()
                answer.CopyFrom(shared)
        del answer.offers[asked:]  # after the departed ones left: up to `asked` still to fly
        return answer

    async def _coalesced(
        self, key: str, query: Query, stale: Cached | None, deadline: float
    ) -> search_pb2.SearchFlightsResponse:
        task = self._inflight.get(key)
        if task is None:
            if deadline <= time.monotonic():  # e.g. a WarmCache call out of time
                return self._too_late(stale)
            task = asyncio.create_task(self._load(key, query, stale))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                answer = await asyncio.shield(task)
        except TimeoutError:
            return self._too_late(stale)
        except ServiceError:
            SEARCHES.labels(self.provider.name, "error").inc()
            raise
        # Counted here, once per caller, not in the shared fetch: every caller that joined it is
        # a search answered the way the fetch was.
        result = "stale" if answer.stale else "hit" if answer.from_cache else "miss"
        SEARCHES.labels(self.provider.name, result).inc()
        return answer

    def _too_late(self, stale: Cached | None) -> search_pb2.SearchFlightsResponse:
        if self.cache.servable(stale):
            SEARCHES.labels(self.provider.name, "stale").inc()
            return self._answer(stale, stale=True, now=time.time())
        SEARCHES.labels(self.provider.name, "error").inc()
        raise DeadlineExceeded("the flight search took longer than the call's deadline") from None

    def _done(self, key: str, task: asyncio.Task[search_pb2.SearchFlightsResponse]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so callers that gave up leave no warning

    async def _load(
        self, key: str, query: Query, stale: Cached | None
    ) -> search_pb2.SearchFlightsResponse:
        # Shared by every caller of the query, so on the provider's time, not the first caller's:
        # a patient caller that joins an impatient one's fetch still gets its answer.
        deadline = time.monotonic() + self.settings.search_provider_timeout_seconds
        if not self.breaker.allows():
            await self._follow_resets()
            if not self.breaker.allows():
                return self._fallback(stale, "circuit breaker open")
        # What we read is being replaced: only an answer fetched since is another replica's new
        # one (warming reads entries that are still fresh, past half their TTL).
        read_at = stale.fetched_at if stale is not None else None
        token = await self.cache.try_lock(key)
        if token is None:  # another replica is fetching this query: wait for its result
            waited = await self.cache.wait_fresh(
                key,
                min(deadline, time.monotonic() + self.settings.search_lock_seconds),
                newer_than=read_at,
            )
            if waited is not None:
                return self._answer(waited, stale=False, now=time.time())
            token = await self.cache.try_lock(key) or LOCAL_TOKEN
        elif token != LOCAL_TOKEN:
            # Another replica may have filled the key between our read and our lock.
            filled = await self.cache.get(key)
            if self.cache.is_new(filled, read_at):
                await self.cache.unlock(key, token)
                return self._answer(filled, stale=False, now=time.time())
        try:
            try:
                offers = await self.call_provider(
                    lambda: self.provider.search(query, deadline), deadline
                )
            except ServiceError:  # the provider refused the query: each caller gets it
                raise
            except Exception as error:
                if not isinstance(error, _EXPECTED):
                    log.exception(
                        "provider raised an unexpected error", provider=self.provider.name
                    )
                return self._fallback(stale, _reason(error))
            response = _timestamp(time.time())
            response.offers.extend(offers)
            response.provider = self.provider.name
            response.demo_data = self.provider.demo_data
            await self.cache.put(key, response)
        finally:
            # Only after the write: a replica waiting on the lock that finds it gone without a
            # fresh result takes that for a failure and calls the provider itself.
            await self.cache.unlock(key, token)
        fresh = search_pb2.SearchFlightsResponse()
        fresh.CopyFrom(response)
        fresh.age.FromNanoseconds(0)
        return fresh

    async def call_provider(
        self,
        call: Callable[[], Awaitable[T]],
        deadline: float,
        caller_deadline: float | None = None,
    ) -> T:
        """One provider call under its breaker and rate limit. ``deadline`` is the provider's own
        (running out of it is the provider's failure); ``caller_deadline``, when given, is the
        caller's (running out of it is no verdict). A call with no time left is not started."""
        end = deadline if caller_deadline is None else min(deadline, caller_deadline)
        if end <= time.monotonic():
            raise TimeoutError("no time left for a provider call")
        # The caller's time runs outside the guard: when it ends the call is cancelled, which
        # the breaker takes as no verdict. The breaker's permission comes before the rate limit,
        # so a call it refuses (BreakerOpen) takes no slot and is not counted as a provider call.
        caller_time = None
        if caller_deadline is not None:
            caller_time = max(0.0, caller_deadline - time.monotonic())
        async with (
            asyncio.timeout(caller_time),
            self.breaker.guard(ok=(ServiceError,), abandon=(RateLimitTimeout,)),
        ):
            if not self._paced_by_provider:
                await self.limiter.acquire(end)
            start = time.perf_counter()
            outcome: str | None = "failed"
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    result = await call()
                outcome = "ok"
                return result
            except ServiceError:
                outcome = "rejected"
                raise
            except RateLimitTimeout:
                outcome = None  # no slot for its first request: nothing reached the provider
                raise
            finally:
                if outcome is not None:
                    PROVIDER_CALLS.labels(self.provider.name, outcome).inc()
                    elapsed = time.perf_counter() - start
                    PROVIDER_SECONDS.labels(self.provider.name).observe(elapsed)

    def _fallback(self, stale: Cached | None, reason: str) -> search_pb2.SearchFlightsResponse:
        if self.cache.servable(stale):
            log.warning("serving stale results", provider=self.provider.name, reason=reason)
            return self._answer(stale, stale=True, now=time.time())
        log.warning("search failed", provider=self.provider.name, reason=reason)
        raise Unavailable("flight search is temporarily unavailable; please try again shortly")

    # -- warming -----------------------------------------------------------------------------

    async def warm(
        self, routes: list[tuple[str, str]], days_ahead: int, deadline: float
    ) -> tuple[int, int, int]:
        """Fetch the default query (1 adult, economy, one way, 10 results, the provider's
        currency) for each route and each of the next ``days_ahead`` days, unless the cache
        already has it for more than half its TTL. Returns (warmed, failed, not_started): at
        the deadline no search is started, and those running are counted failed (they finish
        on the provider's time and fill the cache all the same)."""
        routes = routes or self.settings.popular_routes
        jobs: list[Query] = []
        for origin, destination in routes:
            place = self.places.get(origin)
            start = today_in(place.tz if place else "UTC")
            for offset in range(1, days_ahead + 1):
                day = start + dt.timedelta(days=offset)
                jobs.append(
                    Query(
                        origin,
                        destination,
                        day,
                        None,
                        1,
                        search_pb2.CABIN_ECONOMY,
                        False,
                        SHARED_MAX_RESULTS,
                        "",
                    )
                )
        outcomes: list[bool] = []

        async def one(query: Query) -> bool | None:
            """Whether the search warmed its entry; None when the deadline came first."""
            key = ResultCache.key(self.provider.name, query.key())
            cached = await self.cache.get(key)
            if cached is not None and cached.age() < self.cache.ttl / 2:
                return True
            if deadline <= time.monotonic():
                return None
            if not self.cache.available:  # a fetch would spend the provider's quota, kept nowhere
                return False
            try:
                response = await self._coalesced(key, query, cached, deadline)
            except Exception as error:
                log.info("warming a search failed", key=key, error=_reason(error))
                return False
            # Not warmed when the write failed (the cache steps around Redis for a while then).
            return not response.stale and self.cache.available

        # SEARCH_WARM_CONCURRENCY workers take the searches in turn, and none past the deadline:
        # the answer is made before it, whatever is left (a coroutine per search waiting its turn
        # would each read the cache after the deadline, one after another, and miss it).
        pending = iter(jobs)

        async def worker() -> None:
            for query in pending:
                if deadline <= time.monotonic():
                    return
                outcome = await one(query)
                if outcome is None:
                    return
                outcomes.append(outcome)

        workers = min(self.settings.search_warm_concurrency, len(jobs))
        await asyncio.gather(*(worker() for _ in range(workers)))
        warmed = sum(outcomes)
        failed, not_started = len(outcomes) - warmed, len(jobs) - len(outcomes)
        log.info("cache warmed", warmed=warmed, failed=failed, not_started=not_started)
        return warmed, failed, not_started

    # -- places ------------------------------------------------------------------------------

    async def resolve(
        self, text: str, limit: int, deadline: float
    ) -> list[search_pb2.PlaceCandidate]:
        """Local index first; the provider's locations API only for text it cannot place."""
        found = self.places.resolve(text, limit)
        answer = [search_pb2.PlaceCandidate(place=c.place.to_proto(), score=c.score) for c in found]
        if (found and found[0].score >= 75) or type(self.provider).locations is Provider.locations:
            return answer
        remote = await self._remote_places(text, limit, deadline)
        known = {c.place.code for c in answer}
        for rank, place in enumerate(remote):
            # Amadeus answers a city and its airport under one code; and a code the local index
            # does not know (a new airport) is one SearchFlights refuses: not offered.
            if place.code not in known and self.places.get(place.code) is not None:
                known.add(place.code)
                answer.append(search_pb2.PlaceCandidate(place=place, score=max(50.0, 74.0 - rank)))
        answer.sort(key=lambda c: -c.score)
        return answer[:limit]

    async def _remote_places(
        self, text: str, limit: int, deadline: float
    ) -> list[search_pb2.Place]:
        # "places2": the release before wrote "places" with the locations API's LIGHT view (no
        # country code) and no subdivision; its entries, and those its replicas write while an
        # upgrade rolls, are never read as this release's.
        key = f"{KEY_PREFIX}:{self.provider.name}:places2:{limit}:{normalize(text)[:100]}"
        raw = await self.cache.get_bytes(key)
        if raw is not None:
            cached = search_pb2.ResolvePlaceResponse()
            try:
                cached.ParseFromString(raw)
            except DecodeError:  # not ours (a corrupt or foreign value): a miss, rewritten below
                pass
            else:
                return [c.place for c in cached.candidates]
        cap = time.monotonic() + 3.0  # the locations API's own time
        try:
            places = await self.call_provider(
                lambda: self.provider.locations(text, limit, cap), cap, deadline
            )
        except Exception as error:  # the local answer stands
            log.info("provider locations failed", reason=_reason(error))
            return []
        response = search_pb2.ResolvePlaceResponse(
            candidates=[search_pb2.PlaceCandidate(place=p) for p in places]
        )
        await self.cache.put_bytes(key, response.SerializeToString())
        return places

    def nearest(self, lat: float, lon: float, limit: int) -> list[tuple[PlaceInfo, float]]:
        return self.places.nearest(lat, lon, limit)


def _still_to_leave(
    response: search_pb2.SearchFlightsResponse, query: Query, now: float
) -> search_pb2.SearchFlightsResponse:
    """Without the offers whose first flight has already left: a search for today gets them
    from the offline provider (06:00 flights at 23:00) and from the cache (answers up to a day
    old when served stale)."""
    # A departure date from the day after tomorrow (UTC) on is in the future everywhere.
    if query.departure > dt.datetime.fromtimestamp(now, dt.UTC).date() + dt.timedelta(days=1):
        return response
    kept = [offer for offer in response.offers if not _has_left(offer, now)]
    if len(kept) < len(response.offers):
        del response.offers[:]
        response.offers.extend(kept)
    return response


def _has_left(offer: search_pb2.FlightOffer, now: float) -> bool:
    try:
        leaves = dt.datetime.fromisoformat(offer.itineraries[0].segments[0].departure_time)
    except (IndexError, ValueError):
        return False
    return leaves.tzinfo is not None and leaves.timestamp() <= now


_EXPECTED = (ProviderUnavailable, BreakerOpen, RateLimitTimeout, TimeoutError)


def _reason(error: BaseException) -> str:
    if isinstance(error, ProviderUnavailable | BreakerOpen | RateLimitTimeout):
        return str(error)
    if isinstance(error, TimeoutError):
        return "provider call timed out"
    return f"{type(error).__name__}: {error}"
