"""Place resolution: a port, so the extractor never depends on where places come from.

In the gateway the port is :class:`SearchPlaces`, i.e. ``SearchService.ResolvePlace`` and
``FindNearestAirports`` over gRPC. :func:`decide` turns ranked candidates into one place, a
short list to ask the user about, or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from parley.search.v1 import search_pb2
from services.gateway.engine import SearchPort

# A candidate below this score is not a match (scores run 0-100).
MIN_SCORE = 60.0
# Candidates in different cities within this many points of the best are asked about.
TIE_POINTS = 3.0
MAX_CHOICES = 5


@dataclass(frozen=True)
class Candidate:
    code: str
    name: str
    city: str
    country: str
    kind: str  # "city" or "airport"
    score: float

    def as_state(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "city": self.city,
            "country": self.country,
            "kind": self.kind,
        }


def from_proto(place: search_pb2.Place, score: float) -> Candidate:
    kind = "city" if place.kind == search_pb2.PLACE_KIND_CITY else "airport"
    return Candidate(
        code=place.code,
        name=place.name or place.city_name or place.code,
        city=place.city_name or place.name,
        country=place.country_code,
        kind=kind,
        score=score,
    )


class PlaceResolver(Protocol):
    async def resolve(self, text: str) -> list[Candidate]: ...

    async def nearest(self, latitude: float, longitude: float) -> list[Candidate]: ...


class SearchPlaces:
    """The port implemented by the search service."""

    def __init__(self, search: SearchPort, timeout: float = 2.0) -> None:
        self._search = search
        self._timeout = timeout

    async def resolve(self, text: str) -> list[Candidate]:
        response = await self._search.ResolvePlace(
            search_pb2.ResolvePlaceRequest(query=text[:100], max_results=8),
            timeout=self._timeout,
        )
        return [from_proto(c.place, c.score) for c in response.candidates]

    async def nearest(self, latitude: float, longitude: float) -> list[Candidate]:
        response = await self._search.FindNearestAirports(
            search_pb2.FindNearestAirportsRequest(
                latitude=latitude, longitude=longitude, max_results=3
            ),
            timeout=self._timeout,
        )
        return [from_proto(a.place, 100.0) for a in response.airports]


@dataclass(frozen=True)
class Decision:
    place: Candidate | None = None
    choices: tuple[Candidate, ...] = ()

    @property
    def found(self) -> bool:
        return self.place is not None

    @property
    def ambiguous(self) -> bool:
        return len(self.choices) > 1


def decide(query: str, candidates: list[Candidate]) -> Decision:
    """One place, several to choose from, or none."""
    usable = [c for c in candidates if c.score >= MIN_SCORE]
    if not usable:
        return Decision()
    code = query.strip().upper()
    if len(code) == 3 and code.isalpha():
        for candidate in usable:
            if candidate.code == code:
                return Decision(place=candidate)
    top = usable[0]
    close = [c for c in usable if c.score >= top.score - TIE_POINTS]
    # A city code (all its airports) stands for every airport of that city; other airports of
    # different codes are distinct choices ("Portland": PDX or PWM).
    cities = {(c.city.casefold(), c.country) for c in close if c.kind == "city"}
    entries: dict[str, Candidate] = {}
    for candidate in close:
        if candidate.kind != "city" and (candidate.city.casefold(), candidate.country) in cities:
            continue
        entries.setdefault(candidate.code, candidate)
    if len(entries) > 1:
        return Decision(choices=tuple(list(entries.values())[:MAX_CHOICES]))
    return Decision(place=next(iter(entries.values())))
