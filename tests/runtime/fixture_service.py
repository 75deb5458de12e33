"""A service built on the shared runtime with behaviours the runtime tests need: a slow call
(graceful shutdown) and a call that raises (error mapping). Run as ``python -m``."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import structlog

from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.errors import InvalidArgument, VersionConflict
from services.common.server import Service, run
from services.common.settings import CommonSettings, load_settings

NAME = "parley.session.v1.SessionService"


class FixtureServicer(session_pb2_grpc.SessionServiceServicer):
    async def GetConversation(self, request: Any, context: Any) -> Any:
        structlog.get_logger().info("slow call started")
        await asyncio.sleep(float(os.environ.get("FIXTURE_SLOW_SECONDS", "2")))
        return session_pb2.GetConversationResponse(created=True)

    async def TouchConversation(self, request: Any, context: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    async def UpdateConversation(self, request: Any, context: Any) -> Any:
        raise InvalidArgument("key.user_id", "must not be empty")

    async def EndConversation(self, request: Any, context: Any) -> Any:
        raise VersionConflict(7)


def main() -> int:
    settings = load_settings(CommonSettings)
    return run(
        lambda: Service(
            NAME, session_pb2_grpc.add_SessionServiceServicer_to_server, FixtureServicer()
        ),
        settings,
        port=int(os.environ["FIXTURE_PORT"]),
        metrics_port=int(os.environ.get("FIXTURE_METRICS_PORT", "0")),
        log_name="fixture",
    )


if __name__ == "__main__":
    sys.exit(main())
