"""SearchService as users reach it: a real process, real gRPC, real Valkey."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
import redis.asyncio as redis

from parley.search.v1 import search_pb2, search_pb2_grpc
from services.common.errors import field_violations
from services.common.healthcheck import check
from services.gateway.bot.places import decide, from_proto
from services.search.places import Places
from services.search.providers.base import Query
from services.search.server import build
from services.search.settings import SearchSettings
from tests.search.fake_amadeus import CLIENT_ID, CLIENT_SECRET, FakeAmadeus
from tests.support.processes import ROOT, ServiceProcess, Valkey, free_port, wait_for

SERVICE = "parley.search.v1.SearchService"


def start(tmp: Path, redis_url: str, **env: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    process = ServiceProcess(
        "services.search.server",
        {
            "SEARCH_PORT": str(port),
            "REDIS_URL": redis_url,
            "SEARCH_METRICS_PORT": "0",
            **env,
        },
        tmp / "search.log",
    ).start()
    address = f"127.0.0.1:{port}"
    process.wait_serving(address, SERVICE)
    return process, address


class Running:
    def __init__(
        self, process: ServiceProcess, address: str, failure_file: Path, metrics_port: int
    ) -> None:
        self.process, self.address, self.failure_file = process, address, failure_file
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, valkey: Valkey) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("search")
    failure_file = tmp / "offline-fails"
    metrics_port = free_port()
    process, address = start(
        tmp,
        valkey.url,
        SEARCH_METRICS_PORT=str(metrics_port),
        REDIS_CACHE_TTL_SECONDS="1",
        SEARCH_BREAKER_FAILURE_THRESHOLD="2",
        SEARCH_BREAKER_RECOVERY_SECONDS="60",
        SEARCH_OFFLINE_FAILURE_FILE=str(failure_file),
    )
    yield Running(process, address, failure_file, metrics_port)
    process.stop()


@pytest.fixture
async def stub(running: Running) -> AsyncIterator[search_pb2_grpc.SearchServiceStub]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def day(offset: int) -> str:
    return (dt.date.today() + dt.timedelta(days=offset)).isoformat()


async def test_search_then_cached(stub: search_pb2_grpc.SearchServiceStub) -> None:
    request = search_pb2.SearchFlightsRequest(
        origin="nyc", destination="LON", departure_date=day(20), return_date=day(27), max_results=4
    )
    first = await stub.SearchFlights(request, timeout=5)
    assert (first.provider, first.demo_data, first.from_cache, first.stale) == (
        "offline",
        True,
        False,
        False,
    )
    assert 1 <= len(first.offers) <= 4
    assert all(o.demo_data and len(o.itineraries) == 2 for o in first.offers)
    second = await stub.SearchFlights(request, timeout=5)
    assert second.from_cache and second.fetch_time == first.fetch_time
    assert [o.id for o in second.offers] == [o.id for o in first.offers]


async def test_invalid_arguments_name_the_fields(stub: search_pb2_grpc.SearchServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SearchFlights(
            search_pb2.SearchFlightsRequest(
                origin="QQQ", destination="LHR", departure_date="2001-01-01", adults=12
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"origin", "departure_date", "adults"} <= set(field_violations(caught.value))


@pytest.mark.parametrize("name", ["", "  "])
async def test_a_breaker_reset_without_a_name_is_invalid_argument(
    stub: search_pb2_grpc.SearchServiceStub, name: str
) -> None:
    """(Was a bug: NOT_FOUND, *no circuit breaker named ''*: a missing argument, not a breaker
    that does not exist.)"""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ResetCircuitBreaker(search_pb2.ResetCircuitBreakerRequest(name=name), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"name"}


async def test_children_and_infants_are_searched_validated_and_cached_apart(
    stub: search_pb2_grpc.SearchServiceStub, valkey: Valkey
) -> None:
    """A family's search prices its children and lap infant (the total is the whole party's)
    and is cached under its own key, never answered with the adults' cached fares."""
    trip = {"origin": "NYC", "destination": "LON", "departure_date": day(23), "max_results": 3}
    adults = await stub.SearchFlights(search_pb2.SearchFlightsRequest(adults=2, **trip), timeout=5)
    family = await stub.SearchFlights(
        search_pb2.SearchFlightsRequest(adults=2, children=1, infants=1, **trip), timeout=5
    )
    assert not family.from_cache and family.demo_data and family.offers
    # The answer says whom its prices include (an older release's leaves both 0).
    assert (family.children, family.infants, adults.children, adults.infants) == (1, 1, 0, 0)
    again = await stub.SearchFlights(
        search_pb2.SearchFlightsRequest(adults=2, children=1, infants=1, **trip), timeout=5
    )
    assert again.from_cache and (again.children, again.infants) == (1, 1)
    assert Decimal(family.offers[0].total_price.amount) > Decimal(
        adults.offers[0].total_price.amount
    )
    client = redis.from_url(valkey.url)
    pattern = f"search:v1:offline:NYC:LON:{day(23)}:*"
    try:
        keys = {k.decode() async for k in client.scan_iter(pattern)}
    finally:
        await client.aclose()
    assert {k.split(":")[7] for k in keys} == {"2", "2a1c1i"}, keys
    # Over the seats of one search, or more infants than laps: the field is named.
    for party, field in (
        ({"adults": 2, "children": 8}, "children"),
        ({"adults": 2, "infants": 3}, "infants"),
        ({"children": -1}, "children"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchFlights(search_pb2.SearchFlightsRequest(**party, **trip), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, party
        assert set(field_violations(caught.value)) == {field}, party


async def test_resolve_place_and_nearest(stub: search_pb2_grpc.SearchServiceStub) -> None:
    answer = await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query="new york"), timeout=5)
    assert answer.candidates[0].place.code == "NYC"
    assert answer.candidates[0].place.kind == search_pb2.PLACE_KIND_CITY
    assert len(answer.candidates) == 5
    answer = await stub.ResolvePlace(
        search_pb2.ResolvePlaceRequest(query="Londn", max_results=2), timeout=5
    )
    assert [c.place.code for c in answer.candidates][:1] == ["LON"]
    assert len(answer.candidates) == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query=""), timeout=5)
    assert "query" in field_violations(caught.value)
    near = await stub.FindNearestAirports(
        search_pb2.FindNearestAirportsRequest(latitude=48.8566, longitude=2.3522), timeout=5
    )
    assert {a.place.code for a in near.airports} >= {"CDG", "ORY"}
    assert near.airports[0].distance_km < 30


