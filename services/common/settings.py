"""Settings from the environment, validated once at start-up.

Every service has a ``Settings`` subclass of :class:`CommonSettings`; fields map to environment
variables by name (``redis_url`` ← ``REDIS_URL``). :func:`load_settings` turns a validation error
into one clear line per bad variable and exits, so a typo never surfaces later as a stack trace.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

AppEnv = Literal["dev", "test", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class CommonSettings(BaseSettings):
    """What every Parley process reads."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    app_env: AppEnv = "dev"
    log_level: LogLevel = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    # gRPC server side
    grpc_host: str = "0.0.0.0"
    shutdown_grace_seconds: float = Field(default=10.0, gt=0, le=600)
    readiness_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    # A server-side ceiling for calls whose client set no deadline.
    grpc_default_deadline_seconds: float = Field(default=30.0, gt=0, le=3600)
    # TLS between the gateway and the services (server cert/key; CA makes it mutual).
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_ca: str | None = None

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad variable, named as the user sets it (upper case), without its value."""
    lines = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper() or "(settings)"
        lines.append(f"  {name}: {item['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build ``cls`` from the environment, or exit with status 2 naming each bad variable."""
    try:
        return cls()
    except ValidationError as error:
        print(describe_validation_error(error), file=sys.stderr)
        raise SystemExit(2) from None
