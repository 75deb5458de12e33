"""The workers' cache of ``LookupBusiness`` answers, invalidated over the business channel.

Businesses almost never change, yet every message needs its business and credentials: one gRPC
call per message was most of the business service's CPU and a good part of the worker's. So a
worker keeps each answer (business and decrypted credentials) for
``GATEWAY_BUSINESS_CACHE_TTL_SECONDS``, under the lookup keys the business service uses, and
drops it as soon as the business service publishes a change on
``BUSINESS_INVALIDATION_CHANNEL`` (through the gateway's Redis). The TTL bounds staleness when
nothing is published (a business service without ``REDIS_URL``, or a lost subscription before
it is noticed; a re-subscription clears everything). Unknown identities are remembered only
briefly (``NEGATIVE_TTL_SECONDS``), and a new business's keys are invalidated when it is created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import structlog

from parley.business.v1 import business_pb2, business_pb2_grpc
from services.common.business_keys import KeyKind, business_keys, identity_key
from services.common.invalidation import InvalidationBus
from services.common.lookup_cache import LookupCache
from services.gateway import metrics
from services.gateway.settings import GatewaySettings

log = structlog.get_logger()

NEGATIVE_TTL_SECONDS = 5.0
# Each invalidation is applied again this much later: a miss right after the first may have
# reloaded the old answer from a business replica that had not applied it yet.
REPLICA_LAG_SECONDS = 1.0
# Answers that mean "no servable business has this identity": cached as such, briefly.
UNKNOWN_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class KnownBusiness:
    """One ``LookupBusiness`` answer as cached; credentials stay out of any repr."""

    business: business_pb2.Business = field(repr=False)
    credentials: business_pb2.ChannelCredentials = field(repr=False)
    business_id: str
    lookup_keys: tuple[str, ...]

    @classmethod
    def of(cls, response: business_pb2.LookupBusinessResponse) -> KnownBusiness:
        b = response.business
        return cls(
            business=b,
            credentials=response.credentials,
            business_id=b.id,
            lookup_keys=business_keys(b.whatsapp_phone_number_ids, b.whatsapp_numbers, b.subdomain),
        )


class BusinessDirectory:
    """Resolves a channel identity to its business, from the cache when it can."""

    def __init__(
        self, settings: GatewaySettings, stub: business_pb2_grpc.BusinessServiceAsyncStub
    ) -> None:
        self._stub = stub
        ttl = settings.gateway_business_cache_ttl_seconds
        self.cache: LookupCache[KnownBusiness] | None = None
        self.bus: InvalidationBus | None = None
        if ttl > 0:
            cache: LookupCache[KnownBusiness] = LookupCache(
                capacity=settings.gateway_business_cache_size,
                ttl=ttl,
                negative_ttl=min(ttl, NEGATIVE_TTL_SECONDS),
                counters=metrics.BUSINESS_CACHE_COUNTERS,
            )
            self.cache = cache
            self.bus = InvalidationBus(
                settings.effective_redis_url,
                settings.business_invalidation_channel,
                on_invalidate=lambda keys, ids: cache.invalidate(keys, ids),
                on_reset=cache.clear,
                invalidations=metrics.BUSINESS_CACHE_INVALIDATIONS,
                repeat_after=REPLICA_LAG_SECONDS,
            )

    async def start(self) -> None:
        if self.bus is not None:
            await self.bus.start()

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()

    async def lookup(self, channel: str, identity: str) -> KnownBusiness | None:
        """The business answering this identity, or None if there is none (or it is not
        served). Other errors of the business service propagate (the message is retried)."""
        cloud = channel == "cloud_api"

        async def load() -> KnownBusiness | None:  # a miss only: no request built on a hit
            request = business_pb2.LookupBusinessRequest(include_credentials=True)
            if cloud:
                request.phone_number_id = identity
            else:
                request.whatsapp_number = identity
            try:
                return KnownBusiness.of(await self._stub.LookupBusiness(request))
            except grpc.aio.AioRpcError as error:
                if error.code() in UNKNOWN_CODES:
                    return None
                raise

        if self.cache is None:
            return await load()
        kind = KeyKind.PHONE_NUMBER_ID if cloud else KeyKind.WHATSAPP_NUMBER
        found, _ = await self.cache.get(identity_key(kind, identity), load)
        return found

    def forget(self, business_id: str, origin: str) -> None:
        """Drop one business at once (e.g. its token was refused), whatever the TTL says."""
        if self.cache is not None:
            self.cache.invalidate(business_ids=(business_id,))
            metrics.BUSINESS_CACHE_INVALIDATIONS.labels(origin).inc()

    def describe(self) -> dict[str, Any]:
        """This process's cache, for ``/health/detailed``."""
        if self.cache is None:
            return {"enabled": False}
        stats = self.cache.stats()
        return {
            "enabled": True,
            "ttl_seconds": self.cache.ttl,
            **asdict(stats),
            "hit_ratio": round(stats.hit_ratio, 4),
            "invalidation_subscribed": self.bus is not None and self.bus.subscribed.is_set(),
        }