# Names customers write that found another place or nothing ("sun valley" was Harlingen,
# whose airport is "Valley International"; "NY" found nothing; "ohare" was Havre, Montana).
# Later (the one each found before): "Malta" Malta, Montana (Malta's airport is filed under
# Luqa); "Haneda" Handan (Haneda is "Tokyo International"); "Marsella"
# Marseille below the bot's 80; Portuguese "Pequim", "Xangai", "Marselha" and "Tóquio" Sequim,
# Xiangxi, Marshall and a guess; "Philly" nothing; "NOLA" Ndola.
@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("sun valley", "SUN"),
        ("NY", "NYC"),
        ("ny", "NYC"),
        ("ohare", "ORD"),
        ("Malta", "MLA"),
        ("Haneda", "HND"),
        ("Marsella", "MRS"),
        ("Marselha", "MRS"),
        ("Pequim", "BJS"),
        ("Xangai", "PVG"),
        ("Tóquio", "TYO"),
        ("Philly", "PHL"),
        ("NOLA", "MSY"),
    ],
)
async def test_resolve_place_knows_what_customers_call_places(
    stub: search_pb2_grpc.SearchServiceStub, query: str, first: str
) -> None:
    answer = await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query=query), timeout=5)
    assert [c.place.code for c in answer.candidates][:1] == [first]
    # And the bot takes it without asking (not a guess, no namesake as close).
    found = decide(query, [from_proto(c.place, c.score) for c in answer.candidates])
    assert found.place is not None and found.place.code == first


