"""Run the gateway: ``python -m services.gateway.main``."""

from __future__ import annotations

import sys

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> int:
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,  # keep our structlog handler
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
