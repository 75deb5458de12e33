"""Gateway settings (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    gateway_host: str = "0.0.0.0"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    session_service_addr: str = "localhost:50051"
    business_service_addr: str = "localhost:50052"
    search_service_addr: str = "localhost:50053"
    redis_url: str = "redis://127.0.0.1:6379/0"
    gateway_redis_url: str | None = None  # overrides REDIS_URL for the queue and dedupe

    @property
    def effective_redis_url(self) -> str:
        return self.gateway_redis_url or self.redis_url
