"""Amadeus flight-offers and locations over its REST API (enterprise tier; same contract as the
Self-Service tier that closed in July 2026).

- OAuth2 client credentials (``POST /v1/security/oauth2/token``); the token is cached and
  refreshed a minute before it expires, beside the searches, which keep it until it expires
  (if that refresh fails too); a 401 refreshes it once and retries. One token request at a
  time, whose token or failure every search waiting for one shares.
- 429 and 5xx (and transport errors) are retried with exponential backoff and jitter (tenacity),
  honouring ``Retry-After``, and only while the call's deadline leaves room; every request,
  a retry too, takes a slot of the client-side rate limit (the account's limit on requests).
- 400 → INVALID_ARGUMENT naming our field; anything else that remains is a provider failure
  (counts toward the ``amadeus_api`` breaker, lets stale results be served): a 404 included,
  which Amadeus answers only for an endpoint or URL that does not exist, never for a query.
- The client secret is a ``SecretStr``: never logged, never in an error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from google.protobuf import duration_pb2
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.common.outage import OutageLog
from services.common.redact import scrub
from services.common.settings import http_url, load_settings
from services.search.places import Places, zone
from services.search.providers.base import (
    OFFERS_SKIPPED,
    Provider,
    ProviderFactory,
    ProviderUnavailable,
    Query,
)
from services.search.ratelimit import RateLimitTimeout
from services.search.settings import SearchSettings

log = structlog.get_logger("parley.search.amadeus")

TOKEN_PATH = "/v1/security/oauth2/token"
OFFERS_PATH = "/v2/shopping/flight-offers"
LOCATIONS_PATH = "/v1/reference-data/locations"
REFRESH_MARGIN_SECONDS = 60.0
# Far above any answer of the contract (``max`` bounds it at 250 offers, a couple of megabytes;
# we ask for 50 at most): a larger one is read no further, not held and parsed on the loop.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
TRAVEL_CLASS: dict[int, str] = {
    search_pb2.CABIN_ECONOMY: "ECONOMY",
    search_pb2.CABIN_PREMIUM_ECONOMY: "PREMIUM_ECONOMY",
    search_pb2.CABIN_BUSINESS: "BUSINESS",
    search_pb2.CABIN_FIRST: "FIRST",
}
# Amadeus query parameter → our request field, for INVALID_ARGUMENT details.
PARAMETER_FIELDS = {
    "originLocationCode": "origin",
    "destinationLocationCode": "destination",
    "departureDate": "departure_date",
    "returnDate": "return_date",
    "adults": "adults",
    "children": "children",
    "infants": "infants",
    "travelClass": "cabin",
    "nonStop": "non_stop",
    "max": "max_results",
    "currencyCode": "currency_code",
    "keyword": "query",
}
_CURRENCY = re.compile(r"[A-Z]{3}")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


class AmadeusSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    amadeus_client_id: str | None = None
    amadeus_client_secret: SecretStr | None = None
    amadeus_base_url: str = "https://api.amadeus.com"
    amadeus_rate_limit_per_second: float = Field(default=10.0, ge=0, le=10_000)
    amadeus_max_attempts: int = Field(default=4, ge=1, le=10)
    # First backoff in seconds (doubles per attempt, with jitter, capped at 2 s).
    amadeus_backoff_seconds: float = Field(default=0.2, gt=0, le=10)
    # One connect's limit, within the call's deadline: a host that does not answer fails the
    # attempt in this time, and the next attempt (another address, maybe) still has time.
    amadeus_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)

    @field_validator("amadeus_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # "api.amadeus.com" (the `host` of Amadeus's API specifications) would start a service
        # whose every search fails, each retried as an outage.
        return http_url(value, "https://api.amadeus.com")


class _Retryable(Exception):
    """429, 5xx or a transport error: worth another attempt."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_duration(text: str) -> duration_pb2.Duration:
    match = _ISO_DURATION.match(text or "")
    if not match:
        return duration_pb2.Duration()
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return duration_pb2.Duration(seconds=((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _duration(text: Any, start: str, end: str) -> duration_pb2.Duration:
    """The contract's ISO 8601 duration; optional in it, so without one (or one that is none)
    the time from ``start`` to ``end``, local times with their offsets (none when one lacks
    its offset: an airport the index does not know)."""
    match = _ISO_DURATION.match(text) if isinstance(text, str) else None
    if match and any(match.groups()):
        return parse_duration(text)
    leaves, lands = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    if leaves.tzinfo is None or lands.tzinfo is None or lands < leaves:
        return duration_pb2.Duration()
    return duration_pb2.Duration(seconds=int((lands - leaves).total_seconds()))


def _retry_after(headers: httpx.Headers) -> float | None:
    """The seconds ``Retry-After`` asks for: a number of seconds or an HTTP date (RFC 9110)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC without a stated offset
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


class AmadeusProvider(Provider):
    name = "amadeus"
    breaker_name = "amadeus_api"
    demo_data = False

    def __init__(
        self,
        settings: AmadeusSettings,
        places: Places,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        assert settings.amadeus_client_id and settings.amadeus_client_secret
        self._client_id = settings.amadeus_client_id
        self._secret = settings.amadeus_client_secret
        self._settings = settings
        self.places = places
        self.rate_limit_per_second = settings.amadeus_rate_limit_per_second
        self._http = httpx.AsyncClient(
            base_url=settings.amadeus_base_url.rstrip("/"),
            transport=transport,
            timeout=httpx.Timeout(10.0, connect=settings.amadeus_connect_timeout_seconds),
            headers={"Accept": "application/vnd.amadeus+json, application/json"},
        )
        self._slot: Callable[[float], Awaitable[None]] = _unlimited
        self._token: str | None = None
        self._token_expires = 0.0  # monotonic
        self._refreshing: asyncio.Task[str] | None = None
        self.token_requests = 0  # for tests and logs
        # Unreadable offers: a warning when they start (a contract that moved makes every answer
        # have some), debug lines while they go on, a line when an answer is clean again.
        self._malformed = OutageLog(log, "amadeus offers readable again")

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._http.aclose()

    def pace_requests(self, slot: Callable[[float], Awaitable[None]]) -> bool:
        # AMADEUS_RATE_LIMIT_PER_SECOND is the account's limit on requests: a retry is one.
        self._slot = slot
        return True

    # -- token -------------------------------------------------------------------------------

    async def _access_token(self, deadline: float, *, refused: str | None = None) -> str:
        """The token to send: the cached one unless it has expired or is ``refused`` (answered
        401). One refresh at a time, shared: searches that need a token wait for the refresh
        in flight and share its token or its failure (a failing token endpoint gets one request,
        not one a search), and many searches refused the same token need one new token between
        them, whenever their 401s come back: hence the refused token, not "refresh now"."""
        now = time.monotonic()
        if self._token is not None and self._token != refused and now < self._token_expires:
            if now >= self._token_expires - REFRESH_MARGIN_SECONDS:
                # Refreshed early so as never to send an expired token, beside the searches:
                # this one still works, and a token endpoint slow or failing in its last
                # minute holds no search up and fails none.
                self._refresh(deadline)
            return self._token
        refresh = self._refresh(deadline)
        async with asyncio.timeout(max(0.0, deadline - now)):
            # Shielded: a search whose deadline comes first leaves the refresh to the others.
            return await asyncio.shield(refresh)

    def _refresh(self, deadline: float) -> asyncio.Task[str]:
        """The token request in flight, or a new one (on the deadline of the search that
        needed it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._new_token(deadline))
            self._refreshing.add_done_callback(self._refreshed)
        return self._refreshing

    def _refreshed(self, task: asyncio.Task[str]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: an early refresh may have no one waiting
        if error is not None and self._token and time.monotonic() < self._token_expires:
            log.warning(
                "amadeus token refresh failed; the current one is still valid",
                reason=str(error),
            )

    async def _new_token(self, deadline: float) -> str:
        self.token_requests += 1
        try:
            response = await self._http.post(
                TOKEN_PATH,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._secret.get_secret_value(),
                },
                timeout=self._timeout(deadline),
            )
        except httpx.HTTPError as error:
            raise _Retryable(f"token request failed: {type(error).__name__}") from None
        if response.status_code != 200:
            said = _described(
                _token_errors(_json(response.content)), self._secret.get_secret_value()
            )
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(
                    f"token endpoint answered {response.status_code}{said}",
                    _retry_after(response.headers),
                )
            # Wrong credentials are our configuration's fault, not the caller's.
            raise ProviderUnavailable(
                f"Amadeus refused the client credentials ({response.status_code}){said}"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
            expires_in = float(body.get("expires_in", 1799))
        except (ValueError, KeyError, TypeError):
            raise ProviderUnavailable("Amadeus token response was malformed") from None
        self._token = token
        self._token_expires = time.monotonic() + expires_in
        log.info("amadeus token refreshed", expires_in=expires_in)
        return token

    def _timeout(self, deadline: float) -> httpx.Timeout:
        """The time left to the deadline, and no more than the connect timeout to connect: a
        bare number would be every phase's, so one connect to a dead host took the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before the Amadeus call")
        connect = min(remaining, self._settings.amadeus_connect_timeout_seconds)
        return httpx.Timeout(remaining, connect=connect)

    # -- requests ----------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, str], deadline: float) -> Any:
        """GET with token, one refresh on 401, and retries on 429/5xx within the deadline."""
        settings = self._settings
        wait = wait_exponential_jitter(
            multiplier=settings.amadeus_backoff_seconds,
            max=2.0,
            jitter=settings.amadeus_backoff_seconds,
        )

        def backoff(state: RetryCallState) -> float:
            seconds = wait(state)
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, _Retryable) and error.retry_after is not None:
                seconds = max(seconds, error.retry_after)
            if time.monotonic() + seconds >= deadline:
                raise ProviderUnavailable(f"Amadeus kept failing until the deadline: {error}")
            return seconds

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(settings.amadeus_max_attempts),
            wait=backoff,
            reraise=True,
        )
        failed: _Retryable | None = None
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._get_once(path, params, deadline)
                    except _Retryable as error:
                        failed = error
                        raise
                    except RateLimitTimeout:
                        if failed is None:  # nothing sent yet: no verdict on the provider
                            raise
                        raise ProviderUnavailable(
                            f"Amadeus kept failing until the deadline: {failed}"
                        ) from None
        except _Retryable as error:
            raise ProviderUnavailable(f"Amadeus failed after retries: {error}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_once(self, path: str, params: dict[str, str], deadline: float) -> Any:
        refused: str | None = None
        while True:
            token = await self._access_token(deadline, refused=refused)
            await self._slot(deadline)
            try:
                async with self._http.stream(
                    "GET",
                    path,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._timeout(deadline),
                ) as response:
                    status, headers = response.status_code, response.headers
                    if status == 401 and refused is None:
                        refused = token  # expired or revoked early: one fresh token, then give up
                        continue
                    content = await _bounded(response, path)
            except httpx.HTTPError as error:
                raise _Retryable(f"{path}: {type(error).__name__}") from None
            break
        if status == 200:
            try:
                return json.loads(content)
            except ValueError:
                raise ProviderUnavailable(f"{path}: response was not JSON") from None
        # Every entry of errors[]: Amadeus lists one per problem (all of one status), and a
        # log line or a caller told only the first misses the others.
        problems = _errors(_json(content))
        said = _described(problems, token)
        if status == 429 or status >= 500:
            raise _Retryable(f"{path} answered {status}{said}", _retry_after(headers))
        if status == 400:
            # Passed on to the caller (the bot quotes it to the user): never the token it may quote.
            (field, detail), *more = _violations(problems, token)
            raise InvalidArgument(field, detail, *more)
        # 401 after a refresh, 403, and 404 (Amadeus's "endpoint or URL does not exist": a wrong
        # AMADEUS_BASE_URL or route, never the query) and anything else: the provider will not
        # serve us, which is not the caller's fault.
        raise ProviderUnavailable(f"{path} answered {status}{said}")

    # -- flight offers -----------------------------------------------------------------------

    async def search(self, query: Query, deadline: float) -> list[search_pb2.FlightOffer]:
        params = {
            "originLocationCode": query.origin,
            "destinationLocationCode": query.destination,
            "departureDate": query.departure.isoformat(),
            "adults": str(query.adults),
            "travelClass": TRAVEL_CLASS.get(query.cabin, "ECONOMY"),
            "nonStop": "true" if query.non_stop else "false",
            "max": str(query.max_results),
        }
        # Optional in the contract: sent when there are any, each priced at its own fare in
        # the offer's total (travelerPricings lists them: CHILD, HELD_INFANT).
        if query.children:
            params["children"] = str(query.children)
        if query.infants:
            params["infants"] = str(query.infants)
        if query.return_date:
            params["returnDate"] = query.return_date.isoformat()
        if query.currency:
            params["currencyCode"] = query.currency
        body = await self._get(OFFERS_PATH, params, deadline)
        data = body.get("data", []) if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ProviderUnavailable("unexpected flight-offers response: no data[]")
        offers, problems = [], []
        for item in data:
            try:
                offers.append(self._offer(item))
            except _MALFORMED as error:
                # One offer the adapter cannot read is no reason to withhold the others.
                problems.append(_malformed(item, error))
        if problems:
            OFFERS_SKIPPED.labels(self.name).inc(len(problems))
            self._malformed.failed(
                "amadeus offers skipped as malformed",
                "; ".join(problems[:3]),
                skipped=len(problems),
                offers=len(data),
            )
            if not offers:  # not "no flights", which would be cached as such
                raise ProviderUnavailable(
                    f"every flight offer was malformed ({len(problems)}): {problems[0]}"
                )
        else:
            self._malformed.worked()
        # Cheapest first, as the answer promises: the contract promises no order. Stable, so
        # offers of one price keep the provider's order.
        offers.sort(key=_amount)
        return offers[: query.max_results]

    def _local(self, at: str, airport: str) -> str:
        """Amadeus gives local times without offset; add the airport's."""
        place = self.places.get(airport)
        moment = dt.datetime.fromisoformat(at)
        if moment.tzinfo is None and place is not None:
            moment = moment.replace(tzinfo=zone(place.tz))
        return moment.isoformat()

    def _offer(self, item: dict[str, Any]) -> search_pb2.FlightOffer:
        itineraries = []
        if not item["itineraries"]:  # the contract has one at least: a price with no flight
            raise ValueError("no itineraries")
        for itinerary in item["itineraries"]:
            if not itinerary["segments"]:
                raise ValueError("an itinerary without segments")
            segments = []
            for seg in itinerary["segments"]:
                dep, arr = seg["departure"], seg["arrival"]
                leaves = self._local(dep["at"], dep["iataCode"])
                lands = self._local(arr["at"], arr["iataCode"])
                segments.append(
                    search_pb2.Segment(
                        # The carrier whose number this is (the marketing one): a codeshare's
                        # operating carrier flies it under a number of its own.
                        carrier_code=str(seg["carrierCode"]),
                        flight_number=str(seg["number"]),
                        departure_airport=str(dep["iataCode"]),
                        departure_time=leaves,
                        arrival_airport=str(arr["iataCode"]),
                        arrival_time=lands,
                        duration=_duration(seg.get("duration"), leaves, lands),
                        aircraft_code=str((seg.get("aircraft") or {}).get("code", "")),
                    )
                )
            # Connections, and the landings within a segment (``numberOfStops``: technical
            # stops, e.g. to refuel): one flight number, but not a non-stop.
            landings = sum(int(seg.get("numberOfStops") or 0) for seg in itinerary["segments"])
            itineraries.append(
                search_pb2.Itinerary(
                    segments=segments,
                    stops=len(segments) - 1 + max(0, landings),
                    duration=_duration(
                        itinerary.get("duration"),
                        segments[0].departure_time,
                        segments[-1].arrival_time,
                    ),
                )
            )
        price = item["price"]
        # The whole party's (every travelerPricing's), fees included: what the user would pay.
        amount = str(price.get("grandTotal") or price["total"])
        if not _is_price(amount):
            raise ValueError(f"price {amount[:20]!r} is no amount")
        currency = str(price["currency"])
        if not _CURRENCY.fullmatch(currency):  # a price users could not read right
            raise ValueError(f"currency {currency[:10]!r} is no ISO 4217 code")
        validating = item.get("validatingAirlineCodes") or [""]
        seats = item.get("numberOfBookableSeats")
        return search_pb2.FlightOffer(
            id=str(item["id"]),
            # The provider's decimal string, kept as is: never through a float.
            total_price=search_pb2.Money(currency_code=currency, amount=amount),
            itineraries=itineraries,
            seats_left=int(seats) if seats is not None else None,
            validating_carrier=str(validating[0]),
            demo_data=False,
        )

    # -- locations ---------------------------------------------------------------------------

    async def locations(self, keyword: str, limit: int, deadline: float) -> list[search_pb2.Place]:
        params = {
            "subType": "CITY,AIRPORT",
            "keyword": keyword[:100],
            "page[limit]": str(limit),
            # FULL (the default), not LIGHT: the light view has the country's name but not its
            # code, and the bot shows the country of a place it offers.
            "view": "FULL",
        }
        body = await self._get(LOCATIONS_PATH, params, deadline)
        places = []
        for item in body.get("data", []):
            code = str(item.get("iataCode", ""))
            if not code:
                continue
            address = item.get("address") or {}
            known = self.places.get(code)
            places.append(
                search_pb2.Place(
                    code=code,
                    kind=search_pb2.PLACE_KIND_CITY
                    if item.get("subType") == "CITY"
                    else search_pb2.PLACE_KIND_AIRPORT,
                    name=str(item.get("name", "")).title(),
                    city_name=str(address.get("cityName", "")).title(),
                    country_code=str(address.get("countryCode", "")),
                    time_zone=known.tz if known else "",
                    subdivision=known.subdivision if known else "",
                )
            )
        return places[:limit]


_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def _malformed(item: Any, error: Exception) -> str:
    """What was wrong with an offer, for the log: its id and the field or value at fault."""
    offer_id = str(item.get("id", "?"))[:20] if isinstance(item, dict) else "?"
    what = f"missing {error}" if isinstance(error, KeyError) else str(error)[:100]
    return f"offer {offer_id}: {type(error).__name__}: {what}"


def _is_price(amount: str) -> bool:
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return False
    return value.is_finite() and value >= 0


async def _unlimited(deadline: float) -> None:
    """No rate limit: the adapter's own until the engine gives it one."""


def _amount(offer: search_pb2.FlightOffer) -> Decimal:
    try:
        value = Decimal(offer.total_price.amount)
    except InvalidOperation:
        return Decimal("Infinity")
    return value if value.is_finite() else Decimal("Infinity")


def _json(content: bytes) -> Any:
    """A response's JSON body, None when it has none."""
    try:
        return json.loads(content)
    except ValueError:
        return None


async def _bounded(response: httpx.Response, path: str) -> bytes:
    """The body, unless it is larger than any answer of the contract: read no further then."""
    size = response.headers.get("content-length", "")
    if size.isdigit() and int(size) > MAX_ANSWER_BYTES:
        raise ProviderUnavailable(f"{path}: answer larger than {MAX_ANSWER_BYTES} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:  # compressed, or without a length
            raise ProviderUnavailable(f"{path}: answer larger than {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


def _errors(body: Any) -> list[dict[str, Any]]:
    """The entries of an error body's ``errors[]`` (status, code, title, detail, source), each
    one problem; none when the body is not that format."""
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _token_errors(body: Any) -> list[dict[str, Any]]:
    """The token endpoint's errors: its own OAuth2 format (``error``, ``error_description``,
    besides ``code`` and ``title``) as one problem, or ``errors[]`` as the other endpoints'."""
    problems = _errors(body)
    if problems or not isinstance(body, dict) or not body.get("error"):
        return problems
    title = " ".join(str(body.get(k) or "") for k in ("error", "title")).strip()
    return [{"code": body.get("code"), "title": title, "detail": body.get("error_description")}]


def _described(problems: list[dict[str, Any]], *secrets: str) -> str:
    """Every problem's code, title and detail for a log line: `` (38189 Internal error: …)``."""
    parts = []
    for problem in problems[:10]:
        text = " ".join(str(problem.get(k) or "") for k in ("code", "title")).strip()
        if problem.get("detail"):
            text += f": {problem['detail']}"
        if text:
            parts.append(text)
    return scrub(f" ({'; '.join(parts)[:500]})", *secrets) if parts else ""


def _violations(problems: list[dict[str, Any]], *secrets: str) -> list[tuple[str, str]]:
    """One violation per field a 400's problems name (ours, not Amadeus's parameter), their
    details joined; "request" for problems that name no parameter we send."""
    details: dict[str, list[str]] = {}
    for problem in problems:
        source = problem.get("source")
        parameter = str(source.get("parameter", "")) if isinstance(source, dict) else ""
        detail = str(problem.get("detail") or problem.get("title") or "rejected by provider")
        details.setdefault(PARAMETER_FIELDS.get(parameter, "request"), []).append(detail)
    if not details:
        details["request"] = ["rejected by provider"]
    return [(f, scrub("; ".join(d), *secrets)[:200]) for f, d in details.items()]


def _create(settings: SearchSettings, places: Places) -> Provider | None:
    # A bad AMADEUS_* value stops start-up with one line naming it, never its value.
    amadeus = load_settings(AmadeusSettings)
    if not (amadeus.amadeus_client_id and amadeus.amadeus_client_secret):
        return None
    return AmadeusProvider(amadeus, places)


FACTORY = ProviderFactory(name="amadeus", priority=10, create=_create)
