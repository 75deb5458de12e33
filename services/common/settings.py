"""Settings from the environment, validated once at start-up.

Every service has a ``Settings`` subclass of :class:`CommonSettings`; fields map to environment
variables by name (``redis_url`` ← ``REDIS_URL``). :func:`load_settings` turns a validation error
into one clear line per bad variable and exits, so a typo never surfaces later as a stack trace.
What only building a client can check (a URL that does not parse, a file that cannot be read)
is raised as a :class:`ConfigurationError` naming the variable (see :func:`configuring`), and
stops start-up the same way (``services.common.server.run``).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
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
    # Connections older than this are closed gracefully (GOAWAY; calls on them finish): the
    # gateway's channel then resolves the service's DNS name again and finds replicas added
    # since (a scale-up, an HPA). 0: never.
    grpc_max_connection_age_seconds: float = Field(default=30.0, ge=0, le=86400)
    # TLS between the gateway and the services (server cert/key; CA makes it mutual).
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_ca: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: object) -> object:
        # "info" is how uvicorn, celery and many a team's .env spell it.
        return value.upper() if isinstance(value, str) else value

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


# Variables of the migration guides that Parley does not read, and what to set instead: a
# carried-over .env that still holds one would otherwise seem to apply it.
GUIDE_NAMES_NOT_READ = {
    "SESSION_TTL_HOURS": "REDIS_TTL_SECONDS (seconds)",
    "CONTEXT_TTL": "REDIS_TTL_SECONDS",
    "CUSTOMER_CONTEXT_TTL": "REDIS_TTL_SECONDS",
    "ADMIN_CONTEXT_TTL": "REDIS_TTL_SECONDS",
    "MAX_CACHE_SIZE": "SESSION_FALLBACK_MAX_CONVERSATIONS (conversations held in memory)",
    "MESSAGE_PROCESSOR_TIMEOUT": "ENGINE_TIMEOUT_SECONDS (seconds)",
    "WEBHOOK_SECRET": "WHATSAPP_APP_SECRET (Cloud API) and TWILIO_AUTH_TOKEN (Twilio)",
    "TWILIO_WHATSAPP_NUMBER": "the business's own number (python -m services.business.cli)",
    "USE_REDIS": "nothing: Redis is always the store (SESSION_FALLBACK covers its outages)",
    "UNIFIED_CONVERSATION_ENABLED": "nothing: every conversation is in the unified layout",
    "DATABASE_URL": "MONGODB_URI (MongoDB), else BUSINESS_DB_PATH (the SQLite file)",
}


def guide_names_not_read(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The guides' variables set in ``environ`` that Parley ignores, each with its replacement."""
    names = {name.upper() for name in environ}
    return [(name, use) for name, use in GUIDE_NAMES_NOT_READ.items() if name in names]


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def http_url(value: str, example: str) -> str:
    """``value``, stripped, if it is an ``http://`` or ``https://`` URL with a host; else a
    ValueError for the settings class to report (``example`` shows the form). Checked at start-up
    because a base URL without its scheme (``api.example.com``, an API specification's ``host``)
    starts a process whose every call to that API fails."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, e.g. {example}")
    return value


def refuse_to_start(*reasons: str) -> NoReturn:
    """Stop start-up on configuration that cannot work: one line per reason (``VARIABLE: why``,
    never its value) under ``invalid configuration:``, status 2."""
    print("invalid configuration:\n" + "\n".join(f"  {r}" for r in reasons), file=sys.stderr)
    raise SystemExit(2)


class ConfigurationError(ValueError):
    """A setting that validated but cannot be used: ``<VARIABLE>: <reason>``, never its value."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")


# From a parser's message's first quote to its last: what it quoted of the value.
_QUOTED = re.compile(r"['\"].*['\"]", re.DOTALL)


@contextlib.contextmanager
def configuring(variable: str, *errors: type[Exception], url: str | None = None) -> Iterator[None]:
    """A ``ValueError`` (or one of ``errors``) while building from ``variable`` becomes a
    :class:`ConfigurationError` naming it. The parsers' messages name the part that is wrong
    (a scheme, a port). ``url``: the value, when it is a URL that may hold a password: a
    password with '/', '?' or '#' in it ends the host part early, and the parsers then quote a
    piece of it (``Port could not be cast to integer value as 'pass'``), so with credentials in
    the URL nothing quoted is shown."""
    caught: tuple[type[Exception], ...] = (ValueError, *errors)
    try:
        yield
    except caught as error:
        reason = str(error)
        if url and "@" in url:
            quoted = _QUOTED.search(reason)
            # An '@' past the host part: the credentials held one of '/', '?', '#' and the
            # rest of them was read as a path or a query (a database that is no number).
            cut = "@" in url.split("//", 1)[-1][len(urlsplit(url).netloc) :]
            if quoted or cut:
                reason = (
                    _QUOTED.sub("'…'", reason)
                    + " ('/', '?', '#' and '@' in a user name or password must be percent-encoded)"
                )
        raise ConfigurationError(variable, reason) from None


def read_setting_file(variable: str, path: str) -> bytes:
    """The file a variable names (a certificate, a key): one that cannot be read is a
    :class:`ConfigurationError` naming the variable."""
    with configuring(variable, OSError):
        return Path(path).read_bytes()


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build ``cls`` from the environment, or exit with status 2 naming each bad variable."""
    try:
        return cls()
    except ValidationError as error:
        refuse_to_start(*(_refusal(item) for item in error.errors()))


def _refusal(item: ErrorDetails) -> str:
    """One line of a refusal: ``VARIABLE: why``. A check of several settings together names
    its variable by raising :class:`ConfigurationError`; pydantic gives it no field."""
    cause = item.get("ctx", {}).get("error")
    if isinstance(cause, ConfigurationError):
        return str(cause)
    variable = "_".join(str(part) for part in item["loc"]).upper() or "(settings)"
    return f"{variable}: {item['msg']}"
