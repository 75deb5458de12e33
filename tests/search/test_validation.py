"""Request validation: every violation names its field."""

from __future__ import annotations

import datetime as dt

import pytest

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.search import validation
from services.search.places import Places
from services.search.validation import (
    SearchChecks,
    validate_nearest,
    validate_resolve,
    validate_search,
    validate_warm,
)

TODAY = dt.date(2026, 11, 21)


def fixed_today(tz: str) -> dt.date:
    return TODAY


def request(**overrides: object) -> search_pb2.SearchFlightsRequest:
    fields: dict[str, object] = {
        "origin": "JFK",
        "destination": "LHR",
        "departure_date": "2026-12-01",
    }
    fields.update(overrides)
    return search_pb2.SearchFlightsRequest(**fields)  # type: ignore[arg-type]


def violations(places: Places, **overrides: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validate_search(request(**overrides), places, fixed_today)
    return dict(caught.value.violations)


def test_a_good_request_is_normalized(places: Places) -> None:
    query = validate_search(
        request(
            origin=" nyc ",
            destination="lon",
            currency_code="eur",
            departure_date=" 2026-12-01",  # spaces around, as around the codes
            return_date="2026-12-08 ",
        ),
        places,
        fixed_today,
    )
    assert (query.origin, query.destination, query.currency) == ("NYC", "LON", "EUR")
    assert query.departure == dt.date(2026, 12, 1)
    assert query.return_date == dt.date(2026, 12, 8)
    assert (query.adults, query.cabin, query.max_results) == (1, search_pb2.CABIN_ECONOMY, 10)
    assert query.key() == "NYC:LON:2026-12-01:2026-12-08:1:ECONOMY:0:10:EUR"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"origin": ""}, "origin"),
        ({"origin": "JF"}, "origin"),
        ({"origin": "J1K"}, "origin"),
        ({"origin": "QQQ"}, "origin"),
        ({"destination": "ZZZ"}, "destination"),
        ({"destination": "JFK"}, "destination"),
        ({"origin": "NYC", "destination": "EWR"}, "destination"),
        ({"departure_date": ""}, "departure_date"),
        ({"departure_date": "01/12/2026"}, "departure_date"),
        ({"departure_date": "2026-02-30"}, "departure_date"),
        ({"departure_date": "2026-11-20"}, "departure_date"),
        ({"departure_date": "2027-11-18"}, "departure_date"),
        ({"return_date": "2026-11-30"}, "return_date"),
        ({"return_date": "tomorrow"}, "return_date"),
        ({"adults": 10}, "adults"),
        ({"adults": -1}, "adults"),
        ({"children": -1}, "children"),
        ({"children": 9}, "children"),  # with the 1 adult of 0: 10 seats
        ({"adults": 7, "children": 3}, "children"),
        ({"infants": -1}, "infants"),
        ({"infants": 2}, "infants"),  # one adult, one lap
        ({"adults": 3, "infants": 4}, "infants"),
        ({"cabin": 9}, "cabin"),
        ({"max_results": 51}, "max_results"),
        ({"max_results": -3}, "max_results"),
        ({"currency_code": "EURO"}, "currency_code"),
        ({"currency_code": "€"}, "currency_code"),
    ],
)
def test_each_violation_names_its_field(
    places: Places, overrides: dict[str, object], field: str
) -> None:
    assert field in violations(places, **overrides)


def test_boundaries_are_inclusive(places: Places) -> None:
    ok = validate_search(
        request(departure_date="2026-11-21", adults=9, max_results=50), places, fixed_today
    )
    assert ok.departure == TODAY
    last = (TODAY + dt.timedelta(days=361)).isoformat()
    assert validate_search(request(departure_date=last), places, fixed_today).departure
    same_day = validate_search(request(return_date="2026-12-01"), places, fixed_today)
    assert same_day.return_date == same_day.departure


