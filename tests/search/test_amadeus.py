"""The Amadeus adapter against a local fake server of its documented REST contract."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from email.utils import format_datetime
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from parley.search.v1 import search_pb2, search_pb2_grpc
from services.common.errors import InvalidArgument, Unavailable
from services.common.redis_client import make_redis
from services.search.breaker import State
from services.search.cache import ResultCache
from services.search.engine import SearchEngine
from services.search.places import Places
from services.search.providers import select_provider
from services.search.providers.amadeus import AmadeusProvider, AmadeusSettings, parse_duration
from services.search.providers.base import ProviderUnavailable, Query
from services.search.settings import SearchSettings
from tests.search.fake_amadeus import CLIENT_ID, CLIENT_SECRET, FakeAmadeus, offer, problem
from tests.support.processes import ServiceProcess, Valkey, free_port
from tests.support.proxy import unanswered_address
from tests.support.releases import previous_release

OFFERS = "/v2/shopping/flight-offers"
TOKEN = "/v1/security/oauth2/token"
DAY = dt.date(2026, 12, 15)


def settings(server: FakeAmadeus, **changes: object) -> AmadeusSettings:
    fields: dict[str, object] = {
        "amadeus_client_id": CLIENT_ID,
        "amadeus_client_secret": CLIENT_SECRET,
        "amadeus_base_url": server.url,
        "amadeus_backoff_seconds": 0.01,
    }
    fields.update(changes)
    return AmadeusSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def provider(amadeus: FakeAmadeus, places: Places) -> AsyncIterator[AmadeusProvider]:
    adapter = AmadeusProvider(settings(amadeus), places)
    yield adapter
    await adapter.aclose()


def query(**changes: object) -> Query:
    fields: dict[str, object] = {
        "origin": "JFK",
        "destination": "LHR",
        "departure": DAY,
        "return_date": None,
        "adults": 2,
        "cabin": search_pb2.CABIN_BUSINESS,
        "non_stop": True,
        "max_results": 5,
        "currency": "EUR",
    }
    fields.update(changes)
    return Query(**fields)  # type: ignore[arg-type]


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def refreshed(adapter: AmadeusProvider) -> None:
    """Once the token request in flight has ended (an early refresh runs beside the searches)."""
    if adapter._refreshing is not None:
        await asyncio.wait([adapter._refreshing])


async def test_offers_are_mapped_exactly(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    offers = await provider.search(query(return_date=DAY + dt.timedelta(days=3)), soon())
    # Cheapest first, though Amadeus listed it second (its contract promises no order).
    # (Was a bug: the provider's order was passed on, and the bot shows offers in that order.)
    # The price is the two adults' together, both ways, as Amadeus totals it (the fake's round
    # trip is 2 x 0.9 one-way fares: 2 x 512.30 x 1.8).
    assert [o.total_price.amount for o in offers] == ["1844.28", "2304.18"]
    first = offers[0]
    assert first.total_price.currency_code == "EUR" and not first.demo_data
    assert (first.id, first.validating_carrier, first.seats_left) == ("2", "BA", 4)
    segment = first.itineraries[0].segments[0]
    assert (segment.carrier_code, segment.flight_number, segment.aircraft_code) == (
        "BA",
        "178",
        "777",
    )
    # Amadeus gives local times without offsets; the airports' time zones add them.
    assert segment.departure_time == "2026-12-15T18:30:00-05:00"
    assert segment.arrival_time == "2026-12-15T22:35:00+00:00"
    assert segment.duration.seconds == 8 * 3600 + 5 * 60
    assert first.itineraries[0].stops == 0
    # A codeshare: AA 6143 operated by BA is AA 6143, never "BA 6143" (BA's number is another).
    # (Was a bug: the operating carrier was paired with the marketing carrier's number.)
    codeshare = offers[1].itineraries[0].segments[0]
    assert (codeshare.carrier_code, codeshare.flight_number) == ("AA", "6143")
    path, params = amadeus.requests[-1]
    assert path == OFFERS
    assert params == {
        "originLocationCode": "JFK",
        "destinationLocationCode": "LHR",
        "departureDate": "2026-12-15",
        "returnDate": "2026-12-18",
        "adults": "2",
        "travelClass": "BUSINESS",
        "nonStop": "true",
        "max": "5",
        "currencyCode": "EUR",
    }


async def test_a_round_trip_is_both_ways_in_the_asked_currency(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """``returnDate`` makes a search a round trip: each offer has the way there and the way back,
    priced together; ``currencyCode`` prices it in that currency (the fake honours both, as the
    contract documents them)."""
    back = DAY + dt.timedelta(days=3)
    offers = await provider.search(query(return_date=back, currency="USD", adults=1), soon())
    assert [(o.total_price.currency_code, o.total_price.amount) for o in offers] == [
        ("USD", "995.91"),  # 512.30 EUR x 1.08 x 1.8
        ("USD", "1244.26"),
    ]
    there, home = offers[0].itineraries
    assert [(s.departure_airport, s.arrival_airport) for s in there.segments] == [("JFK", "LHR")]
    assert [(s.departure_airport, s.arrival_airport) for s in home.segments] == [("LHR", "JFK")]
    assert home.segments[0].departure_time == "2026-12-18T18:30:00+00:00"
    assert home.segments[0].arrival_time == "2026-12-18T22:35:00-05:00"
    one_way = await provider.search(query(adults=1), soon())
    assert len(one_way[0].itineraries) == 1 and one_way[0].total_price.amount == "512.30"
    _, params = amadeus.requests[-1]
    assert "returnDate" not in params and params["currencyCode"] == "EUR"
    # No currency asked: none is sent, and the provider's own comes back.
    default = await provider.search(query(adults=1, currency=""), soon())
    _, params = amadeus.requests[-1]
    assert "currencyCode" not in params and default[0].total_price.currency_code == "EUR"
    with pytest.raises(InvalidArgument) as caught:
        await provider.search(query(currency="XAU"), soon())
    assert set(dict(caught.value.violations)) == {"currency_code"}


async def test_children_and_lap_infants_are_asked_for_and_in_the_total(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """Children and infants go out as the contract's `children` and `infants` parameters (only
    when there are any), and the offer's price is the whole party's: two adults, a child and a
    lap infant, each on their own travelerPricing."""
    offers = await provider.search(query(children=1, infants=1), soon())
    _, params = amadeus.requests[-1]
    assert (params["adults"], params["children"], params["infants"]) == ("2", "1", "1")
    # 2 x 512.30 + 384.23 (the fake's child at 75 %) + 51.23 (its infant at 10 %).
    assert [o.total_price.amount for o in offers] == ["1460.06", "1824.15"]
    await provider.search(query(children=2), soon())
    _, params = amadeus.requests[-1]
    assert params["children"] == "2" and "infants" not in params


def _skipped() -> float:
    value = REGISTRY.get_sample_value(
        "search_provider_offers_skipped_total", {"provider": "amadeus"}
    )
    return value or 0.0


async def test_a_malformed_offer_is_skipped_and_the_others_kept(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """An offer the adapter cannot read (no price, a price that is no number, a segment without
    its times) is left out, counted and logged once for the answer; the others are the answer.
    (Was a bug: one such offer failed the whole search as a provider failure.)"""
    no_price = offer("3", "JFK", "LHR", "2026-12-15", "300.00")
    del no_price["price"]
    no_number = offer("4", "JFK", "LHR", "2026-12-15", "310.00")
    no_number["price"]["grandTotal"] = "call us"
    no_times = offer("5", "JFK", "LHR", "2026-12-15", "320.00")
    del no_times["itineraries"][0]["segments"][0]["departure"]["at"]
    # A carrier the adapter has never heard of is no defect: it is shown as the provider says.
    unknown_carrier = offer("6", "JFK", "LHR", "2026-12-15", "330.00", flight=("Q9", "1"))
    good = offer("2", "JFK", "LHR", "2026-12-15", "512.30")
    amadeus.offers = [no_price, good, no_number, no_times, unknown_carrier]
    # A price with no flight to it (the contract has at least one itinerary, each with at
    # least one segment) is no offer either. (Was listed: a price the user could not place.)
    no_flight = offer("7", "JFK", "LHR", "2026-12-15", "100.00")
    no_flight["itineraries"] = []
    no_segment = offer("8", "JFK", "LHR", "2026-12-15", "110.00")
    no_segment["itineraries"][0]["segments"] = []
    no_currency = offer("9", "JFK", "LHR", "2026-12-15", "120.00")
    no_currency["price"]["currency"] = ""  # "120.00" of what?
    amadeus.offers += [no_flight, no_segment, no_currency]
    before = _skipped()
    with capture_logs() as logs:
        offers = await provider.search(query(adults=1, max_results=10), soon())
        await provider.search(query(adults=1, max_results=10), soon())  # the same again
        amadeus.offers = [good]
        await provider.search(query(adults=1, max_results=10), soon())
    assert [(o.id, o.total_price.amount) for o in offers] == [("6", "330.00"), ("2", "512.30")]
    assert offers[0].itineraries[0].segments[0].carrier_code == "Q9"
    assert _skipped() - before == 12
    # One warning while every answer has some, naming them; one line once none has.
    skipped = [line for line in logs if "malformed" in line["event"]]
    assert [line["log_level"] for line in skipped] == ["warning", "debug"]
    assert (skipped[0]["skipped"], skipped[0]["offers"]) == (6, 8)
    assert "offer 3: KeyError: missing 'price'" in skipped[0]["error"]
    assert [line["failures"] for line in logs if "readable again" in line["event"]] == [2]
    assert provider._token and provider._token not in repr(logs)
    assert CLIENT_SECRET not in repr(logs)


async def test_a_missing_duration_is_the_time_from_departure_to_arrival(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """An itinerary's or a segment's ``duration`` is optional in the contract: without it (or
    one that is no ISO 8601 duration) the time from the first departure to the last arrival,
    by the airports' offsets, is the answer's. (Was a bug: 0, which the bot showed as 0h 0m.)"""
    partial = offer("1", "JFK", "LHR", "2026-12-15", "512.30")
    del partial["itineraries"][0]["duration"]
    segment = partial["itineraries"][0]["segments"][0]
    segment["duration"] = "eight hours"
    segment["arrival"]["at"] = "2026-12-16T07:35:00"
    amadeus.offers = [partial]
    (found,) = await provider.search(query(adults=1), soon())
    # 18:30 in New York (-05:00) to 07:35 the next day in London (+00:00): 8 h 5 min.
    assert found.itineraries[0].duration.seconds == 8 * 3600 + 5 * 60
    assert found.itineraries[0].segments[0].duration.seconds == 8 * 3600 + 5 * 60


async def test_an_answer_far_beyond_the_contract_is_not_read(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """An answer larger than any the contract gives (``max`` bounds it at 250 offers, a couple
    of megabytes; the adapter asks for 50 at most) is a provider failure, read no further than
    the bound. (Was a bug: it was read whole, held in memory and parsed on the event loop.)"""
    amadeus.offers = [offer("1", "JFK", "LHR", "2026-12-15", "512.30")] * 12_000  # ~10 MB
    before = _skipped()
    with pytest.raises(ProviderUnavailable, match="larger than"):
        # A server that ignores ``max``: the fake cuts its answer to it.
        await provider.search(query(max_results=20_000), soon())
    assert _skipped() == before
    amadeus.offers = [offer("1", "JFK", "LHR", "2026-12-15", "512.30")] * 250  # the contract's most
    assert len(await provider.search(query(max_results=250), soon())) == 250


async def test_a_technical_stop_is_a_stop(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    """A segment that lands on the way (``numberOfStops``, the contract's technical stops, e.g.
    to refuel, listed in ``stops``) is one flight number but not a non-stop: its stops count.
    (Was a bug: stops were the segments less one, so such a flight was shown as non-stop.)"""
    refuelled = offer("3", "JFK", "LHR", "2026-12-15", "400.00")
    segment = refuelled["itineraries"][0]["segments"][0]
    segment["numberOfStops"] = 1
    segment["stops"] = [{"iataCode": "SNN", "duration": "PT1H"}]
    connection = offer("4", "JFK", "LHR", "2026-12-15", "450.00")
    first = connection["itineraries"][0]["segments"][0]
    second = {**first, "id": "2", "number": "5", "numberOfStops": 1}
    connection["itineraries"][0]["segments"] = [first, second]
    amadeus.offers = [refuelled, connection, offer("2", "JFK", "LHR", "2026-12-15", "512.30")]
    offers = await provider.search(query(adults=1, non_stop=False), soon())
    assert [(o.id, o.itineraries[0].stops) for o in offers] == [("3", 1), ("4", 2), ("2", 0)]


async def test_an_answer_of_malformed_offers_only_is_a_provider_failure(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """None readable is not "no flights" (which would be cached for an hour): the provider
    failed, and a stale copy may be served."""
    broken = offer("3", "JFK", "LHR", "2026-12-15", "300.00")
    del broken["itineraries"]
    amadeus.offers = [broken]
    with pytest.raises(ProviderUnavailable, match="malformed"):
        await provider.search(query(adults=1), soon())
    # An answer with no offers at all is one: no flights that day.
    amadeus.offers = []
    assert await provider.search(query(adults=1), soon()) == []


async def test_the_token_is_cached(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    for _ in range(3):
        await provider.search(query(), soon())
    assert amadeus.calls[TOKEN] == 1 and amadeus.calls[OFFERS] == 3


async def test_the_token_is_refreshed_before_it_expires(
    amadeus: FakeAmadeus, places: Places
) -> None:
    amadeus.token_ttl = 45  # inside the refresh margin: every call sees it as about to expire
    adapter = AmadeusProvider(settings(amadeus), places)
    try:
        await adapter.search(query(), soon())
        await adapter.search(query(), soon())
        await refreshed(adapter)
        assert amadeus.calls[TOKEN] == 2
        # Never a 401 along the way: the old token was replaced before it expired.
        assert amadeus.calls[OFFERS] == 2
    finally:
        amadeus.token_ttl = 1799
        await adapter.aclose()


async def test_a_failed_early_refresh_keeps_the_token_until_it_expires(
    amadeus: FakeAmadeus, places: Places
) -> None:
    """The token is refreshed a minute early so that an expired one is never sent; when that
    refresh fails, the current token still works and is used. (Was a bug: the early refresh was
    required, so a token endpoint failing in the token's last minute failed every search then,
    retried as an outage and counted toward the breaker, while the token still worked.)"""
    amadeus.token_ttl = 45  # inside the refresh margin: the next search refreshes it early
    adapter = AmadeusProvider(settings(amadeus), places)
    try:
        await adapter.search(query(), soon())
        amadeus.script(TOKEN, *([503] * 10))
        assert await adapter.search(query(), soon())
        await refreshed(adapter)
        assert amadeus.calls[TOKEN] == 2 and amadeus.calls[OFFERS] == 2
    finally:
        amadeus.token_ttl = 1799
        await adapter.aclose()


async def test_a_slow_early_refresh_holds_no_search_up(
    amadeus: FakeAmadeus, places: Places
) -> None:
    """The refresh a minute early runs beside the searches, which keep the token that still
    works. (Was a bug: each search in that minute waited for the refresh, one after another,
    so a token endpoint that hung failed every search on its deadline with a working token.)"""
    amadeus.token_ttl = 45  # inside the refresh margin: the next search refreshes it early
    adapter = AmadeusProvider(settings(amadeus), places)
    try:
        await adapter.search(query(), soon())
        amadeus.token_delay = 2.0
        answers = await asyncio.gather(*(adapter.search(query(), soon(1.0)) for _ in range(5)))
        assert all(answers)
        await refreshed(adapter)
        assert amadeus.calls[TOKEN] == 2  # one refresh, however many searches saw it due
    finally:
        amadeus.token_ttl = 1799
        await adapter.aclose()


async def test_fifty_searches_at_expiry_fetch_one_token(
    amadeus: FakeAmadeus, places: Places
) -> None:
    amadeus.token_ttl = 1
    adapter = AmadeusProvider(settings(amadeus), places)
    try:
        await adapter.search(query(), soon())
        await asyncio.sleep(1.1)  # the token has expired: every search needs a new one
        amadeus.token_ttl = 1799
        answers = await asyncio.gather(*(adapter.search(query(), soon()) for _ in range(50)))
        assert all(answers)
        assert amadeus.calls[TOKEN] == 2 and amadeus.calls[OFFERS] == 51  # never a 401
    finally:
        amadeus.token_ttl = 1799
        await adapter.aclose()


async def test_concurrent_searches_share_a_failing_token_request(
    amadeus: FakeAmadeus, places: Places
) -> None:
    """Searches that need a token while the token endpoint fails share each attempt's one
    request and its failure. (Was a bug: they took the token lock in turn and each sent its own
    request, a storm of up to one a search and attempt on an endpoint already failing.)"""
    adapter = AmadeusProvider(settings(amadeus, amadeus_max_attempts=2), places)
    amadeus.script(TOKEN, *([503] * 100))
    amadeus.token_delay = 0.2  # longer than the backoff: every retry joins the same request
    try:
        results = await asyncio.gather(
            *(adapter.search(query(), soon()) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, ProviderUnavailable) for r in results), results[:3]
        assert amadeus.calls[TOKEN] == 2  # one an attempt
        assert CLIENT_SECRET not in repr(results)
    finally:
        await adapter.aclose()


async def test_a_401_refreshes_the_token_once(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    await provider.search(query(), soon())
    amadeus.revoke_tokens()  # e.g. revoked or expired early on the provider's side
    offers = await provider.search(query(), soon())
    assert offers and amadeus.calls[TOKEN] == 2 and amadeus.calls[OFFERS] == 3


async def test_concurrent_401s_fetch_one_new_token(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """Searches that all had the revoked token refused need one new token between them, however
    their 401s interleave with its refresh. (Was a bug: a 401 that arrived after another
    search's refresh had finished took the new token for the refused one and fetched another,
    so a burst of searches after a revocation fetched up to one token each.)"""
    await provider.search(query(), soon())
    amadeus.revoke_tokens()
    # The first refusal at once, the others after its refresh has had time to finish.
    amadeus.refusal_delays = [0.0] + [0.3] * 5
    answers = await asyncio.gather(*(provider.search(query(), soon()) for _ in range(6)))
    assert all(answers)
    assert amadeus.calls[TOKEN] == 2


async def test_429_then_500_then_success(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    await provider.search(query(), soon())  # token in hand
    amadeus.script(OFFERS, 429, 500)
    offers = await provider.search(query(), soon())
    assert offers and amadeus.calls[OFFERS] == 4


async def test_retry_after_is_honoured(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    amadeus.script(OFFERS, (429, {"Retry-After": "0.3"}))
    start = time.monotonic()
    assert await provider.search(query(), soon())
    assert time.monotonic() - start >= 0.3


async def test_retry_after_as_a_date_is_honoured(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """Retry-After may be an HTTP date (RFC 9110): one a minute away is past the call's deadline,
    so the call gives up at once instead of asking again. (Was a bug: only a number of seconds
    was read; a date was ignored and the request sent again after the first backoff.)"""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    amadeus.script(OFFERS, (429, {"Retry-After": format_datetime(later, usegmt=True)}))
    with pytest.raises(ProviderUnavailable):
        await provider.search(query(), soon())
    assert amadeus.calls[OFFERS] == 1


async def test_persistent_5xx_is_a_provider_failure_after_the_attempts(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    amadeus.script(OFFERS, *([503] * 10))
    with pytest.raises(ProviderUnavailable):
        await provider.search(query(), soon())
    assert amadeus.calls[OFFERS] == 4  # AMADEUS_MAX_ATTEMPTS


async def test_retries_stop_at_the_deadline(amadeus: FakeAmadeus, places: Places) -> None:
    adapter = AmadeusProvider(
        settings(amadeus, amadeus_backoff_seconds=0.5, amadeus_max_attempts=10), places
    )
    try:
        await adapter.search(query(), soon())  # a token in hand
        amadeus.script(OFFERS, *([500] * 10))
        with pytest.raises(ProviderUnavailable):
            # The first backoff (0.5 s) would end past the deadline: no second attempt.
            await adapter.search(query(), soon(0.4))
        assert amadeus.calls[OFFERS] == 2
    finally:
        await adapter.aclose()


async def test_a_host_that_does_not_answer_fails_each_connect_in_the_connect_timeout(
    places: Places,
) -> None:
    """A connect gets its own few seconds (AMADEUS_CONNECT_TIMEOUT_SECONDS), not the whole
    deadline: a host that drops our SYNs (a dead or firewalled address) fails each attempt
    quickly and is retried within the deadline. (Was a bug: the per-request timeout, the time
    left to the deadline, replaced the 3 s connect timeout, so one connect to a dead host took
    the whole deadline and was never retried.)"""
    with unanswered_address() as address:
        config = AmadeusSettings(
            amadeus_client_id=CLIENT_ID,
            amadeus_client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
            amadeus_base_url=f"http://{address}",
            amadeus_backoff_seconds=0.01,
            amadeus_connect_timeout_seconds=0.1,
            amadeus_max_attempts=3,
        )
        adapter = AmadeusProvider(config, places)
        try:
            with pytest.raises(ProviderUnavailable) as caught:
                await adapter.search(query(), soon(5))
        finally:
            await adapter.aclose()
    # Every attempt made, each failing on its connect: not one attempt that ran out the clock.
    assert "failed after retries" in str(caught.value) and "ConnectTimeout" in str(caught.value)


def provider_calls() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "search_provider_calls_total", {"provider": "amadeus", "outcome": outcome}
        )
        or 0.0
        for outcome in ("ok", "rejected", "failed")
    )


async def test_every_attempt_takes_a_rate_limit_slot(
    amadeus: FakeAmadeus, places: Places, valkey: Valkey
) -> None:
    """AMADEUS_RATE_LIMIT_PER_SECOND is the account's limit on requests, so a retry takes a slot
    like a first attempt, and one that finds none before the deadline is not sent. (Was a bug:
    the engine took one slot per search and the adapter's retries went out without one, so a
    burst of 429s or 500s sent up to AMADEUS_MAX_ATTEMPTS times the limit.)"""
    adapter = AmadeusProvider(settings(amadeus, amadeus_rate_limit_per_second=0.1), places)
    client = make_redis(valkey.url)
    config = SearchSettings(redis_url=valkey.url, search_provider_timeout_seconds=1)
    # One request per 10 s; a TTL of 0: every search asks the provider.
    engine = SearchEngine(places, adapter, ResultCache(client, 0, 86400, 5), config, None)
    day = dt.date.today() + dt.timedelta(days=60)
    try:
        amadeus.script(OFFERS, 500)
        with pytest.raises(Unavailable):
            await engine.search(query(departure=day), soon(2))
        # The first attempt had the window's one slot; its retry found none in time.
        assert amadeus.calls[OFFERS] == 1
        assert engine.breaker.failure_count == 1  # the provider did fail
        calls = provider_calls()
        with pytest.raises(Unavailable):  # nor does another search find a slot
            await engine.search(query(departure=day, max_results=3), soon(2))
        assert amadeus.calls[OFFERS] == 1
        # No slot is no verdict, and no call: search_provider_calls_total is unchanged.
        assert engine.breaker.failure_count == 1 and provider_calls() == calls
    finally:
        await adapter.aclose()
        await client.aclose()


async def test_400_is_invalid_argument_naming_our_field(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    amadeus.script(OFFERS, 400)
    with pytest.raises(InvalidArgument) as caught:
        await provider.search(query(), soon())
    assert "departure_date" in dict(caught.value.violations)
    assert amadeus.calls[OFFERS] == 1  # not retried
    # The contract's own bounds on the party: its parameters are our fields of the same name.
    for party, field in (({"adults": 1, "infants": 2}, "infants"), ({"children": 8}, "children")):
        with pytest.raises(InvalidArgument) as caught:
            await provider.search(query(**party), soon())
        assert set(dict(caught.value.violations)) == {field}, party


async def test_every_error_of_a_response_is_read(
    provider: AmadeusProvider, amadeus: FakeAmadeus
) -> None:
    """Amadeus lists one entry of ``errors[]`` per problem. (Was a bug: only the first was read,
    so a 400 with two named only the first field, and a failure's log line had none of the
    codes and titles Amadeus sent.)"""
    with pytest.raises(InvalidArgument) as caught:
        await provider.search(query(adults=1, children=9, infants=2), soon())
    violations = dict(caught.value.violations)
    assert set(violations) == {"children", "infants"}, violations
    assert "9 seated" in violations["children"] and "exceed" in violations["infants"]
    outage = [problem(500, "SYSTEM ERROR HAS OCCURRED", "first"), problem(500, "UPSTREAM", "2nd")]
    amadeus.script(OFFERS, *[outage] * 4)  # AMADEUS_MAX_ATTEMPTS
    amadeus.script(
        OFFERS, [problem(403, "Forbidden", "no access to this API"), problem(403, "Quota", "")]
    )
    with pytest.raises(ProviderUnavailable) as failed:
        await provider.search(query(), soon())
    assert "SYSTEM ERROR HAS OCCURRED: first" in str(failed.value)
    assert "UPSTREAM: 2nd" in str(failed.value)
    with pytest.raises(ProviderUnavailable) as refused:
        await provider.search(query(), soon())
    assert "no access to this API" in str(refused.value) and "Quota" in str(refused.value)


async def test_a_404_is_a_provider_failure(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    amadeus.script(OFFERS, 404)
    with pytest.raises(ProviderUnavailable):
        await provider.search(query(), soon())
    assert amadeus.calls[OFFERS] == 1  # not retried: the URL will not come into being


async def test_a_404_opens_the_breaker_and_serves_stale_copies(
    amadeus: FakeAmadeus, places: Places, valkey: Valkey
) -> None:
    """Amadeus answers 404 for "an endpoint or URL that does not exist" (its common errors guide):
    a wrong AMADEUS_BASE_URL or proxy route, never a query. (Was a bug: it was NOT_FOUND, the
    caller's fault: no stale copy was served, the breaker never opened and the provider calls
    were counted "rejected", so ParleyCircuitOpen stayed silent while every search failed.)"""
    adapter = AmadeusProvider(settings(amadeus), places)
    client = make_redis(valkey.url)
    config = SearchSettings(redis_url=valkey.url, search_breaker_failure_threshold=2)
    # A TTL of 0: every search asks the provider, and the last answer is a stale copy.
    engine = SearchEngine(places, adapter, ResultCache(client, 0, 86400, 5), config, None)
    day = dt.date.today() + dt.timedelta(days=50)
    try:
        assert (await engine.search(query(departure=day), soon())).offers
        amadeus.script(OFFERS, 404, 404)
        stale = await engine.search(query(departure=day), soon())
        assert stale.stale and stale.offers
        assert engine.breaker.failure_count == 1
        with pytest.raises(Unavailable):  # nothing cached for this one
            await engine.search(query(departure=day, adults=1), soon())
        assert engine.breaker.state is State.OPEN
    finally:
        await adapter.aclose()
        await client.aclose()


async def test_wrong_credentials_fail_without_leaking_the_secret(
    amadeus: FakeAmadeus, places: Places
) -> None:
    adapter = AmadeusProvider(
        settings(amadeus, amadeus_client_secret="wrong-secret-value-123"), places
    )
    try:
        with capture_logs() as logs, pytest.raises(ProviderUnavailable) as caught:
            await adapter.search(query(), soon())
        # What Amadeus said, for the operator: its token endpoint's own error format.
        # (Was a gap: only the status was kept, "refused the client credentials (401)".)
        assert "invalid_client" in str(caught.value), caught.value
        assert "Client credentials are invalid" in str(caught.value)
        assert "wrong-secret-value-123" not in str(caught.value)
        assert "wrong-secret-value-123" not in repr(logs)
        assert "wrong-secret" not in repr(adapter.__dict__)
    finally:
        await adapter.aclose()


async def test_the_secret_is_never_logged(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    with capture_logs() as logs:
        await provider.search(query(), soon())
        amadeus.script(OFFERS, *([500] * 10))
        with pytest.raises(ProviderUnavailable):
            await provider.search(query(), soon())
    assert logs  # the token refresh is logged...
    assert CLIENT_SECRET not in repr(logs)  # ...without the secret


async def test_locations(provider: AmadeusProvider, amadeus: FakeAmadeus) -> None:
    """Each place comes with its country code, which the bot shows beside a place it offers.
    (Was a bug: the adapter asked for the LIGHT view, which has the country's name but not its
    code, so every place Amadeus found had none; the fake answered every view in full.)"""
    places = await provider.locations("munich", 3, soon())
    assert [(p.code, p.kind, p.city_name, p.country_code, p.time_zone) for p in places] == [
        ("MUC", search_pb2.PLACE_KIND_AIRPORT, "Munich", "DE", "Europe/Berlin")
    ]
    path, params = amadeus.requests[-1]
    assert path == "/v1/reference-data/locations"
    assert params["subType"] == "CITY,AIRPORT" and params["page[limit]"] == "3"


async def test_places_the_previous_release_cached_are_not_read(
    amadeus: FakeAmadeus, places: Places, valkey: Valkey, tmp_path: Path
) -> None:
    """(Was a bug: the release before asked the locations API for its LIGHT view, which has no
    country code, and cached those places under the key this release reads. While an upgrade
    rolled, and for REDIS_CACHE_TTL_SECONDS after it, a place Amadeus found came from that entry
    without its country (and its state), the bug the FULL view had fixed.) The previous
    release's search service runs against the fake and fills the shared cache first."""
    root = previous_release(tmp_path / "previous-release")
    port, redis_url = free_port(), valkey.url.replace("/0", "/7")
    process = ServiceProcess(
        "services.search.server",
        {
            "PYTHONPATH": str(root),
            "SEARCH_PORT": str(port),
            "SEARCH_METRICS_PORT": "0",
            "REDIS_URL": redis_url,
            "SEARCH_PROVIDER": "amadeus",
            "AMADEUS_CLIENT_ID": CLIENT_ID,
            "AMADEUS_CLIENT_SECRET": CLIENT_SECRET,
            "AMADEUS_BASE_URL": amadeus.url,
        },
        tmp_path / "search.log",
        root=root,
    ).start()
    try:
        process.wait_serving(f"127.0.0.1:{port}", "", 60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            answer = await stub.ResolvePlace(
                search_pb2.ResolvePlaceRequest(query="zzyzx springs", max_results=3), timeout=10
            )
    finally:
        process.stop()
    old = answer.candidates[0].place
    assert (old.code, old.country_code) == ("DAG", ""), old  # the LIGHT view, cached
    adapter = AmadeusProvider(settings(amadeus), places)
    client = make_redis(redis_url)
    config = SearchSettings(redis_url=redis_url)
    engine = SearchEngine(places, adapter, ResultCache(client, 3600, 86400, 5), config, None)
    try:
        found = await engine.resolve("zzyzx springs", 3, soon())
    finally:
        await adapter.aclose()
        await client.aclose()
    assert (found[0].place.code, found[0].place.country_code) == ("DAG", "US"), found


def test_iso_durations() -> None:
    assert parse_duration("PT14H15M").seconds == 14 * 3600 + 15 * 60
    assert parse_duration("P1DT2H").seconds == 26 * 3600
    assert parse_duration("garbage").seconds == 0


async def test_the_engine_uses_amadeus_when_configured(
    amadeus: FakeAmadeus, places: Places, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMADEUS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AMADEUS_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AMADEUS_BASE_URL", amadeus.url)
    config = SearchSettings(redis_url=valkey.url, search_provider="auto")
    adapter = select_provider(config, places)
    assert (adapter.name, adapter.breaker_name, adapter.demo_data) == (
        "amadeus",
        "amadeus_api",
        False,
    )
    client = make_redis(valkey.url)
    engine = SearchEngine(places, adapter, ResultCache(client, 3600, 86400, 5), config, None)
    try:
        day = dt.date.today() + dt.timedelta(days=40)
        first = await engine.search(query(departure=day, currency="USD"), soon())
        assert first.provider == "amadeus" and not first.demo_data and not first.from_cache
        assert (await engine.search(query(departure=day, currency="USD"), soon())).from_cache
        # Text the local index cannot place is looked up through the locations API.
        found = await engine.resolve("zzyzx springs", 3, soon())
        assert found and found[0].place.code == "DAG"
        assert found[0].place.kind == search_pb2.PLACE_KIND_CITY
    finally:
        await adapter.aclose()
        await client.aclose()
    monkeypatch.setenv("SEARCH_PROVIDER", "offline")
    assert select_provider(SearchSettings(), places).name == "offline"
