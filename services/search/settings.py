"""Search service settings (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class SearchSettings(CommonSettings):
    search_port: int = Field(default=50053, ge=0, le=65535)
    search_metrics_port: int = Field(default=9103, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"
    search_redis_url: str | None = None  # overrides REDIS_URL for this service

    @property
    def effective_redis_url(self) -> str:
        return self.search_redis_url or self.redis_url
