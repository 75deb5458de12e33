"""What a provider is: one module under ``services/search/providers/`` exposing ``FACTORY``.

The service discovers provider modules at start-up (see ``providers/__init__.py``); a new
provider is a new module with a :class:`ProviderFactory`, and nothing else changes.

Errors: a provider raises :class:`ProviderUnavailable` when it failed (outage, 5xx, timeouts,
rate limited after retries, bad credentials): that counts toward its circuit breaker and lets
the service answer from a stale cache entry. It raises a ``ServiceError`` (``InvalidArgument``,
``NotFound``, ...) when the provider answered that the query itself is wrong: that reaches the
client as is and does not count as a failure.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter

from parley.search.v1 import search_pb2

if TYPE_CHECKING:
    from services.search.places import Places
    from services.search.settings import SearchSettings


# An answer's offers that a provider could not read (a field missing or of the wrong kind): left
# out, the others kept. A rise means the provider's contract moved under the adapter.
OFFERS_SKIPPED = Counter(
    "search_provider_offers_skipped_total",
    "Offers of a provider's answer left out because they could not be read.",
    ["provider"],
)


class ProviderUnavailable(Exception):
    """The provider failed; the message is safe to log (never a secret)."""


@dataclass(frozen=True, slots=True)
class Query:
    """A validated, normalized flight search."""

    origin: str
    destination: str
    departure: dt.date
    return_date: dt.date | None
    adults: int
    cabin: int  # search_pb2.Cabin value, never UNSPECIFIED
    non_stop: bool
    max_results: int
    currency: str  # ISO 4217, or "" for the provider's default
    children: int = 0  # 2-11, seated
    infants: int = 0  # under 2, on an adult's lap

    @property
    def travellers(self) -> str:
        """The party as the cache key writes it: "2" for adults alone (the key every query had
        before children and infants, so those entries stay valid), "2a1c1i" otherwise."""
        if not (self.children or self.infants):
            return str(self.adults)
        return f"{self.adults}a{self.children}c{self.infants}i"

    def key(self) -> str:
        """Stable text of the query, for cache keys, single-flight and seeds (readable in
        redis-cli)."""
        ret = self.return_date.isoformat() if self.return_date else "-"
        cabin = search_pb2.Cabin.Name(self.cabin).removeprefix("CABIN_")  # type: ignore[arg-type]
        return (
            f"{self.origin}:{self.destination}:{self.departure.isoformat()}:{ret}:"
            f"{self.travellers}:{cabin}:{int(self.non_stop)}:{self.max_results}:"
            f"{self.currency or '-'}"
        )


class Provider(ABC):
    """A source of flight offers (and, optionally, of places)."""

    name: str  # reported in every answer, e.g. "offline"
    breaker_name: str  # e.g. "amadeus_api"
    demo_data: bool = False  # True: every offer must be labelled as demonstration data
    rate_limit_per_second: float = 0.0  # client-side limit; 0: none

    @abstractmethod
    async def search(self, query: Query, deadline: float) -> list[search_pb2.FlightOffer]:
        """Offers for ``query``, cheapest first; ``deadline`` is a ``time.monotonic()`` value."""

    async def locations(self, keyword: str, limit: int, deadline: float) -> list[search_pb2.Place]:
        """Places matching a keyword, for text the local index cannot resolve; none by default."""
        return []

    def pace_requests(self, slot: Callable[[float], Awaitable[None]]) -> bool:
        """Whether the provider takes ``slot(deadline)`` (its client-side rate limit: waits for a
        free slot, raises ``RateLimitTimeout`` when none comes before ``deadline``) before each
        request it sends, retries included. By default it does not, and the engine takes one
        slot per call: right for a provider that sends at most one request a call."""
        return False

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass(frozen=True)
class ProviderFactory:
    """How the service finds and builds a provider."""

    name: str
    # Lower is preferred when SEARCH_PROVIDER=auto.
    priority: int
    # A provider, or None when it is not configured (e.g. credentials unset).
    create: Callable[[SearchSettings, Places], Provider | None]
