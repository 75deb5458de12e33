"""The engine's near cache of SearchFlights answers."""

from __future__ import annotations

import time

import pytest

from parley.search.v1 import search_pb2
from services.gateway.bot.recent_searches import RecentSearches


def key_for(destination: str = "LHR") -> bytes:
    return RecentSearches.key(
        search_pb2.SearchFlightsRequest(
            origin="JFK", destination=destination, departure_date="2026-12-01", adults=1
        )
    )


def answer(
    *, stale: bool = False, offers: int = 2, age_s: int = 5
) -> search_pb2.SearchFlightsResponse:
    response = search_pb2.SearchFlightsResponse(stale=stale)
    for n in range(offers):
        response.offers.add(id=f"o{n}")
    response.age.seconds = age_s
    return response


def test_a_fresh_answer_is_reused_for_the_same_request_only_with_its_age_grown() -> None:
    recent = RecentSearches(ttl_seconds=30)
    recent.put(key_for(), answer(age_s=5))
    time.sleep(0.05)
    reused = recent.get(key_for())
    assert reused is not None and [o.id for o in reused.offers] == ["o0", "o1"]
    assert reused.age.ToNanoseconds() >= 5_050_000_000
    assert recent.get(key_for("CDG")) is None
    reused.offers.add(id="mutated")  # a copy: the kept answer is not changed by its user
    again = recent.get(key_for())
    assert again is not None and len(again.offers) == 2


@pytest.mark.parametrize("kept", [answer(stale=True), answer(offers=0)])
def test_stale_or_empty_answers_are_asked_again(kept: search_pb2.SearchFlightsResponse) -> None:
    recent = RecentSearches(ttl_seconds=30)
    recent.put(key_for(), kept)
    assert recent.get(key_for()) is None


def test_answers_expire_and_zero_turns_the_cache_off() -> None:
    recent = RecentSearches(ttl_seconds=0.05)
    recent.put(key_for(), answer())
    time.sleep(0.08)
    assert recent.get(key_for()) is None
    off = RecentSearches(ttl_seconds=0)
    off.put(key_for(), answer())
    assert off.get(key_for()) is None


def test_the_oldest_answer_goes_when_full() -> None:
    recent = RecentSearches(ttl_seconds=30, size=2)
    for destination in ("LHR", "CDG", "MAD"):
        recent.put(key_for(destination), answer())
    assert recent.get(key_for("LHR")) is None
    assert recent.get(key_for("MAD")) is not None
