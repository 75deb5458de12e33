"""The gateway's place port remembers answers: one ResolvePlace call per distinct place."""

from __future__ import annotations

from typing import Any, cast

from parley.search.v1 import search_pb2_grpc
from services.gateway.bot.places import SearchPlaces
from services.gateway.engine import SearchPort


class CountingSearch:
    """The real stub, counting the ResolvePlace calls that reach the search service."""

    def __init__(self, stub: search_pb2_grpc.SearchServiceStub) -> None:
        self.stub = stub
        self.resolve_calls = 0

    def ResolvePlace(self, request: Any, **kwargs: Any) -> Any:
        self.resolve_calls += 1
        return self.stub.ResolvePlace(request, **kwargs)


async def test_repeated_places_are_resolved_once(
    search_stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    search = CountingSearch(search_stub)
    places = SearchPlaces(cast(SearchPort, search))
    first = await places.resolve("London")
    again = [await places.resolve(text) for text in ("london", "  LONDON ", "London")]
    assert first and first[0].code == "LON"
    assert all(answer == first for answer in again)
    assert search.resolve_calls == 1
    await places.resolve("Paris")
    assert search.resolve_calls == 2
