"""The offline provider: deterministic, plausible, labelled demo data."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import pytest

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.search.places import Places, haversine_km
from services.search.providers.base import ProviderUnavailable, Query
from services.search.providers.offline import OfflineProvider

DAY = dt.date.today() + dt.timedelta(days=30)


def query(origin: str = "JFK", destination: str = "LHR", **changes: object) -> Query:
    fields: dict[str, object] = {
        "origin": origin,
        "destination": destination,
        "departure": DAY,
        "return_date": None,
        "adults": 1,
        "cabin": search_pb2.CABIN_ECONOMY,
        "non_stop": False,
        "max_results": 10,
        "currency": "",
    }
    fields.update(changes)
    return Query(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def provider(places: Places) -> OfflineProvider:
    return OfflineProvider(places)


async def search(provider: OfflineProvider, q: Query) -> list[search_pb2.FlightOffer]:
    return await provider.search(q, time.monotonic() + 5)


async def test_same_route_and_date_give_the_same_offers(provider: OfflineProvider) -> None:
    first = await search(provider, query())
    second = await search(provider, query())
    assert first and [o.SerializeToString() for o in first] == [
        o.SerializeToString() for o in second
    ]
    other_day = await search(provider, query(departure=DAY + dt.timedelta(days=1)))
    assert [o.id for o in other_day] != [o.id for o in first]


async def test_offers_are_labelled_priced_exactly_and_cheapest_first(
    provider: OfflineProvider,
) -> None:
    offers = await search(provider, query(currency="EUR", max_results=5))
    assert 1 <= len(offers) <= 5
    amounts = [Decimal(o.total_price.amount) for o in offers]
    assert amounts == sorted(amounts)
    for offer in offers:
        assert offer.demo_data and offer.id.startswith("demo-")
        assert offer.total_price.currency_code == "EUR"
        assert Decimal(offer.total_price.amount).as_tuple().exponent == -2
        assert offer.validating_carrier


async def test_segments_have_local_times_with_offsets_and_sane_durations(
    provider: OfflineProvider, places: Places
) -> None:
    for offer in await search(provider, query()):
        itinerary = offer.itineraries[0]
        assert itinerary.stops == len(itinerary.segments) - 1
        assert itinerary.segments[0].departure_airport == "JFK"
        assert itinerary.segments[-1].arrival_airport == "LHR"
        for segment in itinerary.segments:
            departure = dt.datetime.fromisoformat(segment.departure_time)
            arrival = dt.datetime.fromisoformat(segment.arrival_time)
            assert departure.utcoffset() is not None and arrival.utcoffset() is not None
            assert (arrival - departure).total_seconds() == segment.duration.seconds
            a = places.by_code[segment.departure_airport]
            b = places.by_code[segment.arrival_airport]
            hours = segment.duration.seconds / 3600
            assert haversine_km(a.lat, a.lon, b.lat, b.lon) / hours < 1000  # subsonic
        first = dt.datetime.fromisoformat(itinerary.segments[0].departure_time)
        last = dt.datetime.fromisoformat(itinerary.segments[-1].arrival_time)
        assert (last - first).total_seconds() == itinerary.duration.seconds
        assert first.date() == DAY and 6 <= first.hour <= 22


async def test_jfk_lhr_non_stop_takes_about_seven_hours(provider: OfflineProvider) -> None:
    offers = await search(provider, query(non_stop=True))
    assert offers
    for offer in offers:
        assert offer.itineraries[0].stops == 0
        assert 6.5 * 3600 < offer.itineraries[0].duration.seconds < 8 * 3600


async def test_long_routes_connect_through_real_hubs(provider: OfflineProvider) -> None:
    offers = await search(provider, query("JFK", "SYD", max_results=20))
    assert offers
    assert all(o.itineraries[0].stops >= 1 for o in offers)  # longer than any non-stop
    assert await search(provider, query("JFK", "SYD", non_stop=True)) == []


async def test_city_codes_use_their_airports_and_round_trips_have_two_itineraries(
    provider: OfflineProvider,
) -> None:
    offers = await search(provider, query("NYC", "LON", return_date=DAY + dt.timedelta(days=7)))
    assert offers
    for offer in offers:
        out, back = offer.itineraries
        assert out.segments[0].departure_airport in {"JFK", "EWR", "LGA"}
        assert back.segments[0].departure_airport in {"LHR", "LGW", "STN", "LTN", "LCY", "SEN"}


async def test_prices_grow_with_cabin_adults_and_distance(provider: OfflineProvider) -> None:
    async def cheapest(q: Query) -> Decimal:
        return Decimal((await search(provider, q))[0].total_price.amount)

    economy = await cheapest(query())
    assert await cheapest(query(cabin=search_pb2.CABIN_BUSINESS)) > 3 * economy
    assert await cheapest(query(adults=2)) == 2 * economy
    assert await cheapest(query("LHR", "CDG")) < economy


async def test_children_and_infants_are_priced_at_fixed_shares_of_the_adult_fare(
    provider: OfflineProvider,
) -> None:
    """A child's seat is 75 % of the adult fare and a lap infant 10 %, on the flights the
    adults alone would see; the total is the whole party's, still labelled demo data."""
    trip = {"return_date": DAY + dt.timedelta(days=7), "currency": "EUR"}
    adults = await search(provider, query("NYC", "LON", adults=2, **trip))
    family = await search(provider, query("NYC", "LON", adults=2, children=1, infants=1, **trip))
    assert adults and len(family) == len(adults)
    by_flights = {offer_flights(o): Decimal(o.total_price.amount) for o in adults}
    for offer in family:
        assert offer.demo_data and offer.total_price.currency_code == "EUR"
        two = by_flights[offer_flights(offer)]
        expected = two / 2 * (2 + Decimal("0.75") + Decimal("0.1"))
        assert abs(Decimal(offer.total_price.amount) - expected) <= Decimal("0.01"), offer
    # Each traveller type costs something, and a child more than an infant.
    child = await search(provider, query("NYC", "LON", adults=2, children=1, **trip))
    infant = await search(provider, query("NYC", "LON", adults=2, infants=1, **trip))
    cheapest = [Decimal(o[0].total_price.amount) for o in (adults, infant, child, family)]
    assert cheapest == sorted(set(cheapest)), cheapest
    # The same party gives the same offers; another party other offer ids.
    again = await search(provider, query("NYC", "LON", adults=2, children=1, infants=1, **trip))
    assert [o.SerializeToString() for o in again] == [o.SerializeToString() for o in family]
    assert not {o.id for o in family} & {o.id for o in adults}