# A state, province or country after a city's name chooses among the places of that name; it
# was ignored as an extra word (every one of these gave the bigger namesake first).
@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("london ontario", "YXU"),
        ("London, ON", "YXU"),
        ("Portland OR", "PDX"),
        ("Portland, Maine", "PWM"),
        ("portland me", "PWM"),
        ("Paris TX", "PRX"),
        ("Paris, Texas", "PRX"),
        ("San Jose, Costa Rica", "SJO"),
        ("San Jose CR", "SJO"),
        ("San Jose CA", "SJC"),
        ("Melbourne FL", "MLB"),
        ("Birmingham, Alabama", "BHM"),
        ("Córdoba, España", "ODB"),
        ("Cordoba Argentina", "COR"),
    ],
)
async def test_resolve_place_reads_a_state_or_country_after_the_name(
    stub: search_pb2_grpc.SearchServiceStub, query: str, first: str
) -> None:
    answer = await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query=query), timeout=5)
    assert [c.place.code for c in answer.candidates][:1] == [first]


# "Airport" in the query: names are indexed without it, so it was one more word to match
# ("heathrow airport" found nothing, "JFK airport" Saint-Georges, French Guiana).
@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("JFK airport", "JFK"),
        ("lga airport", "LGA"),
        ("heathrow airport", "LHR"),
        ("O'Hare International Airport", "ORD"),
        ("aeropuerto de MAD", "MAD"),
        ("aeropuerto Barajas", "MAD"),
        ("JFK intl", "JFK"),
        ("Flughafen München", "MUC"),
        ("International Falls", "INL"),
    ],
)
async def test_resolve_place_reads_an_airport_named_as_one(
    stub: search_pb2_grpc.SearchServiceStub, query: str, first: str
) -> None:
    answer = await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query=query), timeout=5)
    assert [c.place.code for c in answer.candidates][:1] == [first]


# A big city's English or local name that is also a small town's exact name, or a big airport
# that ties with a namesake airstrip: the bot took, or asked about, the small one ("Frankfort"
# was Frankfort, Kentucky, with no airline service; "Lyons" Lyons, Kansas; "Faro" asked
# between Portugal's and Yukon's; "Goteborg", "Cracow", "Nurnberg" were guesses below 80).
# A real town's own name still wins over a hub it resembles (Asheville is not Nashville).
@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("Frankfort", "FRA"),
        ("Lyons", "LYS"),
        ("Faro", "FAO"),
        ("Goteborg", "GOT"),
        ("Göteborg", "GOT"),
        ("Cracow", "KRK"),
        ("Nurnberg", "NUE"),
        ("Genoa", "GOA"),
        ("Asheville", "AVL"),
        ("Mangalore", "IXE"),
    ],
)
async def test_resolve_place_prefers_the_big_city_a_name_usually_means(
    stub: search_pb2_grpc.SearchServiceStub, query: str, first: str
) -> None:
    answer = await stub.ResolvePlace(search_pb2.ResolvePlaceRequest(query=query), timeout=5)
    found = decide(query, [from_proto(c.place, c.score) for c in answer.candidates])
    assert found.place is not None and found.place.code == first


async def test_warm_cache(stub: search_pb2_grpc.SearchServiceStub) -> None:
    answer = await stub.WarmCache(
        search_pb2.WarmCacheRequest(
            routes=[search_pb2.Route(origin="JFK", destination="LAX")], days_ahead=3
        ),
        timeout=10,
    )
    assert (answer.warmed, answer.failed) == (3, 0)


