"""parley.session.v1.SessionService: conversations on Redis."""

from __future__ import annotations

import sys

from parley.session.v1 import session_pb2_grpc
from services.common.redis_client import make_redis, ping
from services.common.server import Service, run
from services.common.settings import load_settings
from services.session.settings import SessionSettings

SERVICE_NAME = "parley.session.v1.SessionService"


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    """Every RPC answers UNIMPLEMENTED until the session store lands (issue 3)."""


def build(settings: SessionSettings) -> Service:
    redis = make_redis(settings.effective_redis_url)

    async def readiness() -> None:
        await ping(redis)

    async def close() -> None:
        await redis.aclose()

    return Service(
        name=SERVICE_NAME,
        register=session_pb2_grpc.add_SessionServiceServicer_to_server,
        servicer=SessionServicer(),  # type: ignore[abstract]
        readiness=readiness,
        on_stop=close,
    )


def main() -> int:
    settings = load_settings(SessionSettings)
    return run(
        lambda: build(settings),
        settings,
        port=settings.session_port,
        metrics_port=settings.session_metrics_port,
        log_name="session",
    )


if __name__ == "__main__":
    sys.exit(main())