async def test_seats_left_are_never_fewer_than_the_party_takes(provider: OfflineProvider) -> None:
    """An offer says how many seats are left at its price; for 4 adults and 2 children it said
    1, 3 or 5, so the bot told a family of six "3 seats left at this price." for an offer they
    could not book. Now at least the seats searched (lap infants take none)."""
    family = await search(provider, query("NYC", "LON", adults=4, children=2, infants=3))
    seats = [o.seats_left if o.HasField("seats_left") else None for o in family]
    assert min((n for n in seats if n is not None), default=6) >= 6, seats
    # The same draw as the adults' alone (the flights are theirs), raised to the party's seats.
    adults = await search(provider, query("NYC", "LON", adults=4))
    drawn = [o.seats_left if o.HasField("seats_left") else None for o in adults]
    assert seats == [None if n is None else max(n, 6) for n in drawn]


def offer_flights(offer: search_pb2.FlightOffer) -> tuple[str, ...]:
    return tuple(
        f"{s.carrier_code}{s.flight_number}@{s.departure_time}"
        for i in offer.itineraries
        for s in i.segments
    )


async def test_unknown_currency_is_invalid_argument(provider: OfflineProvider) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await search(provider, query(currency="XYZ"))
    assert "currency_code" in dict(caught.value.violations)
    yen = await search(provider, query(currency="JPY"))
    assert "." not in yen[0].total_price.amount


async def test_failure_file_makes_it_fail(places: Places, tmp_path: Path) -> None:
    switch = tmp_path / "fail"
    provider = OfflineProvider(places, failure_file=str(switch))
    assert await search(provider, query())
    switch.touch()
    with pytest.raises(ProviderUnavailable):
        await search(provider, query())
    switch.unlink()
    assert await search(provider, query())