async def test_warming_refuses_a_route_searches_refuse(
    stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    """(Was a bug: WarmCache took NYC-EWR, which SearchFlights refuses as the same place, and
    spent a provider call a day on entries no search ever reads, reporting them warmed.)"""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WarmCache(
            search_pb2.WarmCacheRequest(
                routes=[
                    search_pb2.Route(origin="JFK", destination="LAX"),
                    search_pb2.Route(origin="NYC", destination="EWR"),
                ],
                days_ahead=2,
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"routes[1].destination"}


async def test_fault_injection_stale_then_breaker_open_and_reset(
    stub: search_pb2_grpc.SearchServiceStub, running: Running
) -> None:
    request = search_pb2.SearchFlightsRequest(
        origin="CDG", destination="FCO", departure_date=day(9)
    )
    fresh = await stub.SearchFlights(request, timeout=5)
    running.failure_file.touch()
    try:
        # Wait out the 1 s TTL: the entry is now past it but inside the grace period.
        fetched = fresh.fetch_time.ToDatetime(tzinfo=dt.UTC).timestamp()
        await asyncio.sleep(max(0.0, fetched + 1.05 - time.time()))
        stale = await stub.SearchFlights(request, timeout=5)
        assert stale.stale and stale.from_cache and stale.age.ToMilliseconds() >= 1000
        assert [o.id for o in stale.offers] == [o.id for o in fresh.offers]
        # Nothing cached for this one: a plain UNAVAILABLE; and the breaker opens at 2.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(
                    origin="CDG", destination="MAD", departure_date=day(9)
                ),
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        listed = await stub.ListCircuitBreakers(search_pb2.ListCircuitBreakersRequest(), timeout=5)
        (breaker,) = listed.circuit_breakers
        assert breaker.name == "offline_provider"
        assert breaker.state == search_pb2.CIRCUIT_STATE_OPEN
        assert breaker.failure_count == 2 and breaker.failure_threshold == 2
        assert breaker.recovery_timeout.seconds == 60 and breaker.opened_time.seconds > 0
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(running.metrics_url, timeout=5)).text
        assert 'search_circuit_breaker_state{name="offline_provider"} 1.0' in metrics
        assert 'search_requests_total{provider="offline",result="stale"}' in metrics
    finally:
        running.failure_file.unlink()
    reset = await stub.ResetCircuitBreaker(
        search_pb2.ResetCircuitBreakerRequest(name="offline_provider"), timeout=5
    )
    assert reset.circuit_breaker.state == search_pb2.CIRCUIT_STATE_CLOSED
    again = await stub.SearchFlights(request, timeout=5)
    assert not again.stale and not again.from_cache
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ResetCircuitBreaker(
            search_pb2.ResetCircuitBreakerRequest(name="nope"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_breaker_gauge_half_opens_with_the_breaker_without_traffic(
    tmp_path: Path, valkey: Valkey
) -> None:
    """An outage that opened the breaker ends at a quiet hour: once the recovery time has passed
    the breaker is HALF_OPEN (ListCircuitBreakers says so, the next search probes), and so must
    search_circuit_breaker_state be. (Was a bug: the gauge stayed 1 until the next search, and
    ParleyCircuitOpen fired on a provider that had recovered.)"""
    failure_file = tmp_path / "offline-fails"
    metrics_port = free_port()
    process, address = start(
        tmp_path,
        valkey.url,
        SEARCH_METRICS_PORT=str(metrics_port),
        SEARCH_BREAKER_FAILURE_THRESHOLD="1",
        SEARCH_BREAKER_RECOVERY_SECONDS="1",
        SEARCH_OFFLINE_FAILURE_FILE=str(failure_file),
    )
    gauge = 'search_circuit_breaker_state{name="offline_provider"}'

    def scraped() -> str:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        return next(line for line in text.splitlines() if line.startswith(gauge))

    try:
        failure_file.touch()
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await search_pb2_grpc.SearchServiceStub(channel).SearchFlights(
                    search_pb2.SearchFlightsRequest(
                        origin="CDG", destination="LIS", departure_date=day(11)
                    ),
                    timeout=5,
                )
        assert scraped() == f"{gauge} 1.0"  # open
        failure_file.unlink()
        await asyncio.sleep(1.5)  # past the recovery time; no search since
        assert scraped() == f"{gauge} 2.0"  # half-open, as the service itself reports it
        async with grpc.aio.insecure_channel(address) as channel:
            listed = await search_pb2_grpc.SearchServiceStub(channel).ListCircuitBreakers(
                search_pb2.ListCircuitBreakersRequest(), timeout=5
            )
        assert listed.circuit_breakers[0].state == search_pb2.CIRCUIT_STATE_HALF_OPEN
    finally:
        process.stop()


async def test_without_redis_not_serving_but_still_answers(
    tmp_path: Path, fresh_valkey: Valkey
) -> None:
    process, address = start(tmp_path, fresh_valkey.url)
    try:
        fresh_valkey.stop()
        assert wait_for(lambda: check(address, SERVICE, 0.5) == "NOT_SERVING", timeout=10)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            answer = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(
                    origin="JFK", destination="LHR", departure_date=day(5)
                ),
                timeout=5,
            )
        assert answer.offers and not answer.from_cache
        fresh_valkey.start()
        assert wait_for(lambda: check(address, SERVICE, 0.5) == "SERVING", timeout=10)
    finally:
        process.stop()


async def test_an_amadeus_error_that_quotes_the_token_passes_it_on_nowhere(
    tmp_path: Path, valkey: Valkey, amadeus: FakeAmadeus
) -> None:
    """Amadeus's 400 detail is passed on (INVALID_ARGUMENT naming our field; the bot quotes it to
    the user on WhatsApp): one that quotes the request's bearer token must not pass the token on.
    (Was a bug: the detail went out as it came.) Nor may a failure's log line, which carries
    every error's detail."""
    process, address = start(
        tmp_path,
        valkey.url,
        SEARCH_PROVIDER="amadeus",
        AMADEUS_CLIENT_ID=CLIENT_ID,
        AMADEUS_CLIENT_SECRET=CLIENT_SECRET,
        AMADEUS_BASE_URL=amadeus.url,
        LOG_LEVEL="DEBUG",
    )
    try:
        amadeus.echo_authorization = True
        amadeus.script("/v2/shopping/flight-offers", 400)
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await search_pb2_grpc.SearchServiceStub(channel).SearchFlights(
                    search_pb2.SearchFlightsRequest(
                        origin="JFK", destination="LHR", departure_date=day(30)
                    ),
                    timeout=10,
                )
            # A failure's log line carries every error's detail: the token never.
            amadeus.script("/v2/shopping/flight-offers", *[500] * 4)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await search_pb2_grpc.SearchServiceStub(channel).SearchFlights(
                    search_pb2.SearchFlightsRequest(
                        origin="JFK", destination="LHR", departure_date=day(31)
                    ),
                    timeout=10,
                )
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "departureDate is in the past (request had Bearer ***)" in (error.details() or "")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        logged = "Internal error: An internal error occured, please contact your administrator"
        assert wait_for(lambda: f"{logged} (request had Bearer ***)" in process.log, timeout=5)
        (token,) = amadeus.tokens
        passed_on = f"{error.details()} {error.trailing_metadata()} {process.log}"
        assert token not in passed_on and CLIENT_SECRET not in passed_on
    finally:
        process.stop()


async def test_a_familys_amadeus_fares_are_the_whole_partys(
    tmp_path: Path, valkey: Valkey, amadeus: FakeAmadeus
) -> None:
    """Through the service to Amadeus's contract: the children and the lap infant are asked
    for, and the answer's total is the party's, not the adults' cached one."""
    process, address = start(
        tmp_path,
        valkey.url,
        SEARCH_PROVIDER="amadeus",
        AMADEUS_CLIENT_ID=CLIENT_ID,
        AMADEUS_CLIENT_SECRET=CLIENT_SECRET,
        AMADEUS_BASE_URL=amadeus.url,
    )
    trip = {
        "origin": "JFK",
        "destination": "LHR",
        "departure_date": day(31),
        "currency_code": "EUR",
    }
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            adults = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(adults=2, **trip), timeout=10
            )
            family = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(adults=2, children=1, infants=1, **trip),
                timeout=10,
            )
    finally:
        process.stop()
    assert [o.total_price.amount for o in adults.offers] == ["1024.60", "1280.10"]
    assert [o.total_price.amount for o in family.offers] == ["1460.06", "1824.15"]
    assert not family.from_cache and family.provider == "amadeus"
    sent = [params for path, params in amadeus.requests if path.endswith("flight-offers")]
    assert [(p["adults"], p.get("children"), p.get("infants")) for p in sent] == [
        ("2", None, None),
        ("2", "1", "1"),
    ]


