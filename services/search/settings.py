"""Search service settings (environment variables; see the README's table).

Provider-specific settings (``AMADEUS_*``) live in each provider's module, so adding a provider
touches one file.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from services.common.settings import CommonSettings, ConfigurationError

_ROUTE = re.compile(r"^[A-Z]{3}-[A-Z]{3}$")
DEFAULT_POPULAR_ROUTES = (
    "NYC-LON,LON-NYC,JFK-LAX,LAX-JFK,NYC-PAR,PAR-NYC,LON-DXB,SFO-TYO,NYC-MIA,LON-BCN,"
    "PAR-ROM,MAD-LON,TLV-NYC,CHI-NYC,BER-LON,LON-AMS"
)


class SearchSettings(CommonSettings):
    search_port: int = Field(default=50053, ge=0, le=65535)
    search_metrics_port: int = Field(default=9103, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"
    search_redis_url: str | None = None  # overrides REDIS_URL for this service

    # Which provider answers: "auto" picks the first configured one by priority (Amadeus when
    # its credentials are set, else offline); or a provider's name.
    search_provider: str = "auto"
    # Cache: fresh for the TTL, then kept this much longer to be served stale on errors.
    redis_cache_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    search_stale_grace_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    # Cross-replica single-flight: how long one replica holds the fetch lock for a query.
    search_lock_seconds: float = Field(default=15.0, gt=0, le=300)
    # Ceiling for one provider fetch (retries included). Callers share a fetch, so it runs on
    # this time, not any one caller's; each caller waits for it up to its own deadline.
    search_provider_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Circuit breaker, one per provider.
    search_breaker_failure_threshold: int = Field(default=5, ge=1, le=1000)
    search_breaker_recovery_seconds: float = Field(default=30.0, gt=0, le=3600)
    search_breaker_half_open_probes: int = Field(default=1, ge=1, le=100)
    # Warming.
    search_warm_concurrency: int = Field(default=4, ge=1, le=64)
    search_popular_routes: str = DEFAULT_POPULAR_ROUTES
    # Offline provider: client-side rate limit (0: none) and the fault-injection switch (when
    # this file exists, every offline search fails as a provider outage would).
    search_offline_rate_limit_per_second: float = Field(default=0.0, ge=0, le=100_000)
    search_offline_failure_file: str | None = None

    @field_validator("search_popular_routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        for route in filter(None, (r.strip().upper() for r in value.split(","))):
            if not _ROUTE.match(route):
                raise ValueError(f"{route!r} is not ORIGIN-DESTINATION with IATA codes")
        return value

    @model_validator(mode="after")
    def _lock_outlasts_a_fetch(self) -> SearchSettings:
        # A lock that expires while its holder's fetch still runs lets the replicas waiting on
        # it, and any new search of that query, call the provider too: single-flight is lost
        # exactly when the provider is slow.
        if self.search_lock_seconds < self.search_provider_timeout_seconds:
            raise ConfigurationError(
                "SEARCH_LOCK_SECONDS",
                "must be at least SEARCH_PROVIDER_TIMEOUT_SECONDS (a fetch may take that long,"
                " and the other replicas wait on its lock)",
            )
        return self

    @property
    def effective_redis_url(self) -> str:
        return self.search_redis_url or self.redis_url

    @property
    def effective_redis_url_variable(self) -> str:
        return "SEARCH_REDIS_URL" if self.search_redis_url else "REDIS_URL"

    @property
    def popular_routes(self) -> list[tuple[str, str]]:
        routes = filter(None, (r.strip().upper() for r in self.search_popular_routes.split(",")))
        return [(r[:3], r[4:]) for r in routes]
