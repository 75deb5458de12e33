"""The gateway's HTTP face."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI

from services.gateway.settings import GatewaySettings

VERSION = "0.1.0"


def create_app(settings: GatewaySettings) -> FastAPI:
    app = FastAPI(title="Parley gateway", version=VERSION)
    started = time.monotonic()

    @app.get("/health", summary="Liveness: the process answers; no dependency is called.")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "service": "gateway",
            "version": VERSION,
            "uptime_seconds": round(time.monotonic() - started, 3),
        }

    return app
