"""A local fake of the Amadeus REST contract, served over real HTTP by uvicorn in a thread.

Endpoints as documented: ``POST /v1/security/oauth2/token`` (client credentials, form body),
``GET /v2/shopping/flight-offers`` and ``GET /v1/reference-data/locations`` (Bearer token).
Tests script failures per path (``script("/v2/shopping/flight-offers", 429, 500)`` → the next
calls answer 429, then 500, then normally) and read what was called. Flight offers are priced
for the adults, children and lap infants asked (one travelerPricing each, the offer's price
their sum), within the contract's bounds: a 400 naming the parameter otherwise; with a
``returnDate`` they are round trips (two itineraries, both ways priced), and ``currencyCode``
prices them in that currency (EUR without it; one the fake does not know is a 400).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import defaultdict, deque
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.processes import free_port, wait_for

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret-DO-NOT-LOG-4f9a"


# Bodies of the statuses Amadeus's common errors guide documents (title, detail).
DOCUMENTED_ERRORS = {
    404: ("Resource not found", "The targeted resource doesn't exist"),
    429: ("Too many requests", "The network rate limit is exceeded, please try again later"),
    500: ("Internal error", "An internal error occured, please contact your administrator"),
}


def problem(status: int, title: str, detail: str = "", parameter: str = "") -> dict[str, Any]:
    """One entry of an error response's ``errors[]``."""
    body: dict[str, Any] = {"status": status, "code": 38189, "title": title, "detail": detail}
    if parameter:
        body["source"] = {"parameter": parameter}
    return body


def _errors(status: int, problems: list[dict[str, Any]]) -> JSONResponse:
    """An error response listing every problem, as the contract does (all of one status)."""
    return JSONResponse({"errors": problems}, status_code=status)


def _error(status: int, title: str, detail: str = "", parameter: str = "") -> JSONResponse:
    return _errors(status, [problem(status, title, detail, parameter)])


# The fake's child and lap-infant fares, as shares of the adult fare (airlines' own differ).
CHILD_SHARE = Decimal("0.75")
INFANT_SHARE = Decimal("0.1")
# The fake's round trip, as a share of two one-way fares; its fares are in EUR, and
# ``currencyCode`` (optional; EUR when absent) gets them in another currency at these rates.
ROUND_TRIP_SHARE = Decimal("0.9")
RATES = {"EUR": Decimal(1), "USD": Decimal("1.08"), "GBP": Decimal("0.86")}
CENT = Decimal("0.01")
BA178 = ("BA", "178")


def traveler_pricings(
    fare: str, currency: str, party: tuple[int, int, int]
) -> list[dict[str, Any]]:
    """One pricing per traveller, as the contract lists them: ADULT, CHILD, then HELD_INFANT,
    each infant with the id of the adult whose lap it travels on."""
    adults, children, infants = party
    adult = Decimal(fare)
    kinds = [("ADULT", adult)] * adults + [("CHILD", adult * CHILD_SHARE)] * children
    kinds += [("HELD_INFANT", adult * INFANT_SHARE)] * infants
    pricings: list[dict[str, Any]] = []
    for number, (kind, amount) in enumerate(kinds, start=1):
        total = str(amount.quantize(CENT, rounding=ROUND_HALF_UP))
        pricing: dict[str, Any] = {
            "travelerId": str(number),
            "fareOption": "STANDARD",
            "travelerType": kind,
            "price": {"currency": currency, "total": total, "base": total},
            "fareDetailsBySegment": [{"segmentId": "1", "cabin": "ECONOMY", "class": "Y"}],
        }
        if kind == "HELD_INFANT":
            pricing["associatedAdultId"] = str(number - adults - children)
        pricings.append(pricing)
    return pricings


def offer(
    offer_id: str,
    origin: str,
    destination: str,
    date: str,
    fare: str,
    flight: tuple[str, str] = BA178,
    party: tuple[int, int, int] = (1, 0, 0),
    back: str | None = None,
    currency: str = "EUR",
) -> dict[str, Any]:
    """One offer; ``fare`` is one adult's one-way fare in EUR, ``party`` the adults, children
    and lap infants searched: the price is the whole party's, the sum of its travelerPricings, in
    ``currency``. ``back``, a return date, makes it a round trip: a second itinerary, the way
    back, and the fare of both ways. ``flight`` is the marketing carrier and its number (for a
    codeshare, another carrier's than the operating one, as in the documented contract)."""
    adult = Decimal(fare) * RATES[currency]
    if back:
        adult *= 2 * ROUND_TRIP_SHARE
    pricings = traveler_pricings(str(adult.quantize(CENT, ROUND_HALF_UP)), currency, party)
    total = str(sum(Decimal(p["price"]["total"]) for p in pricings))
    itineraries = [_itinerary(origin, destination, date, flight, "1")]
    if back:
        itineraries.append(_itinerary(destination, origin, back, (flight[0], "179"), "2"))
    return {
        "type": "flight-offer",
        "id": offer_id,
        "source": "GDS",
        "oneWay": not back,
        "numberOfBookableSeats": 4,
        "itineraries": itineraries,
        "price": {"currency": currency, "total": total, "base": total, "grandTotal": total},
        "validatingAirlineCodes": ["BA"],
        "travelerPricings": pricings,
    }


