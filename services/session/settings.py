"""Session service settings (environment variables; see the README's table)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.settings import CommonSettings

MAX_TTL_SECONDS = 30 * 24 * 3600  # REDIS_TTL_SECONDS's bound, and the migration's --ttl


class SessionSettings(CommonSettings):
    session_port: int = Field(default=50051, ge=0, le=65535)
    session_metrics_port: int = Field(default=9101, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"
    session_redis_url: str | None = None  # overrides REDIS_URL for this service
    # Conversation TTL, restarted by every write and touch (the guides' name and default).
    redis_ttl_seconds: int = Field(default=900, ge=1, le=MAX_TTL_SECONDS)
    # At most 1,000: the largest reply then fits services.common.clients.MAX_REPLY_BYTES.
    session_history_limit: int = Field(default=10, ge=1, le=1000)
    # memory: serve from a bounded in-process store while Redis is down; off: UNAVAILABLE.
    session_fallback: Literal["memory", "off"] = "memory"
    session_fallback_max_conversations: int = Field(default=10_000, ge=1, le=10_000_000)
    session_fallback_probe_seconds: float = Field(default=1.0, gt=0, le=60)
    # Redis client: timeouts (seconds) and pool size.
    session_redis_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    session_redis_max_connections: int = Field(default=64, ge=1, le=10_000)

    @property
    def effective_redis_url(self) -> str:
        return self.session_redis_url or self.redis_url

    @property
    def effective_redis_url_variable(self) -> str:
        return "SESSION_REDIS_URL" if self.session_redis_url else "REDIS_URL"
