"""Business service settings (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings


class BusinessSettings(CommonSettings):
    business_port: int = Field(default=50052, ge=0, le=65535)
    business_metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Store: MongoDB when MONGODB_URI is set, else the embedded SQLite file.
    mongodb_uri: SecretStr | None = None  # may carry a password: never printed
    mongodb_database: str | None = None  # default: the URI's database, else "parley"
    mongodb_max_pool_size: int = Field(default=100, ge=1, le=10_000)
    mongodb_min_pool_size: int = Field(default=10, ge=0, le=10_000)
    mongodb_timeout_ms: int = Field(default=5000, ge=100, le=120_000)
    business_db_path: str = "var/business.db"
    # Token encryption: the current secret, and older ones that must still decrypt.
    encryption_secret: SecretStr | None = None
    encryption_secret_previous: SecretStr | None = None  # comma-separated
    # Lookup cache.
    business_cache_ttl: float = Field(default=300.0, gt=0, le=86_400)
    business_cache_size: int = Field(default=1000, ge=1, le=1_000_000)
    business_negative_cache_ttl: float = Field(default=30.0, ge=0, le=3600)
    warmup_cache: bool = False
    # Cross-replica cache invalidation (Redis pub/sub) when set, on the gateway's Redis: its
    # workers subscribe on GATEWAY_REDIS_URL when that is set, so changes are published there.
    redis_url: SecretStr | None = None
    gateway_redis_url: SecretStr | None = None
    business_invalidation_channel: str = "parley:business:invalidate"

    @property
    def invalidation_redis_url(self) -> str | None:
        url = self.gateway_redis_url or self.redis_url  # an empty SecretStr is falsy
        return url.get_secret_value() if url else None

    @property
    def invalidation_redis_url_variable(self) -> str:
        return "GATEWAY_REDIS_URL" if self.gateway_redis_url else "REDIS_URL"

    @property
    def legacy_invalidation_redis_url(self) -> str | None:
        """REDIS_URL while GATEWAY_REDIS_URL names another Redis: replicas of releases before
        they published on GATEWAY_REDIS_URL (a rolling upgrade) listen there, so every change is
        published there too."""
        if not self.gateway_redis_url or not self.redis_url:
            return None
        url = self.redis_url.get_secret_value()
        return url if url != self.gateway_redis_url.get_secret_value() else None
