"""parley.business.v1.BusinessService: businesses, channel identities and encrypted tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import aiosqlite

from parley.business.v1 import business_pb2_grpc
from services.business.settings import BusinessSettings
from services.common.server import Service, run
from services.common.settings import load_settings

SERVICE_NAME = "parley.business.v1.BusinessService"


class BusinessServicer(business_pb2_grpc.BusinessServiceServicer):
    """Every RPC answers UNIMPLEMENTED until the business store lands (issue 4)."""


def build(settings: BusinessSettings) -> Service:
    async def readiness() -> None:
        path = Path(settings.business_db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(path) as db:
            await db.execute("SELECT 1")

    return Service(
        name=SERVICE_NAME,
        register=business_pb2_grpc.add_BusinessServiceServicer_to_server,
        servicer=BusinessServicer(),  # type: ignore[abstract]
        readiness=readiness,
    )


def main() -> int:
    settings = load_settings(BusinessSettings)
    return run(
        lambda: build(settings),
        settings,
        port=settings.business_port,
        metrics_port=settings.business_metrics_port,
        log_name="business",
    )


if __name__ == "__main__":
    sys.exit(main())