def _itinerary(
    origin: str, destination: str, date: str, flight: tuple[str, str], segment_id: str
) -> dict[str, Any]:
    return {
        "duration": "PT8H5M",
        "segments": [
            {
                "departure": {"iataCode": origin, "at": f"{date}T18:30:00"},
                "arrival": {"iataCode": destination, "at": f"{date}T22:35:00"},
                "carrierCode": flight[0],
                "number": flight[1],
                "aircraft": {"code": "777"},
                "operating": {"carrierCode": "BA"},
                "duration": "PT8H5M",
                "id": segment_id,
                "numberOfStops": 0,
            }
        ],
    }


def location(
    sub_type: str,
    code: str,
    name: str,
    address: tuple[str, str, str, str],
    offset: str,
    point: tuple[float, float],
) -> dict[str, Any]:
    """One Airport & City Search result in the FULL view (the documented default);
    ``address`` is the city, its code, the country's name and its code."""
    city, city_code, country, country_code = address
    return {
        "type": "location",
        "subType": sub_type,
        "name": name,
        "detailedName": f"{city}/{country_code}:{name}",
        "id": f"{sub_type[0]}{code}",
        "timeZoneOffset": offset,
        "iataCode": code,
        "geoCode": {"latitude": point[0], "longitude": point[1]},
        "address": {
            "cityName": city,
            "cityCode": city_code,
            "countryName": country,
            "countryCode": country_code,
        },
        "analytics": {"travelers": {"score": 27}},
    }


MUNICH = location(
    "AIRPORT",
    "MUC",
    "MUNICH INTERNATIONAL",
    ("MUNICH", "MUC", "GERMANY", "DE"),
    "+01:00",
    (48.35378, 11.78609),
)
# The fake's answer to "zzyzx…", text the local index cannot place: Daggett (DAG), a code the
# local index knows (a search accepts it), found for a name the local index does not have.
ZZYZX = location(
    "CITY",
    "DAG",
    "DAGGETT",
    ("DAGGETT", "DAG", "UNITED STATES OF AMERICA", "US"),
    "-08:00",
    (34.853722, -116.786694),
)


def light(item: dict[str, Any]) -> dict[str, Any]:
    """The LIGHT view: only the IATA code, name, detailed name, city name and country name
    (no country code), as the API's ``view`` parameter documents."""
    kept = {k: item[k] for k in ("type", "subType", "name", "detailedName", "iataCode")}
    address = item["address"]
    kept["address"] = {"cityName": address["cityName"], "countryName": address["countryName"]}
    return kept


def _party(query: Any) -> tuple[int, int, int] | JSONResponse:
    """adults (1-9, required), children and infants (0-9, optional) as the contract bounds
    them: at most 9 seated travellers, at most one lap infant per adult; otherwise a 400 with
    one error per problem, each naming its parameter."""
    counts, problems = [], []
    for name, least, default in (("adults", 1, None), ("children", 0, "0"), ("infants", 0, "0")):
        raw = query.get(name, default)
        if raw is None or not raw.isdigit() or not least <= int(raw) <= 9:
            problems.append(problem(400, "INVALID FORMAT", f"{name} must be {least}-9", name))
            raw = str(least)
        counts.append(int(raw))
    adults, children, infants = counts
    if adults + children > 9:
        problems.append(
            problem(400, "INVALID DATA RECEIVED", "at most 9 seated travelers", "children")
        )
    if infants > adults:
        problems.append(
            problem(400, "INVALID DATA RECEIVED", "infants must not exceed adults", "infants")
        )
    return _errors(400, problems) if problems else (adults, children, infants)


# A scripted answer: a status (with the documented body), a status with headers, or an error
# body's problems (several at once, all of one status).
Scripted = int | tuple[int, dict[str, str]] | list[dict[str, Any]]