def test_children_and_infants_are_part_of_the_query_and_its_key(places: Places) -> None:
    """Children and lap infants are searched, so they are part of the cache and single-flight
    key: a family's fares are never another party's. A query of adults alone keeps the key it
    always had (entries cached before children existed stay valid)."""
    family = validate_search(request(adults=2, children=7, infants=2), places, fixed_today)
    assert (family.adults, family.children, family.infants) == (2, 7, 2)
    assert family.key() == "JFK:LHR:2026-12-01:-:2a7c2i:ECONOMY:0:10:-"
    assert validate_search(request(adults=2, infants=1), places, fixed_today).key() == (
        "JFK:LHR:2026-12-01:-:2a0c1i:ECONOMY:0:10:-"
    )
    assert validate_search(request(adults=2), places, fixed_today).key() == (
        "JFK:LHR:2026-12-01:-:2:ECONOMY:0:10:-"
    )
    # The seats are the adults' and the children's; infants need no seat, only a lap each.
    ok = validate_search(request(adults=1, children=8, infants=1), places, fixed_today)
    assert (ok.adults, ok.children, ok.infants) == (1, 8, 1)
    found = violations(places, adults=9, children=1, infants=10)
    assert set(found) == {"children", "infants"}
    assert "at most 9" in found["children"] and "one per adult" in found["infants"]


def test_all_violations_are_reported_at_once(places: Places) -> None:
    found = violations(places, origin="", departure_date="x", adults=0, max_results=99)
    assert {"origin", "departure_date", "max_results"} <= set(found)


def test_today_is_the_origins_local_date(places: Places) -> None:
    seen: list[str] = []

    def today(tz: str) -> dt.date:
        seen.append(tz)
        return TODAY

    validate_search(request(origin="LAX"), places, today)
    assert seen == ["America/Los_Angeles"]


def test_resolve_and_nearest_and_warm_validation(places: Places) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_resolve(search_pb2.ResolvePlaceRequest(query="  "))
    assert "query" in dict(caught.value.violations)
    with pytest.raises(InvalidArgument) as caught:
        validate_resolve(search_pb2.ResolvePlaceRequest(query="x" * 101, max_results=21))
    assert {"query", "max_results"} == set(dict(caught.value.violations))
    assert validate_resolve(search_pb2.ResolvePlaceRequest(query="paris")) == ("paris", 5)
    with pytest.raises(InvalidArgument) as caught:
        validate_nearest(search_pb2.FindNearestAirportsRequest(latitude=91, longitude=float("nan")))
    assert {"latitude", "longitude"} == set(dict(caught.value.violations))
    assert validate_nearest(search_pb2.FindNearestAirportsRequest(latitude=1, longitude=2)) == (
        1,
        2,
        3,
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_warm(
            search_pb2.WarmCacheRequest(
                routes=[search_pb2.Route(origin="JFK", destination="QQQ")], days_ahead=31
            ),
            places,
        )
    assert {"days_ahead", "routes[0].destination"} == set(dict(caught.value.violations))


def counting_checks(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> tuple[SearchChecks, list[int]]:
    """SearchChecks whose real checks are counted."""
    calls: list[int] = []
    real = validation.validate_search

    def counted(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "validate_search", counted)
    return SearchChecks(places, limit=2), calls


def upcoming(days: int) -> str:
    return (dt.date.today() + dt.timedelta(days=days)).isoformat()


def test_a_request_checked_once_is_remembered_until_midnight_where_it_starts(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, calls = counting_checks(places, monkeypatch)
    good = request(origin="DEL", destination="LHR", departure_date=upcoming(30))
    first = checks(good)
    assert checks(good) == first and len(calls) == 1
    # Past midnight in Delhi (IST, +05:30) the request is checked again.
    midnight = validation._next_midnight("Asia/Kolkata", validation.time.time())
    local = dt.datetime.fromtimestamp(midnight, dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    monkeypatch.setattr(validation.time, "time", lambda: midnight)
    assert checks(good) == first and len(calls) == 2


def test_bad_requests_are_never_remembered_and_memory_is_bounded(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, calls = counting_checks(places, monkeypatch)
    bad = request(origin="JFK", destination="JFK", departure_date=upcoming(3))
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            checks(bad)
    assert len(calls) == 2
    for days in (1, 2, 3):  # the limit is 2: the first is let go
        checks(request(departure_date=upcoming(days)))
    checks(request(departure_date=upcoming(3)))
    assert len(calls) == 2 + 3
    checks(request(departure_date=upcoming(1)))
    assert len(calls) == 2 + 4
