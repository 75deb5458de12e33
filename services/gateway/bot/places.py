"""Place resolution: a port, so the extractor never depends on where places come from.

In the gateway the port is :class:`SearchPlaces`, i.e. ``SearchService.ResolvePlace`` and
``FindNearestAirports`` over gRPC. :func:`decide` turns ranked candidates into one place, a
short list to ask the user about, or nothing.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from parley.search.v1 import search_pb2
from services.gateway.engine import SearchPort

# A candidate below this score is not a match (scores run 0-100).
MIN_SCORE = 60.0
# Candidates in different cities within this many points of the best are asked about.
TIE_POINTS = 2.0
MAX_CHOICES = 5
# A best candidate below this is a guess ("Marbella" → Tarbela, Pakistan; "Elda" → Jeddah: a
# town without an airport matches some other name): offered, never taken without asking.
# Typos of real names score above it ("lodnon" 83, "pairs" 80).
CONFIRM_SCORE = 80.0
# Only this much of a place phrase is looked up (or echoed back to the user).
PHRASE_LIMIT = 100


@dataclass(frozen=True)
class Candidate:
    code: str
    name: str
    city: str
    country: str
    kind: str  # "city" or "airport"
    score: float
    subdivision: str = ""  # state or region ("Missouri"), where the search service knows it

    def as_state(self) -> dict[str, Any]:
        state = {
            "code": self.code,
            "name": self.name,
            "city": self.city,
            "country": self.country,
            "kind": self.kind,
        }
        if self.subdivision:  # kept only where known: most places' state stays as it was
            state["subdivision"] = self.subdivision
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Candidate:
        """A place as ``as_state`` kept it (no score: it was chosen or offered already)."""
        return cls(
            code=str(state.get("code", "")),
            name=str(state.get("name", "")),
            city=str(state.get("city", "")),
            country=str(state.get("country", "")),
            kind=str(state.get("kind", "")),
            score=0.0,
            subdivision=str(state.get("subdivision", "")),
        )


def from_proto(place: search_pb2.Place, score: float) -> Candidate:
    kind = "city" if place.kind == search_pb2.PLACE_KIND_CITY else "airport"
    return Candidate(
        code=place.code,
        name=place.name or place.city_name or place.code,
        city=place.city_name or place.name,
        country=place.country_code,
        kind=kind,
        score=score,
        subdivision=place.subdivision,
    )


class PlaceResolver(Protocol):
    async def resolve(self, text: str) -> list[Candidate]: ...

    async def nearest(self, latitude: float, longitude: float) -> list[Candidate]: ...


class SearchPlaces:
    """The port implemented by the search service.

    Answers are kept in a small LRU for an hour: airport data is static, users name the same
    few hundred places, and each message would otherwise cost one or two gRPC calls here.
    """

    CACHE_SIZE = 10_000
    CACHE_TTL_SECONDS = 3600.0

    def __init__(self, search: SearchPort, timeout: float = 2.0) -> None:
        self._search = search
        self._timeout = timeout
        self._resolved: OrderedDict[str, tuple[float, list[Candidate]]] = OrderedDict()

    async def resolve(self, text: str) -> list[Candidate]:
        query = text[:PHRASE_LIMIT]
        key = query.strip().casefold()  # the service ignores case and surrounding space
        cached = self._resolved.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self._resolved.move_to_end(key)
            return list(cached[1])
        response = await self._search.ResolvePlace(
            search_pb2.ResolvePlaceRequest(query=query, max_results=8),
            timeout=self._timeout,
        )
        candidates = [from_proto(c.place, c.score) for c in response.candidates]
        self._resolved[key] = (time.monotonic() + self.CACHE_TTL_SECONDS, candidates)
        self._resolved.move_to_end(key)
        if len(self._resolved) > self.CACHE_SIZE:
            self._resolved.popitem(last=False)
        return list(candidates)

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
    unsure: bool = False  # the choices are guesses (see CONFIRM_SCORE)

    @property
    def found(self) -> bool:
        return self.place is not None

    @property
    def ambiguous(self) -> bool:
        return len(self.choices) > 1 or self.unsure


def decide(query: str, candidates: list[Candidate]) -> Decision:
    """One place, several to choose from, or none."""
    usable = [c for c in candidates if c.score >= MIN_SCORE]
    if not usable:
        return Decision()
    code = query.strip().upper()
    if len(code) == 3 and code.isalpha():
        for candidate in usable:
            # Not when it ranks below: "Ldn" is London first, Lamidanda's code after.
            if candidate.code == code and candidate.score >= usable[0].score:
                return Decision(place=candidate)
    top = usable[0]
    if top.score < CONFIRM_SCORE:
        guesses: list[Candidate] = []
        for candidate in usable:
            if not any(same_city(g, candidate) for g in guesses):
                guesses.append(candidate)
        return Decision(choices=tuple(guesses[:MAX_CHOICES]), unsure=True)
    # A city code that ranks first on its own stands for all its airports ("roma" → ROM).
    if top.kind == "city" and (len(usable) == 1 or usable[1].score < top.score):
        return Decision(place=top)
    close = [c for c in usable if c.score >= top.score - TIE_POINTS]
    # Candidates of one city are one choice, represented by its city code (all airports) when
    # there is one, else by its best airport; different cities that score alike are asked about
    # ("San Jose": California or Costa Rica).
    groups: list[Candidate] = []
    for candidate in close:
        index = next((i for i, g in enumerate(groups) if same_city(g, candidate)), None)
        if index is None:
            groups.append(candidate)
        elif candidate.kind == "city" and groups[index].kind != "city":
            groups[index] = candidate
    if len(groups) > 1:
        return Decision(choices=tuple(groups[:MAX_CHOICES]))
    return Decision(place=groups[0])


def _city_parts(candidate: Candidate) -> set[str]:
    return {part.strip().casefold() for part in re.split(r"[,/]", candidate.city) if part.strip()}


def same_city(a: Candidate, b: Candidate) -> bool:
    """Same country, a shared city name ("Arnavutköy, Istanbul" and "Istanbul") and, where both
    are known, the same state: Springfield, Missouri and Springfield, Illinois are two. A city
    that is its own state or region (Berlin, Bangkok) has its airport over the border (BER in
    Brandenburg, BKK in Samut Prakan): one city still."""
    shared = _city_parts(a) & _city_parts(b)
    if a.country != b.country or not shared:
        return False
    states = {a.subdivision.casefold(), b.subdivision.casefold()}
    if "" in states or len(states) == 1:  # a state unknown, or the same one
        return True
    return bool(states & shared)  # the city is one of the two states


# A whole phrase resolving below this, while each half resolves at or above it, is two places
# written side by side ("jfk lax", "Madrid Paris").
CONFIDENT = 95.0


async def split_phrase(resolver: PlaceResolver, phrase: str) -> list[str]:
    """``phrase`` as one place, or as two when it reads better that way ("madrid roma", and
    "Madrid-Roma": a hyphen between two places is a route, unless the whole is a name)."""
    words = re.sub(r"(?<=\w)-(?=\w)", " ", phrase).split()
    if not 2 <= len(words) <= 4:  # longer phrases are not two place names side by side
        return [phrase]
    whole = await resolver.resolve(phrase)
    if whole and whole[0].score >= CONFIDENT:
        return [phrase]
    for cut in range(1, len(words)):
        left, right = " ".join(words[:cut]), " ".join(words[cut:])
        first, second = await resolver.resolve(left), await resolver.resolve(right)
        if (
            first
            and second
            and min(first[0].score, second[0].score) >= CONFIDENT
            and first[0].code != second[0].code  # "Baden-Baden"
        ):
            return [left, right]
    return [phrase]
