"""parley.business.v1.BusinessService: businesses, channel identities and encrypted tokens."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from prometheus_client import Counter

from parley.business.v1 import business_pb2, business_pb2_grpc
from services.business import metrics
from services.business.core import (
    NOT_FOUND_MESSAGE,
    BusinessCore,
    CachedBusiness,
    RequestId,
    to_proto,
)
from services.business.crypto import TokenCipher
from services.business.model import (
    UPDATABLE_FIELDS,
    BusinessRecord,
    TokenStatus,
    validate_business_id,
    validate_idempotency_key,
    validate_locale,
    validate_name,
    validate_number,
    validate_numbers,
    validate_phone_number_id,
    validate_phone_number_ids,
    validate_request_id,
    validate_subdomain,
    validate_time_zone,
)
from services.business.settings import BusinessSettings
from services.business.store import BusinessStore
from services.common.business_keys import KeyKind, lookup_key
from services.common.errors import InvalidArgument, NotFound
from services.common.invalidation import Apply, InvalidationBus
from services.common.lookup_cache import LookupCache
from services.common.server import Service, run
from services.common.settings import configuring, load_settings
from services.common.tasks import cancel_and_wait

SERVICE_NAME = "parley.business.v1.BusinessService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

log = structlog.get_logger("parley.business")

_SECRET_NAMES = {
    business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN: "whatsapp_access_token",
    business_pb2.CHANNEL_SECRET_TWILIO_ACCOUNT_SID: "twilio_account_sid",
    business_pb2.CHANNEL_SECRET_TWILIO_AUTH_TOKEN: "twilio_auth_token",
    business_pb2.CHANNEL_SECRET_WEBHOOK_APP_SECRET: "webhook_app_secret",
}
_STATUS_FROM_PROTO = {
    business_pb2.TOKEN_STATUS_UNSPECIFIED: TokenStatus.NONE,
    business_pb2.TOKEN_STATUS_VALID: TokenStatus.VALID,
    business_pb2.TOKEN_STATUS_NEEDS_RENEWAL: TokenStatus.NEEDS_RENEWAL,
}


def make_store(settings: BusinessSettings) -> BusinessStore:
    """MongoDB when MONGODB_URI is set, else the embedded SQLite file."""
    if settings.mongodb_uri is not None and settings.mongodb_uri.get_secret_value():
        from pymongo.errors import ConfigurationError as MongoConfigurationError

        from services.business.mongo_store import MongoStore

        with configuring(
            "MONGODB_URI", MongoConfigurationError, url=settings.mongodb_uri.get_secret_value()
        ):
            return MongoStore(
                settings.mongodb_uri.get_secret_value(),
                database=settings.mongodb_database,
                max_pool_size=settings.mongodb_max_pool_size,
                min_pool_size=settings.mongodb_min_pool_size,
                timeout_ms=settings.mongodb_timeout_ms,
            )
    from services.business.sqlite_store import SqliteStore

    return SqliteStore(settings.business_db_path)


def make_cipher(settings: BusinessSettings) -> TokenCipher:
    """The token cipher, or ValueError naming the variable (the service refuses to start)."""
    secret = settings.encryption_secret.get_secret_value() if settings.encryption_secret else None
    previous = (
        settings.encryption_secret_previous.get_secret_value()
        if settings.encryption_secret_previous
        else None
    )
    return TokenCipher.from_settings(secret, previous)


def make_bus(
    settings: BusinessSettings,
    *,
    on_invalidate: Apply,
    on_reset: Callable[[], None],
    invalidations: Counter | None = None,
) -> InvalidationBus | None:
    """The invalidation bus on the gateway's Redis (GATEWAY_REDIS_URL, else REDIS_URL), for the
    service and the CLI alike, also publishing on REDIS_URL while the two differ; None when
    neither is set. A URL that cannot be used names its variable, and nothing it quotes of a
    password."""
    redis_url = settings.invalidation_redis_url
    if not redis_url:
        return None
    with configuring(settings.invalidation_redis_url_variable, url=redis_url):
        bus = InvalidationBus(
            redis_url,
            settings.business_invalidation_channel,
            on_invalidate=on_invalidate,
            on_reset=on_reset,
            invalidations=invalidations,
        )
    if legacy := settings.legacy_invalidation_redis_url:
        with configuring("REDIS_URL", url=legacy):
            bus.publish_also_to(legacy)
    return bus


def _credentials_proto(plain: dict[str, str]) -> business_pb2.ChannelCredentials:
    return business_pb2.ChannelCredentials(**plain)


def _credentials_from(message: business_pb2.ChannelCredentials) -> dict[str, str]:
    return {
        "whatsapp_access_token": message.whatsapp_access_token,
        "twilio_account_sid": message.twilio_account_sid,
        "twilio_auth_token": message.twilio_auth_token,
        "webhook_app_secret": message.webhook_app_secret,
    }


def _page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _after_id(token: str) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return validate_business_id(raw, "page_token")
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidArgument):
        raise InvalidArgument("page_token", "not a token this service returned") from None


def parse_identity(request: business_pb2.LookupBusinessRequest) -> tuple[KeyKind, str]:
    which = request.WhichOneof("identity")
    if which == "phone_number_id":
        return KeyKind.PHONE_NUMBER_ID, validate_phone_number_id(
            request.phone_number_id, "phone_number_id"
        )
    if which == "whatsapp_number":
        return KeyKind.WHATSAPP_NUMBER, validate_number(request.whatsapp_number, "whatsapp_number")
    if which == "subdomain":
        return KeyKind.SUBDOMAIN, validate_subdomain(request.subdomain, "subdomain")
    raise InvalidArgument("identity", "set one of phone_number_id, whatsapp_number or subdomain")


def parse_changes(request: business_pb2.UpdateBusinessRequest) -> dict[str, Any]:
    paths = list(request.update_mask.paths)
    if not paths:
        raise InvalidArgument(
            "update_mask", f"name the fields to change: {', '.join(UPDATABLE_FIELDS)}"
        )
    b = request.business
    changes: dict[str, Any] = {}
    for path in paths:
        if path == "name":
            changes["name"] = validate_name(b.name)
        elif path == "subdomain":
            changes["subdomain"] = validate_subdomain(b.subdomain)
        elif path == "whatsapp_phone_number_ids":
            changes["phone_number_ids"] = validate_phone_number_ids(b.whatsapp_phone_number_ids)
        elif path == "whatsapp_numbers":
            changes["numbers"] = validate_numbers(b.whatsapp_numbers)
        elif path == "whatsapp_enabled":
            changes["whatsapp_enabled"] = b.whatsapp_enabled
        elif path == "active":
            changes["active"] = b.active
        elif path == "time_zone":
            changes["time_zone"] = validate_time_zone(b.time_zone)
        elif path == "locale":
            changes["locale"] = validate_locale(b.locale)
        elif path == "access_token_status":
            status = _STATUS_FROM_PROTO.get(b.access_token_status)
            if status is None or status is TokenStatus.NONE:
                raise InvalidArgument(
                    "business.access_token_status",
                    "TOKEN_STATUS_VALID or TOKEN_STATUS_NEEDS_RENEWAL",
                )
            changes["access_token_status"] = status
        else:
            raise InvalidArgument(
                "update_mask",
                f"unknown or read-only field {path!r}; allowed: {', '.join(UPDATABLE_FIELDS)}",
            )
    return changes


def _expected_update_time(
    request: business_pb2.UpdateBusinessRequest | business_pb2.SetChannelTokenRequest,
) -> datetime | None:
    if not request.HasField("expected_update_time"):
        return None
    try:
        return request.expected_update_time.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            "expected_update_time", "a valid timestamp: the business's update_time as read"
        ) from None


_Idempotent = (
    business_pb2.CreateBusinessRequest
    | business_pb2.UpdateBusinessRequest
    | business_pb2.DeactivateBusinessRequest
    | business_pb2.SetChannelTokenRequest
)


def _request_id(request: _Idempotent) -> RequestId | None:
    """The request's AIP-155 id (None without one) and what it asks: the method and every
    other field, so the id reused for anything else is told apart. Callers first set its
    business id to the validated one: an id in any case names one business, so the request
    sent again with it in another case is the same request, not the id reused."""
    value = validate_request_id(request.request_id)
    if not value:
        return None
    asked = type(request).FromString(request.SerializeToString())
    asked.request_id = ""
    name = type(request).DESCRIPTOR.full_name.encode()
    return RequestId(value, name + b"\0" + asked.SerializeToString(deterministic=True))


class BusinessServicer(business_pb2_grpc.BusinessServiceServicer):
    def __init__(self, core: BusinessCore, cache: LookupCache[CachedBusiness]) -> None:
        self.core = core
        self.cache = cache

    def _with_credentials(self, record: BusinessRecord) -> business_pb2.ChannelCredentials:
        return _credentials_proto(self.core.credentials(record))

    async def GetBusiness(
        self, request: business_pb2.GetBusinessRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> business_pb2.GetBusinessResponse:
        record = await self.core.get(validate_business_id(request.id))
        response = business_pb2.GetBusinessResponse(business=to_proto(record))
        if request.include_credentials:
            response.credentials.CopyFrom(self._with_credentials(record))
        return response

    async def LookupBusiness(
        self,
        request: business_pb2.LookupBusinessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.LookupBusinessResponse:
        kind, value = parse_identity(request)
        found, cached = await self.core.lookup(kind, value, lookup_key(kind, value))
        if found is None or not (found.record.servable or request.include_inactive):
            raise NotFound(NOT_FOUND_MESSAGE)  # why: in the log, not in the answer
        if not request.include_credentials:
            if cached:
                return found.cached_response
            return business_pb2.LookupBusinessResponse(business=found.proto, cached=False)
        return business_pb2.LookupBusinessResponse(
            business=found.proto,
            credentials=self._with_credentials(found.record),
            cached=cached,
        )

    async def CreateBusiness(
        self,
        request: business_pb2.CreateBusinessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.CreateBusinessResponse:
        b = request.business
        create = functools.partial(
            self.core.create,
            name=validate_name(b.name),
            subdomain=validate_subdomain(b.subdomain),
            phone_number_ids=validate_phone_number_ids(b.whatsapp_phone_number_ids),
            numbers=validate_numbers(b.whatsapp_numbers),
            whatsapp_enabled=b.whatsapp_enabled,
            active=b.active,
            time_zone=validate_time_zone(b.time_zone),
            locale=validate_locale(b.locale),
            secrets=_credentials_from(request.credentials),
            idempotency_key=validate_idempotency_key(request.idempotency_key),
        )
        business = await self.core.once(_request_id(request), create)
        return business_pb2.CreateBusinessResponse(business=business)

    async def UpdateBusiness(
        self,
        request: business_pb2.UpdateBusinessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.UpdateBusinessResponse:
        business_id = validate_business_id(request.business.id, "business.id")
        request.business.id = business_id  # for _request_id
        update = functools.partial(
            self.core.update, business_id, parse_changes(request), _expected_update_time(request)
        )
        business = await self.core.once(_request_id(request), update)
        return business_pb2.UpdateBusinessResponse(business=business)

    async def DeactivateBusiness(
        self,
        request: business_pb2.DeactivateBusinessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.DeactivateBusinessResponse:
        request.id = validate_business_id(request.id)  # for _request_id
        deactivate = functools.partial(self.core.deactivate, request.id)
        business = await self.core.once(_request_id(request), deactivate)
        return business_pb2.DeactivateBusinessResponse(business=business)

    async def ListBusinesses(
        self,
        request: business_pb2.ListBusinessesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.ListBusinessesResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"1-{MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}")
        records = await self.core.list(
            after_id=_after_id(request.page_token),
            limit=size + 1,
            include_inactive=request.include_inactive,
        )
        page = records[:size]
        return business_pb2.ListBusinessesResponse(
            businesses=[to_proto(r) for r in page],
            next_page_token=_page_token(page[-1].id) if len(records) > size else "",
        )

    async def SetChannelToken(
        self,
        request: business_pb2.SetChannelTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.SetChannelTokenResponse:
        business_id = validate_business_id(request.business_id, "business_id")
        request.business_id = business_id  # for _request_id
        name = _SECRET_NAMES.get(request.secret)
        if name is None:
            raise InvalidArgument(
                "secret", "name which secret: CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN, ..."
            )
        set_secret = functools.partial(
            self.core.set_secret, business_id, name, request.value, _expected_update_time(request)
        )
        business = await self.core.once(_request_id(request), set_secret)
        return business_pb2.SetChannelTokenResponse(business=business)

    async def WarmCache(
        self, request: business_pb2.WarmCacheRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> business_pb2.WarmCacheResponse:
        if request.limit < 0:
            raise InvalidArgument("limit", "must not be negative (0: the cache size)")
        limit = min(request.limit or self.cache.capacity, self.cache.capacity)
        loaded = await self.core.warm(limit)
        log.info("cache warmed", loaded=loaded)
        return business_pb2.WarmCacheResponse(loaded=loaded)

    async def GetCacheStats(
        self,
        request: business_pb2.GetCacheStatsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> business_pb2.GetCacheStatsResponse:
        stats = self.cache.stats()
        return business_pb2.GetCacheStatsResponse(
            hits=stats.hits,
            misses=stats.misses,
            negative_hits=stats.negative_hits,
            evictions=stats.evictions,
            size=stats.size,
            capacity=stats.capacity,
            hit_ratio=stats.hit_ratio,
        )


class WarmingUp(Exception):
    """Not ready yet: the start-up cache load is still running."""


def build(settings: BusinessSettings, cipher: TokenCipher) -> Service:
    store = make_store(settings)
    cache: LookupCache[CachedBusiness] = LookupCache(
        capacity=settings.business_cache_size,
        ttl=settings.business_cache_ttl,
        negative_ttl=settings.business_negative_cache_ttl,
        counters=metrics.CACHE_COUNTERS,
    )
    metrics.watch_cache(cache)
    bus = make_bus(
        settings,
        on_invalidate=lambda keys, ids: cache.invalidate(keys, ids),
        on_reset=cache.clear,
        invalidations=metrics.CACHE_INVALIDATIONS,
    )
    core = BusinessCore(store, cipher, cache=cache, bus=bus)
    # WARMUP_CACHE: health turns SERVING only once the cache is loaded. The load runs on its
    # own, not inside a readiness check: a large cache can take longer than one check may
    # (the runtime's limit), which would cancel it and start it over at every check.
    warm: asyncio.Task[None] | None = None

    async def load_cache() -> None:
        if bus is not None:
            await bus.tried.wait()  # its first subscription clears the cache
        loaded = await core.warm(settings.business_cache_size)
        log.info("cache warmed at start-up", loaded=loaded)

    async def on_start() -> None:
        log.info(
            "business store",
            store=store.describe(),
            key_id=cipher.current_key_id,
            cache_size=settings.business_cache_size,
            cache_ttl=settings.business_cache_ttl,
            cross_replica_invalidation=bus is not None,
        )
        if bus is not None:
            await bus.start()

    async def readiness() -> None:
        nonlocal warm
        await store.ping()  # opens the store and creates indexes on first success
        if not settings.warmup_cache:
            return
        if warm is None:
            warm = asyncio.create_task(load_cache(), name="warm-cache")
        if not warm.done():
            raise WarmingUp(
                f"loading up to {settings.business_cache_size} businesses (WARMUP_CACHE)"
            )
        if warm.exception() is not None:
            failed, warm = warm, None
            failed.result()  # its error is the reason; the next check starts the load again

    async def on_stop() -> None:
        await cancel_and_wait(warm)
        if bus is not None:
            await bus.stop()
        await store.close()

    return Service(
        name=SERVICE_NAME,
        register=business_pb2_grpc.add_BusinessServiceServicer_to_server,
        servicer=BusinessServicer(core, cache),
        readiness=readiness,
        on_start=on_start,
        on_stop=on_stop,
    )


def main() -> int:
    settings = load_settings(BusinessSettings)
    return run(
        # make_cipher refuses to start (ValueError) without a usable ENCRYPTION_SECRET: no
        # token could be stored or read.
        lambda: build(settings, make_cipher(settings)),
        settings,
        port=settings.business_port,
        metrics_port=settings.business_metrics_port,
        log_name="business",
    )


if __name__ == "__main__":
    sys.exit(main())
