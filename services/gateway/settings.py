"""Gateway settings (environment variables; see the README's table)."""

from __future__ import annotations

from typing import Any

from limits import parse_many
from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.common.redact import mask_url
from services.common.settings import CommonSettings, ConfigurationError, http_url

KIB = 1024
MIN_API_KEY_LENGTH = 16  # with APP_ENV=production, as ENCRYPTION_SECRET

# Settings whose values are secrets: masked wherever the configuration is shown.
SECRET_FIELDS = frozenset(
    {"whatsapp_verify_token", "whatsapp_app_secret", "twilio_auth_token", "api_key"}
)


class GatewaySettings(CommonSettings):
    gateway_host: str = "::"  # every address, IPv6 and IPv4 (services.gateway.main)
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    session_service_addr: str = "localhost:50051"
    business_service_addr: str = "localhost:50052"
    search_service_addr: str = "localhost:50053"
    redis_url: str = "redis://127.0.0.1:6379/0"
    gateway_redis_url: str | None = None  # overrides REDIS_URL for the queue and dedupe

    # Webhooks
    whatsapp_verify_token: str | None = None
    whatsapp_app_secret: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    public_base_url: str | None = None  # e.g. https://bot.example.com, behind a proxy
    # Meta's webhooks can be up to 3 MB (Cloud API webhooks guide); a smaller limit refuses
    # real ones at every retry. Twilio's forms are far smaller.
    max_body_bytes: int = Field(default=3 * KIB * KIB, ge=1 * KIB, le=16 * KIB * KIB)
    # How long a request (head and body) may take to arrive, from its first byte: past it, 408
    # and the connection closed. The providers send a webhook in well under a second; a client
    # sending slowly, or less than its Content-Length, holds a connection only this long.
    request_read_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    # Senders
    whatsapp_api_base_url: str = "https://graph.facebook.com/v23.0"
    twilio_api_base_url: str = "https://api.twilio.com"
    outbox_only: bool = False
    outbox_max_messages: int = Field(default=200, ge=1, le=100_000)
    send_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # Queue and workers
    queue_partitions: int = Field(default=16, ge=1, le=1024)
    # Messages handled at once by one worker process, across the partitions it holds.
    worker_concurrency: int = Field(default=8, ge=1, le=1024)
    visibility_timeout_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_seconds: float = Field(default=1.0, gt=0, le=600)
    retry_max_seconds: float = Field(default=60.0, gt=0, le=3600)
    # How long a message keeps retrying a dependency's failures (which don't use up
    # MAX_ATTEMPTS), from the first: long enough for a service restart, a database failover or a
    # short provider incident; short enough that the users behind it on its partition are not
    # held up for long.
    retry_window_seconds: float = Field(default=300.0, ge=0, le=86_400)
    dedupe_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    gateway_engine: str = "services.gateway.bot:create_engine"

    # HTTP processes
    web_concurrency: int = Field(default=1, ge=1, le=64)
    # `--role worker` serves /health, /ready and /metrics here (0: no HTTP at all).
    worker_http_port: int = Field(default=0, ge=0, le=65535)

    # Rate limits (``limits`` notation, e.g. "20/minute")
    rate_limit_user: str = "20/minute"
    rate_limit_business: str = "1200/minute"

    # Admin API; off when unset
    api_key: str | None = None

    # Workers' cache of LookupBusiness answers (0: off), dropped on the business service's
    # invalidation channel (on the gateway's Redis), so the TTL only bounds staleness when
    # nothing is published.
    gateway_business_cache_ttl_seconds: float = Field(default=30.0, ge=0, le=86_400)
    gateway_business_cache_size: int = Field(default=1000, ge=1, le=1_000_000)
    business_invalidation_channel: str = "parley:business:invalidate"

    # Deadlines of calls to the services
    grpc_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    engine_timeout_seconds: float = Field(default=20.0, gt=0, le=600)

    @field_validator(*sorted(SECRET_FIELDS), "twilio_account_sid", mode="before")
    @classmethod
    def _without_surrounding_whitespace(cls, value: object) -> object:
        # A Kubernetes Secret made with --from-file (or a file written by echo) keeps the file's
        # newline: every signature and key would be refused. None of these holds whitespace.
        return value.strip() if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _key_a_header_carries(cls, value: str | None) -> str | None:
        # Headers arrive as bytes read as Latin-1: a key with "é" sent as UTF-8 (curl, a
        # terminal) never matched (403 with the right key), and httpx cannot send it at all.
        if value and not (value.isascii() and value.isprintable()):
            raise ValueError("must be printable ASCII (it travels in an HTTP header)")
        return value

    @field_validator("whatsapp_api_base_url", "twilio_api_base_url")
    @classmethod
    def _api_url(cls, value: str, info: ValidationInfo) -> str:
        # Without its scheme every reply failed as an outage (aiohttp: InvalidURL), retried for
        # RETRY_WINDOW_SECONDS and dead-lettered, while the gateway looked healthy.
        return http_url(value, str(cls.model_fields[str(info.field_name)].default))

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        # Twilio signs the whole URL it called, scheme included: "bot.example.com" made every
        # Twilio webhook's signature fail (403).
        return http_url(value, "https://bot.example.com") if value else None

    @field_validator("rate_limit_user", "rate_limit_business")
    @classmethod
    def _one_limit(cls, value: str) -> str:
        # Parsed only when the rate limiter was built, in the app's start-up: a typo was a
        # traceback (status 3) that quoted the value and never named the variable; and of
        # "20/minute;100/hour" only the first limit was ever applied.
        try:
            limits = parse_many(value)
        except ValueError:
            raise ValueError("expected one limit in the limits notation, e.g. 20/minute") from None
        if len(limits) != 1:
            raise ValueError("one limit only (of several, just the first would apply)")
        if limits[0].amount < 1:
            raise ValueError("must allow at least one message per window")
        return value

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> GatewaySettings:
        if self.is_production:
            missing = [
                name.upper()
                for name in ("whatsapp_verify_token", "whatsapp_app_secret", "api_key")
                if not getattr(self, name)
            ]
            if missing:
                raise ConfigurationError(
                    "APP_ENV", "production needs these secrets set: " + ", ".join(missing)
                )
            # It reads every conversation and erases users, behind no rate limit: not a word
            # that can be guessed. The length only, never the value, in the message.
            if len(self.api_key or "") < MIN_API_KEY_LENGTH:
                raise ValueError(
                    f"APP_ENV=production needs an API_KEY of at least {MIN_API_KEY_LENGTH} "
                    "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return self

    @model_validator(mode="after")
    def _a_send_fits_the_engines_deadline(self) -> GatewaySettings:
        # The engine's interim reply ("searching …", Turn.send_early) is sent within the
        # engine's deadline: a slow provider then timed the engine out (the message's own
        # failure, dead-lettered after MAX_ATTEMPTS) instead of the send (a dependency's,
        # retried through RETRY_WINDOW_SECONDS), the interim reply perhaps delivered each time.
        if self.engine_timeout_seconds <= self.send_timeout_seconds:
            raise ConfigurationError(
                "ENGINE_TIMEOUT_SECONDS",
                "must be more than SEND_TIMEOUT_SECONDS (the engine's interim reply is sent"
                " within its deadline)",
            )
        return self

    @property
    def effective_redis_url(self) -> str:
        return self.gateway_redis_url or self.redis_url

    @property
    def effective_redis_url_variable(self) -> str:
        return "GATEWAY_REDIS_URL" if self.gateway_redis_url else "REDIS_URL"

    def masked(self) -> dict[str, Any]:
        """The configuration in force with every secret replaced by whether it is set."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if name in SECRET_FIELDS or name.endswith(("_secret", "_token", "_key")):
                shown[name] = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                shown[name] = mask_url(value)
            else:
                shown[name] = value
        return shown
