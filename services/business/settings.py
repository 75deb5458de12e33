"""Business service settings (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class BusinessSettings(CommonSettings):
    business_port: int = Field(default=50052, ge=0, le=65535)
    business_metrics_port: int = Field(default=9102, ge=0, le=65535)
    mongodb_uri: str | None = None  # unset: the embedded SQLite store
    business_db_path: str = "var/business.db"