def test_a_bad_provider_setting_stops_start_up_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.search.server"],
        cwd=ROOT,
        env={"SEARCH_PROVIDER": "nope", "SEARCH_PORT": "0", "SEARCH_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SEARCH_PROVIDER=nope" in result.stderr


@pytest.mark.parametrize("base_url", ["api.amadeus.com", "https://", "ftp://api.amadeus.com"])
def test_an_amadeus_base_url_that_is_no_http_url_stops_start_up(base_url: str) -> None:
    """(Was a bug: the service started and reported SERVING, and every search failed with
    "UnsupportedProtocol", retried as an outage until the breaker opened.)"""
    result = subprocess.run(
        [sys.executable, "-m", "services.search.server"],
        cwd=ROOT,
        env={
            "SEARCH_PROVIDER": "amadeus",
            "AMADEUS_CLIENT_ID": CLIENT_ID,
            "AMADEUS_CLIENT_SECRET": CLIENT_SECRET,
            "AMADEUS_BASE_URL": base_url,
            "SEARCH_PORT": "0",
            "SEARCH_METRICS_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "AMADEUS_BASE_URL: " in result.stderr and "https://api.amadeus.com" in result.stderr
    assert CLIENT_SECRET not in result.stderr + result.stdout


async def test_no_answer_lists_a_flight_that_has_already_left(
    stub: search_pb2_grpc.SearchServiceStub, valkey: Valkey, places: Places
) -> None:
    """A search for today, fresh or from the cache (fresh or stale: up to a day old), shows only
    flights still to leave. (Was a bug: the offline provider offered today's 06:00 departures at
    23:00, and a cached answer kept listing flights that had left since it was fetched.)"""
    now = dt.datetime.now(dt.UTC)
    # Somewhere it is always late in the day: the offline provider's early flights have left.
    for origin, destination in [
        ("HNL", "OGG"), ("LAX", "SFO"), ("JFK", "BOS"), ("GRU", "GIG"), ("LHR", "EDI"),
        ("DXB", "MCT"), ("DEL", "BOM"), ("BKK", "HKT"), ("NRT", "CTS"), ("SYD", "MEL"),
        ("AKL", "WLG"),
    ]:  # fmt: skip
        today = now.astimezone(ZoneInfo(places.by_code[origin].tz)).date().isoformat()
        answer = await stub.SearchFlights(
            search_pb2.SearchFlightsRequest(
                origin=origin, destination=destination, departure_date=today, max_results=50
            ),
            timeout=5,
        )
        for offer in answer.offers:
            leaves = dt.datetime.fromisoformat(offer.itineraries[0].segments[0].departure_time)
            assert leaves > now, (origin, leaves)

    # A cached answer fetched when both flights were still to leave; one has left since.
    today = now.astimezone(ZoneInfo("Europe/Paris")).date()
    cached = search_pb2.SearchFlightsResponse(provider="offline", demo_data=True)
    cached.fetch_time.FromDatetime(now)
    for offer_id, hours in (("gone", -2), ("still-to-leave", 3)):
        leaves = (now + dt.timedelta(hours=hours)).astimezone(ZoneInfo("Europe/Paris"))
        cached.offers.append(
            search_pb2.FlightOffer(
                id=offer_id,
                total_price=search_pb2.Money(currency_code="USD", amount="100.00"),
                itineraries=[
                    search_pb2.Itinerary(
                        segments=[
                            search_pb2.Segment(
                                carrier_code="AF",
                                flight_number="1",
                                departure_airport="CDG",
                                departure_time=leaves.isoformat(),
                                arrival_airport="NCE",
                                arrival_time=(leaves + dt.timedelta(hours=1)).isoformat(),
                            )
                        ]
                    )
                ],
                demo_data=True,
            )
        )
    client = redis.Redis.from_url(valkey.url)
    try:
        key = f"search:v1:offline:CDG:NCE:{today.isoformat()}:-:1:ECONOMY:0:10:-"
        await client.set(key, cached.SerializeToString(), ex=600)
    finally:
        await client.aclose()
    answer = await stub.SearchFlights(
        search_pb2.SearchFlightsRequest(
            origin="CDG", destination="NCE", departure_date=today.isoformat()
        ),
        timeout=5,
    )
    assert answer.from_cache and [o.id for o in answer.offers] == ["still-to-leave"]


async def test_a_round_trip_never_returns_before_it_has_arrived(
    stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    """(Was a bug: the offline provider paired any outbound flight with any return flight of the
    return date, so most same-day and next-day round trips flew home before they had landed.)"""
    checked = 0
    for destination in ("BOS", "LHR", "LAX", "NRT", "SYD"):
        for nights in (0, 1):
            answer = await stub.SearchFlights(
                search_pb2.SearchFlightsRequest(
                    origin="JFK",
                    destination=destination,
                    departure_date=day(30),
                    return_date=day(30 + nights),
                    max_results=50,
                ),
                timeout=5,
            )
            for offer in answer.offers:
                outbound, inbound = offer.itineraries
                lands = dt.datetime.fromisoformat(outbound.segments[-1].arrival_time)
                leaves = dt.datetime.fromisoformat(inbound.segments[0].departure_time)
                assert leaves >= lands + dt.timedelta(hours=1), (destination, nights, offer.id)
                checked += 1
    assert checked  # short trips still find offers


async def test_every_redis_client_the_service_opens_is_closed_on_stop(tmp_path: Path) -> None:
    """The cache's client and the rate limit's (its window and its spacing) are all closed when
    the service stops: none is left for Redis to time out. (Was a bug: the rate limit's
    connections were never closed.)"""
    valkey = Valkey(tmp_path / "valkey").start()
    observer = redis.from_url(valkey.url)
    try:
        settings = SearchSettings(redis_url=valkey.url, search_offline_rate_limit_per_second=100)
        service = build(settings)
        engine = service.servicer.engine
        query = Query(
            "JFK",
            "LHR",
            dt.date.today() + dt.timedelta(days=9),
            None,
            1,
            search_pb2.CABIN_ECONOMY,
            False,
            3,
            "",
        )
        await engine.search(query, time.monotonic() + 5)
        assert await others(observer) > 1  # the cache's and the rate limit's
        assert service.on_stop is not None
        await service.on_stop()
        for _ in range(250):  # Valkey drops a client once it has read the close
            if await others(observer) == 0:
                break
            await asyncio.sleep(0.02)
        assert await others(observer) == 0
    finally:
        await observer.aclose()
        valkey.stop()


async def others(observer: redis.Redis) -> int:
    """Connections to Valkey besides the observer's own."""
    own = await observer.client_id()
    return sum(1 for c in await observer.client_list() if int(c["id"]) != own)


async def test_a_caller_whose_deadline_passes_first_gets_what_the_service_has(
    tmp_path: Path, valkey: Valkey, amadeus: FakeAmadeus
) -> None:
    """docs/search.md: when the caller's deadline passes first, a stale copy is served instead
    when there is one, and a place lookup answers from the local index. (Was a bug: over gRPC
    those answers were made at the very deadline, which cancelled them: DEADLINE_EXCEEDED.)"""
    process, address = start(
        tmp_path,
        valkey.url,
        SEARCH_PROVIDER="amadeus",
        AMADEUS_CLIENT_ID=CLIENT_ID,
        AMADEUS_CLIENT_SECRET=CLIENT_SECRET,
        AMADEUS_BASE_URL=amadeus.url,
        REDIS_CACHE_TTL_SECONDS="1",
    )
    try:
        request = search_pb2.SearchFlightsRequest(
            origin="JFK", destination="LHR", departure_date=day(40)
        )
        async with grpc.aio.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            fresh = await stub.SearchFlights(request, timeout=10)
            assert fresh.offers and not fresh.from_cache
            await asyncio.sleep(1.2)  # past its TTL: a stale copy
            amadeus.delay = 5.0  # slower than the caller will wait
            stale = await stub.SearchFlights(request, timeout=2)
            # Text the local index cannot place goes to the (slow) locations API.
            places = await stub.ResolvePlace(
                search_pb2.ResolvePlaceRequest(query="zzyzx springs"), timeout=2
            )
        assert stale.stale and stale.from_cache
        assert [o.id for o in stale.offers] == [o.id for o in fresh.offers]
        assert "DAG" not in [c.place.code for c in places.candidates]
    finally:
        process.stop()


async def test_a_warm_out_of_time_answers_what_it_did_and_what_it_never_started(
    tmp_path: Path, valkey: Valkey, amadeus: FakeAmadeus
) -> None:
    """A WarmCache caller whose deadline is shorter than the whole run gets the counts so far
    and how many searches were never started, a little before its deadline; the searches
    running then finish on the provider's time, their entries written and their locks
    released. (Was a bug: every search not yet started was still read from the cache and
    counted as failed, one after another, past the caller's deadline: DEADLINE_EXCEEDED, and
    the caller learned nothing of what was warmed.)"""
    redis_url = valkey.url.replace("/0", "/11")
    process, address = start(
        tmp_path,
        redis_url,
        SEARCH_PROVIDER="amadeus",
        AMADEUS_CLIENT_ID=CLIENT_ID,
        AMADEUS_CLIENT_SECRET=CLIENT_SECRET,
        AMADEUS_BASE_URL=amadeus.url,
        SEARCH_WARM_CONCURRENCY="4",
    )
    codes = ["JFK", "LHR", "CDG", "FRA", "MAD", "FCO", "AMS", "LAX", "SFO", "ORD", "MIA"]
    codes += ["BOS", "SEA", "DFW", "ATL", "IAD", "YYZ", "MEX", "GRU", "EZE", "NRT", "HND"]
    codes += ["ICN", "SIN", "HKG", "SYD", "DXB", "DOH", "IST", "ZRH", "VIE", "CPH", "OSL"]
    routes = [search_pb2.Route(origin=a, destination=b) for a in codes for b in codes if a != b]
    client = redis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
        amadeus.delay = 3.0  # the first searches are still running at the caller's deadline
        async with grpc.aio.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            answer = await stub.WarmCache(
                search_pb2.WarmCacheRequest(routes=routes[:500], days_ahead=30), timeout=2
            )
        assert (answer.warmed, answer.failed, answer.not_started) == (0, 4, 500 * 30 - 4)
        # The 4 running at the deadline finish on their own: written, their locks released.
        for _ in range(200):
            keys = {k.decode() for k in await client.keys("search:v1:amadeus:*")}
            if len(keys) == 4 and not [k for k in keys if k.endswith(":lock")]:
                break
            await asyncio.sleep(0.05)
        assert len(keys) == 4 and not [k for k in keys if k.endswith(":lock")], keys
    finally:
        await client.aclose()
        process.stop()


async def test_warming_without_the_cache_warms_nothing_and_spends_no_provider_call(
    tmp_path: Path, fresh_valkey: Valkey, amadeus: FakeAmadeus
) -> None:
    """With its Redis unreachable a replica still answers searches uncached, but a warm of it
    keeps nothing. (Was a bug: every search was fetched from the provider, spending its
    quota, and reported warmed, *now fresh in the cache*, though nothing was written.)"""
    process, address = start(
        tmp_path,
        fresh_valkey.url,
        SEARCH_PROVIDER="amadeus",
        AMADEUS_CLIENT_ID=CLIENT_ID,
        AMADEUS_CLIENT_SECRET=CLIENT_SECRET,
        AMADEUS_BASE_URL=amadeus.url,
    )
    try:
        fresh_valkey.stop()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            answer = await stub.WarmCache(
                search_pb2.WarmCacheRequest(
                    routes=[search_pb2.Route(origin="JFK", destination="LHR")], days_ahead=3
                ),
                timeout=10,
            )
        assert (answer.warmed, answer.failed, answer.not_started) == (0, 3, 0)
        assert amadeus.calls["/v2/shopping/flight-offers"] == 0
    finally:
        process.stop()
