"""The offline provider: plausible, deterministic demonstration fares from real airport data.

Same route, dates and options → same offers, because every choice comes from a random generator
seeded with a hash of the query. Flight times come from the great-circle distance, connections
for long routes go through real hubs that keep the detour small, local times carry the airports'
UTC offsets, and prices move with distance, cabin, how far ahead and which day. Every offer is
labelled as demo data. When ``SEARCH_OFFLINE_FAILURE_FILE`` names a file that exists, every
search fails as an outage would: a fault-injection switch for tests and drills.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import random
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from google.protobuf import duration_pb2

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.search.places import PlaceInfo, Places, zone
from services.search.providers.base import (
    Provider,
    ProviderFactory,
    ProviderUnavailable,
    Query,
)
from services.search.settings import SearchSettings

DEFAULT_CURRENCY = "USD"
# Fixed demonstration exchange rates (units per US dollar). Not market data.
DEMO_RATES: dict[str, Decimal] = {
    code: Decimal(rate)
    for code, rate in {
        "USD": "1", "EUR": "0.92", "GBP": "0.79", "JPY": "150", "CAD": "1.36", "AUD": "1.52",
        "CHF": "0.88", "CNY": "7.2", "INR": "83", "BRL": "5.0", "MXN": "17", "ILS": "3.7",
        "AED": "3.67", "SEK": "10.5", "NOK": "10.6", "DKK": "6.9", "PLN": "4.0", "TRY": "32",
        "ZAR": "18.5", "SGD": "1.34", "HKD": "7.8", "KRW": "1330", "NZD": "1.64", "THB": "36",
        "CZK": "23", "HUF": "360", "SAR": "3.75", "QAR": "3.64", "KWD": "0.31", "BHD": "0.376",
        "EGP": "48", "ARS": "900", "CLP": "930", "COP": "3900", "PEN": "3.7", "ISK": "138",
        "RON": "4.6", "TWD": "32", "PHP": "56", "IDR": "15600", "MYR": "4.7", "VND": "24500",
    }.items()
}  # fmt: skip
ZERO_DECIMALS = {"JPY", "KRW", "CLP", "ISK", "VND", "IDR", "HUF", "COP"}
THREE_DECIMALS = {"KWD", "BHD", "OMR", "JOD", "TND"}

# Hubs that connections go through, and the carrier based there.
HUB_CARRIERS = {
    "DXB": "EK", "DOH": "QR", "IST": "TK", "FRA": "LH", "MUC": "LH", "LHR": "BA", "CDG": "AF",
    "AMS": "KL", "MAD": "IB", "SIN": "SQ", "HKG": "CX", "ICN": "KE", "NRT": "JL", "HND": "NH",
    "ORD": "UA", "ATL": "DL", "DFW": "AA", "JFK": "DL", "EWR": "UA", "LAX": "AA", "DEN": "UA",
    "ZRH": "LX", "VIE": "OS", "AUH": "EY", "ADD": "ET", "SYD": "QF", "YYZ": "AC", "PEK": "CA",
    "PVG": "MU", "CAN": "CZ", "DEL": "AI", "BKK": "TG", "KUL": "MH", "HEL": "AY", "CPH": "SK",
    "LIS": "TP", "MEX": "AM", "GRU": "LA", "BOG": "AV", "PTY": "CM", "JNB": "SA", "CAI": "MS",
    "NBO": "KQ", "MIA": "AA", "IAH": "UA", "SEA": "AS", "SFO": "UA", "MSP": "DL", "DTW": "DL",
    "CLT": "AA", "TPE": "CI", "MNL": "PR", "SCL": "LA", "AKL": "NZ", "YVR": "AC", "BOM": "AI",
}  # fmt: skip
COUNTRY_CARRIERS = {
    "US": ("AA", "DL", "UA", "B6", "AS"), "GB": ("BA", "VS", "U2"), "FR": ("AF",),
    "DE": ("LH", "EW"), "NL": ("KL",), "ES": ("IB", "VY", "UX"), "IT": ("AZ",),
    "IE": ("EI", "FR"), "CH": ("LX",), "AT": ("OS",), "BE": ("SN",), "PT": ("TP",),
    "SE": ("SK", "DY"), "NO": ("SK", "DY"), "DK": ("SK",), "FI": ("AY",), "PL": ("LO",),
    "TR": ("TK", "PC"), "AE": ("EK", "EY"), "QA": ("QR",), "IL": ("LY",), "IN": ("AI", "6E"),
    "CN": ("CA", "MU", "CZ"), "JP": ("JL", "NH"), "KR": ("KE", "OZ"), "SG": ("SQ",),
    "HK": ("CX",), "TH": ("TG",), "AU": ("QF", "VA"), "NZ": ("NZ",), "CA": ("AC", "WS"),
    "MX": ("AM",), "BR": ("LA", "G3", "AD"), "AR": ("AR",), "CL": ("LA",), "CO": ("AV",),
    "ZA": ("SA",), "EG": ("MS",), "ET": ("ET",), "KE": ("KQ",), "MA": ("AT",), "SA": ("SV",),
    "GR": ("A3",), "GE": ("A9",), "IS": ("FI",),
}  # fmt: skip
GLOBAL_CARRIERS = ("AA", "BA", "LH", "AF", "TK", "EK", "QR", "DL", "UA", "KL")
CABIN_FACTOR: dict[int, Decimal] = {
    search_pb2.CABIN_ECONOMY: Decimal("1"),
    search_pb2.CABIN_PREMIUM_ECONOMY: Decimal("1.7"),
    search_pb2.CABIN_BUSINESS: Decimal("4.2"),
    search_pb2.CABIN_FIRST: Decimal("7.5"),
}
# A child's fare and a lap infant's, as shares of the adult fare: fixed demo figures in the
# range airlines charge (a child 75-100 %, an infant on a lap around 10 % plus taxes).
CHILD_SHARE = Decimal("0.75")
INFANT_SHARE = Decimal("0.1")
CRUISE_KMH = 820
TAXI_MINUTES = 35
MAX_DIRECT_KM = 15_500  # longer than any non-stop flown today
MIN_LEG_KM = 250
MIN_TURNAROUND = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Leg:
    carrier: str
    number: str
    origin: PlaceInfo
    destination: PlaceInfo
    departure: dt.datetime  # aware, UTC
    minutes: int
    aircraft: str


@dataclass(frozen=True, slots=True)
class Option:
    """One itinerary with its price in US dollars for one adult in economy."""

    legs: tuple[Leg, ...]
    base_usd: Decimal

    @property
    def stops(self) -> int:
        return len(self.legs) - 1

    @property
    def earliest_return(self) -> dt.datetime:
        """When the last flight lands, plus the least time before a return flight can leave."""
        last = self.legs[-1]
        return last.departure + dt.timedelta(minutes=last.minutes) + MIN_TURNAROUND


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _flight_minutes(km: float, rng: random.Random) -> int:
    minutes = km / CRUISE_KMH * 60 + TAXI_MINUTES
    return max(30, int(round(minutes * rng.uniform(0.97, 1.05) / 5) * 5))


def _aircraft(km: float, rng: random.Random) -> str:
    if km < 1500:
        return rng.choice(("320", "738", "E90", "AT7" if km < 500 else "319"))
    if km < 5000:
        return rng.choice(("321", "739", "32N", "7M8"))
    return rng.choice(("789", "359", "77W", "388" if km > 9000 else "333"))


def _local(moment: dt.datetime, place: PlaceInfo) -> str:
    return moment.astimezone(zone(place.tz)).isoformat()


def _duration(minutes: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=minutes * 60)


def quantize(amount: Decimal, currency: str) -> Decimal:
    digits = 0 if currency in ZERO_DECIMALS else 3 if currency in THREE_DECIMALS else 2
    return amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


class OfflineProvider(Provider):
    name = "offline"
    breaker_name = "offline_provider"
    demo_data = True

    def __init__(
        self, places: Places, failure_file: str | None = None, rate_limit: float = 0.0
    ) -> None:
        self.places = places
        self.failure_file = failure_file
        self.rate_limit_per_second = rate_limit
        self._hubs = [places.by_code[c] for c in HUB_CARRIERS if c in places.by_code]

    async def search(self, query: Query, deadline: float) -> list[search_pb2.FlightOffer]:
        # A stat of a local path: cheap enough to do inline on every search.
        if self.failure_file and os.path.exists(self.failure_file):  # noqa: ASYNC240
            raise ProviderUnavailable("offline provider failure injected (failure file present)")
        currency = query.currency or DEFAULT_CURRENCY
        rate = DEMO_RATES.get(currency)
        if rate is None:
            raise InvalidArgument(
                "currency_code", f"the offline provider does not price in {currency}"
            )
        outbound = self._options(query.origin, query.destination, query.departure, query)
        inbound = (
            self._options(query.destination, query.origin, query.return_date, query)
            if query.return_date
            else []
        )
        if not outbound or (query.return_date and not inbound):
            return []
        # Seeded without the children and infants: a family sees the flights its adults alone
        # would, each child and infant at a fixed share of the adult fare.
        rng = _rng("offers", replace(query, children=0, infants=0).key())
        party = query.adults + CHILD_SHARE * query.children + INFANT_SHARE * query.infants
        seated = query.adults + query.children  # lap infants take no seat
        factor = CABIN_FACTOR.get(query.cabin, Decimal(1)) * party * rate
        count = min(query.max_results * 2, max(len(outbound), len(outbound) * len(inbound)))
        priced: list[tuple[Decimal, str, int, int, int | None]] = []
        seen: set[tuple[int, int]] = set()
        # A return flight leaves at least an hour after the outbound one has landed.
        later = [
            [i for i, back in enumerate(inbound) if back.legs[0].departure >= out.earliest_return]
            for out in outbound
        ]
        for index in range(count):
            out_i = index % len(outbound)
            in_i = -1
            if inbound:
                if not later[out_i]:
                    continue
                in_i = rng.choice(later[out_i])
            if (out_i, in_i) in seen:
                continue
            seen.add((out_i, in_i))
            usd = outbound[out_i].base_usd
            if inbound:
                usd = (usd + inbound[in_i].base_usd) * Decimal("0.95")  # round trips: cheaper
            seats = rng.randint(1, 9) if rng.random() < 0.6 else None
            if seats is not None:
                # Bookable for the whole party, as a provider lists offers: never "3 seats
                # left" to 4 adults and 2 children.
                seats = max(seats, seated)
            digest = hashlib.sha256(f"{query.key()}|{out_i}|{in_i}".encode()).hexdigest()
            priced.append(
                (quantize(usd * factor, currency), f"demo-{digest[:16]}", out_i, in_i, seats)
            )
        priced.sort(key=lambda item: (item[0], item[1]))
        # Protos only for the offers returned, each itinerary built once.
        built: dict[tuple[int, int], search_pb2.Itinerary] = {}

        def itinerary(direction: int, index: int) -> search_pb2.Itinerary:
            if (direction, index) not in built:
                option = (outbound if direction == 0 else inbound)[index]
                built[(direction, index)] = self._itinerary(option)
            return built[(direction, index)]

        offers = []
        for total, offer_id, out_i, in_i, seats in priced[: query.max_results]:
            itineraries = [itinerary(0, out_i)] + ([itinerary(1, in_i)] if inbound else [])
            offers.append(
                search_pb2.FlightOffer(
                    id=offer_id,
                    total_price=search_pb2.Money(currency_code=currency, amount=str(total)),
                    itineraries=itineraries,
                    seats_left=seats,
                    validating_carrier=outbound[out_i].legs[0].carrier,
                    demo_data=True,
                )
            )
        return offers

    # -- schedule ----------------------------------------------------------------------------

    def _options(
        self, origin_code: str, destination_code: str, day: dt.date | None, query: Query
    ) -> list[Option]:
        """Itineraries for one direction on one day: non-stops, then one-stops via hubs."""
        assert day is not None
        rng = _rng("schedule", origin_code, destination_code, day.isoformat())
        origins = self.places.airports_of(origin_code)
        destinations = self.places.airports_of(destination_code)
        options: list[Option] = []
        for _ in range(rng.randint(2, 4)):
            o, d = rng.choice(origins), rng.choice(destinations)
            km = self.places.distance_km(o.code, d.code)
            # Long routes have few non-stops, the longest none.
            if km > MAX_DIRECT_KM or (km > 9000 and rng.random() < 0.5):
                continue
            options.append(self._option(rng, (o, d), day, query))
        if not query.non_stop:
            for hub_route in self._via_hubs(rng, origins, destinations):
                options.append(self._option(rng, hub_route, day, query))
        return options

    def _via_hubs(
        self,
        rng: random.Random,
        origins: tuple[PlaceInfo, ...],
        destinations: tuple[PlaceInfo, ...],
    ) -> list[tuple[PlaceInfo, PlaceInfo, PlaceInfo]]:
        o, d = origins[0], destinations[0]
        direct = self.places.distance_km(o.code, d.code)
        endpoints = {p.code for p in origins} | {p.code for p in destinations}
        scored = []
        for hub in self._hubs:
            if hub.code in endpoints:
                continue
            first = self.places.distance_km(o.code, hub.code)
            second = self.places.distance_km(hub.code, d.code)
            if min(first, second) < MIN_LEG_KM or max(first, second) > MAX_DIRECT_KM:
                continue
            detour = (first + second) / max(direct, 1.0)
            if detour <= 1.3:
                scored.append((detour, hub.code, hub))
        scored.sort(key=lambda item: (item[0], item[1]))
        hubs = [hub for _, _, hub in scored[:6]]
        rng.shuffle(hubs)
        return [(rng.choice(origins), hub, rng.choice(destinations)) for hub in hubs[:4]]

    def _option(
        self, rng: random.Random, stops: tuple[PlaceInfo, ...], day: dt.date, query: Query
    ) -> Option:
        first = stops[0]
        local_hour = rng.choice((6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22))
        departure = dt.datetime.combine(
            day, dt.time(local_hour, rng.randrange(0, 60, 5)), zone(first.tz)
        ).astimezone(dt.UTC)
        legs = []
        hub_carrier = HUB_CARRIERS.get(stops[1].code) if len(stops) > 2 else None
        carrier = hub_carrier or rng.choice(COUNTRY_CARRIERS.get(first.country, GLOBAL_CARRIERS))
        total_km = 0.0
        for a, b in itertools.pairwise(stops):
            km = self.places.distance_km(a.code, b.code)
            total_km += km
            minutes = _flight_minutes(km, rng)
            legs.append(
                Leg(
                    carrier=carrier,
                    number=str(rng.randint(10, 2999)),
                    origin=a,
                    destination=b,
                    departure=departure,
                    minutes=minutes,
                    aircraft=_aircraft(km, rng),
                )
            )
            departure += dt.timedelta(minutes=minutes + rng.randrange(60, 245, 5))
        return Option(tuple(legs), self._price_usd(rng, total_km, len(legs) - 1, day))

    def _price_usd(self, rng: random.Random, km: float, stops: int, day: dt.date) -> Decimal:
        price = 45 + 0.09 * km
        days_ahead = (day - dt.date.today()).days
        price *= (
            1.35 if days_ahead < 7 else 1.15 if days_ahead < 21 else 0.95 if days_ahead > 60 else 1
        )
        price *= 1.08 if day.weekday() in (4, 6) else 1.0  # Fridays and Sundays
        price *= 1.12 if day.month in (7, 8, 12) else 1.0  # high season
        price *= 0.85 if stops else 1.0
        price *= rng.uniform(0.85, 1.2)  # carriers differ
        return Decimal(str(round(price, 2)))

    def _itinerary(self, option: Option) -> search_pb2.Itinerary:
        segments = []
        for leg in option.legs:
            arrival = leg.departure + dt.timedelta(minutes=leg.minutes)
            segments.append(
                search_pb2.Segment(
                    carrier_code=leg.carrier,
                    flight_number=leg.number,
                    departure_airport=leg.origin.code,
                    departure_time=_local(leg.departure, leg.origin),
                    arrival_airport=leg.destination.code,
                    arrival_time=_local(arrival, leg.destination),
                    duration=_duration(leg.minutes),
                    aircraft_code=leg.aircraft,
                )
            )
        last = option.legs[-1]
        end = last.departure + dt.timedelta(minutes=last.minutes)
        total = int((end - option.legs[0].departure).total_seconds() // 60)
        return search_pb2.Itinerary(
            segments=segments, stops=option.stops, duration=_duration(total)
        )


def _create(settings: SearchSettings, places: Places) -> Provider:
    return OfflineProvider(
        places,
        failure_file=settings.search_offline_failure_file,
        rate_limit=settings.search_offline_rate_limit_per_second,
    )


FACTORY = ProviderFactory(name="offline", priority=100, create=_create)
