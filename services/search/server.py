"""parley.search.v1.SearchService: flight offers with a cache and a circuit breaker."""

from __future__ import annotations

import sys
import time
from typing import Any

import structlog

from parley.search.v1 import search_pb2, search_pb2_grpc
from services.common.errors import InvalidArgument, NotFound
from services.common.redis_client import make_redis, ping
from services.common.server import Service, run
from services.common.settings import configuring, load_settings
from services.search.cache import ResultCache
from services.search.engine import SearchEngine
from services.search.places import Places
from services.search.providers import select_provider
from services.search.settings import SearchSettings
from services.search.validation import (
    SearchChecks,
    validate_nearest,
    validate_resolve,
    validate_warm,
)

SERVICE_NAME = "parley.search.v1.SearchService"
# How long before a call's deadline the engine answers with what it has (at most a tenth of it).
ANSWER_MARGIN_SECONDS = 0.25
log = structlog.get_logger("parley.search")


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, engine: SearchEngine, default_deadline: float) -> None:
        self.engine = engine
        self.places = engine.places
        self._search_checks = SearchChecks(engine.places)
        self._default_deadline = default_deadline

    def _deadline(self, context: Any) -> float:
        """When the engine stops waiting and answers with what it has (a stale copy, the local
        places, a warm's counts): a little before the call's deadline, or that answer would
        meet the deadline's cancellation, and the caller, whose deadline comes first by the
        network's time, would get DEADLINE_EXCEEDED instead."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            remaining = self._default_deadline
        return time.monotonic() + remaining - min(ANSWER_MARGIN_SECONDS, remaining / 10)

    async def SearchFlights(
        self, request: search_pb2.SearchFlightsRequest, context: Any
    ) -> search_pb2.SearchFlightsResponse:
        query = self._search_checks(request)
        response = await self.engine.search(query, self._deadline(context))
        # Who the prices include: a client can tell this answer from an older release's, which
        # ignores children and infants and prices the adults alone.
        response.children, response.infants = query.children, query.infants
        return response

    async def ResolvePlace(
        self, request: search_pb2.ResolvePlaceRequest, context: Any
    ) -> search_pb2.ResolvePlaceResponse:
        text, limit = validate_resolve(request)
        candidates = await self.engine.resolve(text, limit, self._deadline(context))
        return search_pb2.ResolvePlaceResponse(candidates=candidates)

    async def FindNearestAirports(
        self, request: search_pb2.FindNearestAirportsRequest, context: Any
    ) -> search_pb2.FindNearestAirportsResponse:
        lat, lon, limit = validate_nearest(request)
        return search_pb2.FindNearestAirportsResponse(
            airports=[
                search_pb2.NearbyAirport(place=place.to_proto(), distance_km=round(km, 1))
                for place, km in self.engine.nearest(lat, lon, limit)
            ]
        )

    async def WarmCache(
        self, request: search_pb2.WarmCacheRequest, context: Any
    ) -> search_pb2.WarmCacheResponse:
        routes, days = validate_warm(request, self.places)
        warmed, failed, not_started = await self.engine.warm(routes, days, self._deadline(context))
        return search_pb2.WarmCacheResponse(warmed=warmed, failed=failed, not_started=not_started)

    async def ListCircuitBreakers(
        self, request: search_pb2.ListCircuitBreakersRequest, context: Any
    ) -> search_pb2.ListCircuitBreakersResponse:
        return search_pb2.ListCircuitBreakersResponse(
            circuit_breakers=[b.to_proto() for b in await self.engine.list_breakers()]
        )

    async def ResetCircuitBreaker(
        self, request: search_pb2.ResetCircuitBreakerRequest, context: Any
    ) -> search_pb2.ResetCircuitBreakerResponse:
        name = request.name.strip()
        if not name:  # missing, not a breaker that does not exist
            raise InvalidArgument(
                "name", "required: a breaker's name, as ListCircuitBreakers gives"
            )
        # Every replica's, through Redis: this call reaches one of them.
        breaker = await self.engine.reset_breaker(name)
        if breaker is None:
            known = ", ".join(sorted(self.engine.breakers))
            raise NotFound(f"no circuit breaker named {request.name[:64]!r} (known: {known})")
        log.info("circuit breaker reset", name=breaker.name)
        return search_pb2.ResetCircuitBreakerResponse(circuit_breaker=breaker.to_proto())


def build(settings: SearchSettings) -> Service:
    with configuring(settings.effective_redis_url_variable, url=settings.effective_redis_url):
        redis = make_redis(settings.effective_redis_url)
    places = Places()
    provider = select_provider(settings, places)
    cache = ResultCache(
        redis,
        ttl_seconds=settings.redis_cache_ttl_seconds,
        grace_seconds=settings.search_stale_grace_seconds,
        lock_seconds=settings.search_lock_seconds,
    )
    engine = SearchEngine(places, provider, cache, settings, settings.effective_redis_url)
    log.info(
        "search provider",
        provider=provider.name,
        breaker=provider.breaker_name,
        demo_data=provider.demo_data,
    )

    async def readiness() -> None:
        # NOT_SERVING without the cache Redis, so traffic prefers replicas that have it; calls
        # that still arrive are answered uncached (see docs/search.md).
        await ping(redis)

    async def close() -> None:
        await engine.aclose()
        await provider.aclose()
        await redis.aclose()

    return Service(
        name=SERVICE_NAME,
        register=search_pb2_grpc.add_SearchServiceServicer_to_server,
        servicer=SearchServicer(engine, settings.grpc_default_deadline_seconds),
        readiness=readiness,
        on_stop=close,
    )


def main() -> int:
    settings = load_settings(SearchSettings)
    return run(
        lambda: build(settings),
        settings,
        port=settings.search_port,
        metrics_port=settings.search_metrics_port,
        log_name="search",
    )


if __name__ == "__main__":
    sys.exit(main())