class FakeAmadeus:
    def __init__(self, token_ttl: int = 1799) -> None:
        self.port = free_port()
        self.token_ttl = token_ttl
        self.tokens: dict[str, float] = {}  # token → when it expires (monotonic)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.scripts: defaultdict[str, deque[Scripted]] = defaultdict(deque)
        self.delay = 0.0
        self.token_delay = 0.0  # a slow token endpoint
        # Seconds before each next 401 of the offers endpoint goes out (one per refusal).
        self.refusal_delays: list[float] = []
        # Scripted errors quote the request's Authorization header, as some gateways' errors do.
        self.echo_authorization = False
        # When set, the offers answered instead of the priced ones, as given (one missing a
        # field, say).
        self.offers: list[dict[str, Any]] | None = None
        self.app = self._build()
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAmadeus:
        self._thread.start()
        if not wait_for(lambda: self._server.started, timeout=10):
            raise RuntimeError("fake Amadeus did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def reset(self) -> None:
        self.tokens.clear()
        self.calls.clear()
        self.requests.clear()
        self.scripts.clear()
        self.delay = 0.0
        self.token_delay = 0.0
        self.refusal_delays = []
        self.echo_authorization = False
        self.offers = None

    def script(self, path: str, *statuses: Scripted) -> None:
        """The next calls to ``path`` answer these statuses (with optional headers, or as the
        list of problems given), in order."""
        self.scripts[path].extend(statuses)

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def _scripted(self, path: str, request: Request | None = None) -> JSONResponse | None:
        if not self.scripts[path]:
            return None
        item = self.scripts[path].popleft()
        if isinstance(item, list):
            return _errors(item[0]["status"], item)
        status, headers = item if isinstance(item, tuple) else (item, {})
        echo = ""
        if self.echo_authorization and request is not None:
            echo = f" (request had {request.headers.get('authorization', '')})"
        if status == 400:
            return _error(
                400, "INVALID FORMAT", f"departureDate is in the past{echo}", "departureDate"
            )
        title, detail = DOCUMENTED_ERRORS.get(status, ("SCRIPTED ERROR", ""))
        response = _error(status, title, detail + echo)
        response.headers.update(headers)
        return response

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        # Refused once expired, as the contract's 401 "Access token expired" says.
        expires = self.tokens.get(header[7:]) if header.startswith("Bearer ") else None
        return expires is not None and time.monotonic() < expires

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/security/oauth2/token")
        async def token(request: Request) -> JSONResponse:
            path = "/v1/security/oauth2/token"
            self.calls[path] += 1
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            scripted = self._scripted(path)
            if scripted is not None:
                return scripted
            # The documented body is application/x-www-form-urlencoded.
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return _error(400, "Invalid parameters", "grant_type")
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                # The body the authorization guide documents for unrecognised credentials.
                body = {
                    "error": "invalid_client",
                    "error_description": "Client credentials are invalid",
                    "code": 38187,
                    "title": "Invalid parameters",
                }
                return JSONResponse(body, status_code=401)
            value = secrets.token_urlsafe(16)
            self.tokens[value] = time.monotonic() + self.token_ttl
            return JSONResponse(
                {
                    "type": "amadeusOAuth2Token",
                    "username": "test@example.com",
                    "application_name": "parley-test",
                    "client_id": CLIENT_ID,
                    "token_type": "Bearer",
                    "access_token": value,
                    "expires_in": self.token_ttl,
                    "state": "approved",
                    "scope": "",
                }
            )

        @app.get("/v2/shopping/flight-offers")
        async def offers(request: Request) -> JSONResponse:
            path = "/v2/shopping/flight-offers"
            self.calls[path] += 1
            self.requests.append((path, dict(request.query_params)))
            if not self._authorized(request):
                if self.refusal_delays:
                    await asyncio.sleep(self.refusal_delays.pop(0))
                return _error(401, "Invalid access token")
            scripted = self._scripted(path, request)
            if scripted is not None:
                return scripted
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow provider
            q = request.query_params
            origin, destination, date = (
                q["originLocationCode"],
                q["destinationLocationCode"],
                q["departureDate"],
            )
            party = _party(q)
            if isinstance(party, JSONResponse):
                return party
            back, currency = q.get("returnDate"), q.get("currencyCode", "EUR")
            if back is not None and back < date:  # ISO dates compare as text
                return _error(
                    400, "INVALID DATE", "returnDate must not be before departureDate", "returnDate"
                )
            if currency not in RATES:
                return _error(400, "INVALID FORMAT", "currency not supported", "currencyCode")
            # Not cheapest first: the contract promises no order. The first is a codeshare.
            data = [
                offer(i, origin, destination, date, fare, flight, party, back, currency)
                for i, fare, flight in (("1", "640.05", ("AA", "6143")), ("2", "512.30", BA178))
            ]
            if self.offers is not None:
                data = self.offers
            data = data[: int(q.get("max", 250))]
            return JSONResponse({"meta": {"count": len(data)}, "data": data})

        @app.get("/v1/reference-data/locations")
        async def locations(request: Request) -> JSONResponse:
            path = "/v1/reference-data/locations"
            self.calls[path] += 1
            self.requests.append((path, dict(request.query_params)))
            if not self._authorized(request):
                return _error(401, "Invalid access token")
            scripted = self._scripted(path, request)
            if scripted is not None:
                return scripted
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow provider
            keyword = request.query_params.get("keyword", "").upper()
            data = []
            if keyword.startswith("MUC") or keyword.startswith("MUNI"):
                data.append(MUNICH)
            if keyword.startswith("ZZ"):
                data.append(ZZYZX)
            if request.query_params.get("view", "FULL") == "LIGHT":
                data = [light(item) for item in data]
            return JSONResponse({"meta": {"count": len(data)}, "data": data})

        return app
