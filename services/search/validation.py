"""Request validation: every violation is INVALID_ARGUMENT naming the field (all at once)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.search.places import Places, zone
from services.search.providers.base import Query

MAX_DAYS_AHEAD = 361
MAX_SEATED = 9  # travellers with a seat (adults and children) in one search, as airlines allow
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_CODE = re.compile(r"^[A-Z]{3}$")
MAX_WARM_ROUTES = 500
_CABINS = frozenset(search_pb2.Cabin.values())  # Cabin.values() builds a list on every call

Today = Callable[[str], dt.date]  # IANA time zone → today's date there


def today_in(tz: str) -> dt.date:
    return dt.datetime.now(zone(tz)).date()


def _code(value: str, field: str, places: Places, errors: list[tuple[str, str]]) -> str:
    code = value.strip().upper()
    if not code:
        errors.append((field, "required: an IATA airport or city code, e.g. JFK or NYC"))
    elif not _CODE.match(code):
        errors.append((field, "must be a 3-letter IATA airport or city code"))
    elif places.get(code) is None:
        errors.append((field, f"unknown IATA airport or city code {code[:3]}"))
    return code


def _date(value: str) -> dt.date | None:
    value = value.strip()  # as the codes are: " 2026-12-03" was refused as missing
    try:
        return dt.date.fromisoformat(value) if len(value) <= 10 else None
    except ValueError:
        return None


def same_place(origin: str, destination: str, places: Places) -> bool:
    """Whether the two known codes share an airport (NYC and EWR): no trip to search."""
    return bool(
        {a.code for a in places.airports_of(origin)}
        & {a.code for a in places.airports_of(destination)}
    )


def validate_search(
    request: search_pb2.SearchFlightsRequest, places: Places, today: Today = today_in
) -> Query:
    errors: list[tuple[str, str]] = []
    origin = _code(request.origin, "origin", places, errors)
    destination = _code(request.destination, "destination", places, errors)
    origin_place, destination_place = places.get(origin), places.get(destination)
    if origin_place and destination_place and same_place(origin, destination, places):
        errors.append(("destination", "must differ from origin"))

    departure = _date(request.departure_date)
    # "Today" where the trip starts: a flight tonight in Los Angeles is not in the past while
    # it is already tomorrow in UTC.
    local_today = today(origin_place.tz if origin_place else "UTC")
    if departure is None:
        errors.append(("departure_date", "required: an ISO-8601 date, e.g. 2026-12-24"))
    elif departure < local_today:
        errors.append(("departure_date", "must not be in the past"))
    elif (departure - local_today).days > MAX_DAYS_AHEAD:
        errors.append(("departure_date", f"must be at most {MAX_DAYS_AHEAD} days ahead"))

    return_date: dt.date | None = None
    if request.return_date.strip():
        return_date = _date(request.return_date)
        if return_date is None:
            errors.append(("return_date", "must be an ISO-8601 date, e.g. 2026-12-31, or empty"))
        elif departure is not None and return_date < departure:
            errors.append(("return_date", "must not be before departure_date"))
        elif (return_date - local_today).days > MAX_DAYS_AHEAD:
            errors.append(("return_date", f"must be at most {MAX_DAYS_AHEAD} days ahead"))

    adults = request.adults or 1
    # Children and infants are weighed against the adults only when those are valid: a bad
    # adults count is its own violation, not the children's or the infants' too.
    adults_valid = 1 <= adults <= MAX_SEATED
    if not adults_valid:
        errors.append(("adults", f"must be 1-{MAX_SEATED}"))
    children, infants = request.children, request.infants
    if children < 0:
        errors.append(("children", "must not be negative"))
    elif adults_valid and adults + children > MAX_SEATED:
        errors.append(
            ("children", f"adults and children take a seat each: at most {MAX_SEATED} together")
        )
    if infants < 0:
        errors.append(("infants", "must not be negative"))
    elif adults_valid and infants > adults:
        errors.append(("infants", "at most one per adult: each travels on an adult's lap"))
    cabin = request.cabin or search_pb2.CABIN_ECONOMY
    if cabin not in _CABINS:
        errors.append(("cabin", "unknown cabin"))
    max_results = request.max_results or 10
    if not 1 <= max_results <= 50:
        errors.append(("max_results", "must be 1-50"))
    currency = request.currency_code.strip().upper()
    if currency and not _CURRENCY.match(currency):
        errors.append(("currency_code", "must be an ISO 4217 code, e.g. USD"))

    if errors:
        raise InvalidArgument(*errors[0], *errors[1:])
    assert departure is not None
    return Query(
        origin=origin,
        destination=destination,
        departure=departure,
        return_date=return_date,
        adults=adults,
        cabin=cabin,
        non_stop=request.non_stop,
        max_results=max_results,
        currency=currency,
        children=children,
        infants=infants,
    )


class SearchChecks:
    """:func:`validate_search` remembered per request until the date changes where the trip
    starts (the only thing besides the request that its answer depends on).

    The same popular searches come in all day, and checking one again cost a tenth of a cached
    search's CPU. Requests that fail are not remembered; ``limit`` bounds the memory (oldest
    first out).
    """

    def __init__(self, places: Places, limit: int = 4096) -> None:
        self.places = places
        self.limit = limit
        self._checked: dict[bytes, tuple[Query, float]] = {}  # request → (query, valid until)

    def __call__(self, request: search_pb2.SearchFlightsRequest) -> Query:
        raw = request.SerializeToString(deterministic=True)
        now = time.time()
        remembered = self._checked.get(raw)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        query = validate_search(request, self.places)
        if len(self._checked) >= self.limit:
            del self._checked[next(iter(self._checked))]
        self._checked[raw] = (query, _next_midnight(self.places.by_code[query.origin].tz, now))
        return query


def _next_midnight(tz: str, now: float) -> float:
    """When the date after the one at ``now`` begins in ``tz`` (epoch seconds)."""
    zone_info = zone(tz)
    tomorrow = dt.datetime.fromtimestamp(now, zone_info).date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(), tzinfo=zone_info).timestamp()


def validate_resolve(request: search_pb2.ResolvePlaceRequest) -> tuple[str, int]:
    errors: list[tuple[str, str]] = []
    query = request.query.strip()
    if not query:
        errors.append(("query", "required: the name or code of a place"))
    elif len(query) > 100:
        errors.append(("query", "must be at most 100 characters"))
    limit = request.max_results or 5
    if not 1 <= limit <= 20:
        errors.append(("max_results", "must be 1-20"))
    if errors:
        raise InvalidArgument(*errors[0], *errors[1:])
    return query, limit


def validate_nearest(request: search_pb2.FindNearestAirportsRequest) -> tuple[float, float, int]:
    errors: list[tuple[str, str]] = []
    if not (math.isfinite(request.latitude) and -90 <= request.latitude <= 90):
        errors.append(("latitude", "must be a number from -90 to 90"))
    if not (math.isfinite(request.longitude) and -180 <= request.longitude <= 180):
        errors.append(("longitude", "must be a number from -180 to 180"))
    limit = request.max_results or 3
    if not 1 <= limit <= 20:
        errors.append(("max_results", "must be 1-20"))
    if errors:
        raise InvalidArgument(*errors[0], *errors[1:])
    return request.latitude, request.longitude, limit


def validate_warm(
    request: search_pb2.WarmCacheRequest, places: Places
) -> tuple[list[tuple[str, str]], int]:
    errors: list[tuple[str, str]] = []
    days = request.days_ahead or 7
    if not 1 <= days <= 30:
        errors.append(("days_ahead", "must be 1-30"))
    if len(request.routes) > MAX_WARM_ROUTES:
        errors.append(("routes", f"at most {MAX_WARM_ROUTES} routes per call"))
    routes = []
    for i, route in enumerate(request.routes[:MAX_WARM_ROUTES]):
        origin = _code(route.origin, f"routes[{i}].origin", places, errors)
        destination = _code(route.destination, f"routes[{i}].destination", places, errors)
        # As SearchFlights refuses it: a warmed NYC-EWR would be a provider call no search reads.
        known = places.get(origin) is not None and places.get(destination) is not None
        if known and same_place(origin, destination, places):
            errors.append((f"routes[{i}].destination", "must differ from origin"))
        routes.append((origin, destination))
    if errors:
        raise InvalidArgument(*errors[0], *errors[1:20])
    return routes, days
