"""parley.search.v1.SearchService: flight offers with a cache and a circuit breaker."""

from __future__ import annotations

import sys

from parley.search.v1 import search_pb2_grpc
from services.common.redis_client import make_redis, ping
from services.common.server import Service, run
from services.common.settings import load_settings
from services.search.settings import SearchSettings

SERVICE_NAME = "parley.search.v1.SearchService"


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Every RPC answers UNIMPLEMENTED until search lands (issue 5)."""


def build(settings: SearchSettings) -> Service:
    redis = make_redis(settings.effective_redis_url)

    async def readiness() -> None:
        await ping(redis)

    async def close() -> None:
        await redis.aclose()

    return Service(
        name=SERVICE_NAME,
        register=search_pb2_grpc.add_SearchServiceServicer_to_server,
        servicer=SearchServicer(),  # type: ignore[abstract]
        readiness=readiness,
        on_stop=close,
    )


def main() -> int:
    settings = load_settings(SearchSettings)
    return run(
        lambda: build(settings),
        settings,
        port=settings.search_port,
        metrics_port=settings.search_metrics_port,
        log_name="search",
    )


if __name__ == "__main__":
    sys.exit(main())
