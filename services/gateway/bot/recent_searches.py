"""A near cache of SearchFlights answers, kept in the worker for ``BOT_SEARCH_CACHE_SECONDS``.

The search service keeps fares for an hour in Redis; in the gateway, a popular route is asked by
many users within the same minute, and each ask would otherwise cost a gRPC call here and a
cache read there (about a ninth of the CPU of a message, measured by the system benchmark).
Only fresh answers with offers are kept: a stale, empty or failed search is always asked again.
A kept answer reports its age grown by the time it spent here.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from parley.search.v1 import search_pb2
from services.gateway import metrics


class RecentSearches:
    def __init__(self, ttl_seconds: float, size: int = 2048) -> None:
        self._ttl = ttl_seconds
        self._size = size
        self._kept: OrderedDict[bytes, tuple[float, search_pb2.SearchFlightsResponse]] = (
            OrderedDict()
        )

    @staticmethod
    def key(request: search_pb2.SearchFlightsRequest) -> bytes:
        return request.SerializeToString(deterministic=True)

    def get(self, key: bytes) -> search_pb2.SearchFlightsResponse | None:
        if self._ttl <= 0:
            return None
        kept = self._kept.get(key)
        if kept is None:
            metrics.RECENT_SEARCHES.labels("miss").inc()
            return None
        stored_at, response = kept
        waited = time.monotonic() - stored_at
        if waited > self._ttl:
            del self._kept[key]
            metrics.RECENT_SEARCHES.labels("miss").inc()
            return None
        metrics.RECENT_SEARCHES.labels("hit").inc()
        self._kept.move_to_end(key)
        answer = search_pb2.SearchFlightsResponse()
        answer.CopyFrom(response)
        answer.age.FromNanoseconds(answer.age.ToNanoseconds() + int(waited * 1e9))
        return answer

    def put(self, key: bytes, response: search_pb2.SearchFlightsResponse) -> None:
        if self._ttl <= 0 or response.stale or not response.offers:
            return
        self._kept[key] = (time.monotonic(), response)
        self._kept.move_to_end(key)
        if len(self._kept) > self._size:
            self._kept.popitem(last=False)
