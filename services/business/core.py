"""What the gRPC servicer and the operator CLI share: create, change, look up, encrypt, rotate.

Every write goes through here, so every write encrypts secrets the same way and invalidates the
lookup cache: this replica's at once, other replicas' through the invalidation bus, even when the
caller's deadline cancels it after the store applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as token_secrets
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from bson import ObjectId
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo.errors import PyMongoError

from parley.business.v1 import business_pb2
from services.business import metrics
from services.business.crypto import CryptoError, TokenCipher
from services.business.model import (
    SECRET_FIELDS,
    BusinessRecord,
    TokenStatus,
    business_id_for,
    utcnow,
    validate_secret,
)
from services.business.store import BusinessStore, RememberedRequest, UpdateTimeConflict
from services.common.business_keys import KeyKind
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.common.invalidation import InvalidationBus
from services.common.lookup_cache import LookupCache
from services.common.outage import OutageLog
from services.common.redact import mask_phone
from services.common.tasks import run_shielded

log = structlog.get_logger("parley.business")
# Every call that reaches the store fails while it is down: one warning per outage.
STORE_OUTAGE = OutageLog(log, "business store reachable again")

NOT_FOUND_MESSAGE = "no active WhatsApp-enabled business has this identity"
WARM_PAGE = 500
# How long a request id and its answer are remembered (AIP-155 leaves it to the API; an hour
# covers every retry of a client or a channel, and an operator re-running a script).
REQUEST_MEMORY = timedelta(hours=1)
# How long a claimed request id waits for its first call's answer before another call may take
# it over (that call died between its claim and its answer): far above any write's time, which
# the stores' own timeouts (5 s) bound.
REQUEST_LEASE = timedelta(seconds=60)
REQUEST_POLL_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.5)

_STATUS_TO_PROTO = {
    TokenStatus.NONE: business_pb2.TOKEN_STATUS_UNSPECIFIED,
    TokenStatus.VALID: business_pb2.TOKEN_STATUS_VALID,
    TokenStatus.NEEDS_RENEWAL: business_pb2.TOKEN_STATUS_NEEDS_RENEWAL,
}


class UpdateTimeChanged(Aborted):
    """A conditional write found the business changed since the caller read it: ABORTED with
    the current update_time, as the session service answers a version conflict."""

    def __init__(self, current: datetime) -> None:
        stamp = _timestamp(current).ToJsonString()
        super().__init__(
            f"the business changed meanwhile: its update_time is now {stamp}",
            "UPDATE_TIME_CONFLICT",
            {"current_update_time": stamp},
        )


def _next_update_time(before: BusinessRecord) -> datetime:
    """Now, but always after the update_time read: a write within the same millisecond as the
    previous one must still change the update_time a conditional writer compares."""
    return max(utcnow(), before.update_time + timedelta(milliseconds=1))


def _timestamp(value: Any) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_proto(record: BusinessRecord) -> business_pb2.Business:
    secrets = record.secrets
    return business_pb2.Business(
        id=record.id,
        name=record.name,
        subdomain=record.subdomain,
        whatsapp_phone_number_ids=record.phone_number_ids,
        whatsapp_numbers=record.numbers,
        whatsapp_enabled=record.whatsapp_enabled,
        active=record.active,
        time_zone=record.time_zone,
        locale=record.locale,
        has_access_token="whatsapp_access_token" in secrets,
        has_twilio_credentials="twilio_account_sid" in secrets and "twilio_auth_token" in secrets,
        has_webhook_app_secret="webhook_app_secret" in secrets,
        access_token_status=_STATUS_TO_PROTO[record.access_token_status],
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
    )


@dataclass(frozen=True)
class CachedBusiness:
    """A business as the cache keeps it, servable or not: the record and its ready-made
    answer."""

    record: BusinessRecord
    proto: business_pb2.Business = field(repr=False)
    cached_response: business_pb2.LookupBusinessResponse = field(repr=False)

    @classmethod
    def of(cls, record: BusinessRecord) -> CachedBusiness:
        proto = to_proto(record)
        # Built once and only ever read afterwards: a cached lookup allocates nothing.
        response = business_pb2.LookupBusinessResponse(business=proto, cached=True)
        return cls(record, proto, response)

    @property
    def business_id(self) -> str:
        return self.record.id

    @property
    def lookup_keys(self) -> tuple[str, ...]:
        return self.record.lookup_keys


def describe_identity(kind: KeyKind, value: str) -> str:
    """An identity as a log line may show it: numbers masked."""
    return mask_phone(value) if kind is KeyKind.WHATSAPP_NUMBER else value


def _polls() -> Iterator[float]:
    """Pauses between looks at a request id another call holds: short at first (a retry
    usually arrives once its first call has answered), then steady."""
    yield from REQUEST_POLL_SECONDS
    while True:
        yield REQUEST_POLL_SECONDS[-1]


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """A datastore that fails answers UNAVAILABLE (retryable), never INTERNAL."""
    try:
        yield
    except ServiceError:
        raise
    except (PyMongoError, sqlite3.Error, ConnectionError, OSError) as error:
        # The type only: a driver's message may quote a query or a connection string.
        STORE_OUTAGE.failed("business store error", type(error).__name__)
        raise Unavailable("the business store is unavailable; retry later") from None
    else:
        STORE_OUTAGE.worked()


@dataclass(frozen=True)
class RequestId:
    """An AIP-155 request id and what its request asked (the request's bytes, without the id:
    only a keyed fingerprint of them is stored, as they may carry a token)."""

    value: str
    asked: bytes = field(repr=False)


@dataclass
class RotationReport:
    businesses: int = 0
    secrets: int = 0
    rotated: int = 0
    already_current: int = 0
    changed_meanwhile: int = 0
    failed: int = 0


class BusinessCore:
    def __init__(
        self,
        store: BusinessStore,
        cipher: TokenCipher,
        *,
        cache: LookupCache[CachedBusiness] | None = None,
        bus: InvalidationBus | None = None,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.cache = cache
        self.bus = bus

    # --- cache invalidation ------------------------------------------------------------------

    async def invalidate(self, *records: BusinessRecord | None) -> None:
        keys: set[str] = set()
        ids: set[str] = set()
        for record in records:
            if record is not None:
                keys.update(record.lookup_keys)
                ids.add(record.id)
        if self.cache is not None:
            self.cache.invalidate(keys, ids)
            metrics.CACHE_INVALIDATIONS.labels("local").inc()
        if self.bus is not None:
            await self.bus.publish(keys, ids)

    async def _write(
        self, write: Awaitable[BusinessRecord | None], *before: BusinessRecord
    ) -> BusinessRecord | None:
        """Apply a store write, then invalidate the records before and after it, as one unit the
        caller's cancellation cannot split: an RPC's deadline can cancel the handler once the
        store has applied the write (a MongoDB reply still on its way, a SQLite COMMIT), and
        without the invalidation every replica would serve the old record (a deactivated
        business, a replaced token) until the cache TTL. The caller may stop waiting; the unit
        runs to its end. A write the store failed is invalidated too where it may have been
        applied (UNAVAILABLE is no proof that it was not)."""

        async def unit() -> BusinessRecord | None:
            try:
                with store_errors():
                    after = await write
            except UpdateTimeConflict as conflict:
                raise UpdateTimeChanged(conflict.current) from None
            except Unavailable as failed:
                # The store may have applied the write before failing (its answer lost, a
                # write concern timed out): dropped everywhere all the same, a reload is cheap.
                # Not when it surely did not (no server, a rolled-back transaction): in an
                # outage the cache keeps serving. (`from None` hides the driver's error from
                # tracebacks, not from __context__.)
                if self.store.may_have_applied(failed.__context__ or failed):
                    await self.invalidate(*before)
                raise
            if after is not None:
                await self.invalidate(*before, after)
            return after

        return await run_shielded(unit())

    async def once(
        self,
        request: RequestId | None,
        apply: Callable[[], Awaitable[BusinessRecord]],
    ) -> business_pb2.Business:
        """``apply()`` unless this request id was applied already: then the first answer. The
        id is claimed in the store before anything is applied, so two calls with one id (a
        retry racing its first call, across replicas too) apply it once; the second waits for
        the first one's answer. A failure is not remembered (the claim is dropped): a retry of
        a request that failed runs again."""
        if request is None:
            return to_proto(await apply())
        claim = token_secrets.token_hex(12)
        fingerprint = self.cipher.fingerprint(request.asked)
        for wait in _polls():
            # Claim and apply as one unit the caller's deadline cannot split: a claim taken
            # just as the call was cancelled would otherwise hold up its retry for the lease.
            outcome = await run_shielded(
                self._claim_and_apply(request.value, fingerprint, claim, apply)
            )
            if isinstance(outcome, business_pb2.Business):
                return outcome
            answer = self._remembered(request, outcome)
            if answer is not None:
                return answer
            await asyncio.sleep(wait)  # the first call is still applying it
        raise AssertionError("unreachable: _polls never ends")

    async def _claim_and_apply(
        self,
        request_id: str,
        fingerprint: str,
        claim: str,
        apply: Callable[[], Awaitable[BusinessRecord]],
    ) -> business_pb2.Business | RememberedRequest:
        """Apply and remember the answer if this call gets the claim; else what holds it."""
        now = utcnow()
        with store_errors():
            found = await self.store.claim_request(
                request_id, fingerprint, claim, now, now + REQUEST_LEASE
            )
        if found is not None:
            return found
        try:
            record = await apply()
        except BaseException:
            # A failure is not remembered: the retry of a request that failed runs again.
            with contextlib.suppress(Exception), store_errors():
                await self.store.release_request(request_id, claim)
            raise
        answer = to_proto(record)
        try:
            with store_errors():
                await self.store.finish_request(
                    request_id, claim, answer.SerializeToString(), utcnow() + REQUEST_MEMORY
                )
        except Unavailable:
            # Applied, and the answer is right: a retry of it (only if this answer is lost
            # too) waits out the claim's lease, then applies it again.
            log.warning("request applied but not remembered", write_request_id=request_id)
        return answer

    def _remembered(
        self, request: RequestId, found: RememberedRequest
    ) -> business_pb2.Business | None:
        if not self.cipher.same_fingerprint(found.fingerprint, request.asked):
            raise InvalidArgument(
                "request_id",
                "already used for another request (within the last hour): "
                "send a new request id with each request",
            )
        if found.answer is None:
            return None
        log.info("request answered from memory", write_request_id=request.value)
        return business_pb2.Business.FromString(found.answer)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, business_id: str) -> BusinessRecord:
        with store_errors():
            record = await self.store.get(business_id)
        if record is None:
            raise NotFound(f"no business with id {business_id}")
        return record

    async def lookup(
        self, kind: KeyKind, value: str, key: str
    ) -> tuple[CachedBusiness | None, bool]:
        async def load() -> CachedBusiness | None:
            with store_errors():
                record = await self.store.find(kind, value)
            shown = describe_identity(kind, value)
            if record is None:
                log.info("lookup: no business has this identity", identity=kind.name, value=shown)
                return None
            if not record.servable:
                log.info(
                    "lookup: business found but not served",
                    identity=kind.name,
                    value=shown,
                    business_id=record.id,
                    reason=record.unservable_reason(),
                )
            # Cached servable or not (invalidated alike): a lookup that accepts an unservable
            # business (include_inactive) is answered from the cache too, not from the store
            # on every webhook that names it.
            return CachedBusiness.of(record)

        if self.cache is None:
            return await load(), False
        return await self.cache.get(key, load)

    async def list(
        self, *, after_id: str | None, limit: int, include_inactive: bool
    ) -> list[BusinessRecord]:
        with store_errors():
            return await self.store.list(
                after_id=after_id,
                limit=limit,
                include_inactive=include_inactive,
                servable_only=False,
            )

    async def warm(self, limit: int) -> int:
        """Load up to ``limit`` servable businesses into the cache, oldest first."""
        if self.cache is None:
            return 0
        loaded = 0
        after: str | None = None
        while loaded < limit:
            epoch = self.cache.epoch
            with store_errors():
                page = await self.store.list(
                    after_id=after,
                    limit=min(WARM_PAGE, limit - loaded),
                    include_inactive=False,
                    servable_only=True,
                )
            if not page:
                break
            after = page[-1].id
            if self.cache.epoch != epoch:
                continue  # a write landed meanwhile: those load on demand instead
            loaded += self.cache.warm(CachedBusiness.of(r) for r in page)
        return loaded

    def credentials(self, record: BusinessRecord) -> dict[str, str]:
        """Decrypted secrets of a record (only for requests that ask for them)."""
        plain: dict[str, str] = {}
        for name, stored in record.secrets.items():
            try:
                plain[name] = self.cipher.decrypt(stored, record.id, name)
            except CryptoError as error:
                metrics.DECRYPT_FAILURES.inc()
                log.error(
                    "secret not decryptable", business_id=record.id, field=name, error=str(error)
                )
                raise FailedPrecondition(
                    f"the stored {name} of this business cannot be decrypted with the configured "
                    "keys (see ENCRYPTION_SECRET_PREVIOUS)"
                ) from None
        return plain

    # --- writes ------------------------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        subdomain: str,
        phone_number_ids: tuple[str, ...],
        numbers: tuple[str, ...],
        whatsapp_enabled: bool,
        active: bool,
        time_zone: str,
        locale: str,
        secrets: dict[str, str],
        idempotency_key: str = "",
    ) -> BusinessRecord:
        business_id = business_id_for(idempotency_key) if idempotency_key else str(ObjectId())
        now = utcnow()
        encrypted = {
            name_: self.cipher.encrypt(
                validate_secret(value, f"credentials.{name_}"), business_id, name_
            )
            for name_, value in secrets.items()
            if value
        }
        record = BusinessRecord(
            id=business_id,
            name=name,
            subdomain=subdomain,
            phone_number_ids=phone_number_ids,
            numbers=numbers,
            whatsapp_enabled=whatsapp_enabled,
            active=active,
            time_zone=time_zone,
            locale=locale,
            access_token_status=(
                TokenStatus.VALID if "whatsapp_access_token" in encrypted else TokenStatus.NONE
            ),
            create_time=now,
            update_time=now,
            secrets=encrypted,
        )
        # Unknown-identity entries for these keys may be cached as "not found": dropped too,
        # also when the store fails (it may have created it all the same).
        try:
            await self._write(self.store.create(record), record)
        except AlreadyExists:
            # A create sent again with its key (or twice at once) meets the id its first made.
            if idempotency_key and (first := await self._created_by_key(business_id, subdomain)):
                return first
            raise
        log.info("business created", business_id=business_id, subdomain=subdomain)
        return record

    async def _created_by_key(self, business_id: str, subdomain: str) -> BusinessRecord | None:
        """The business an earlier create with this idempotency key made, if any."""
        with store_errors():
            first = await self.store.get(business_id)
        if first is None:
            return None
        if first.subdomain != subdomain:
            raise InvalidArgument(
                "idempotency_key",
                f"already used to create business {first.id} (subdomain {first.subdomain}); "
                "use a new key for another business",
            )
        log.info("business create sent again", business_id=business_id)
        return first

    async def update(
        self,
        business_id: str,
        changes: dict[str, Any],
        expected_update_time: datetime | None = None,
    ) -> BusinessRecord:
        before = await self.get(business_id)
        if expected_update_time is not None and before.update_time != expected_update_time:
            raise UpdateTimeChanged(before.update_time)
        if "access_token_status" in changes:
            status = changes["access_token_status"]
            if status is not TokenStatus.NONE and "whatsapp_access_token" not in before.secrets:
                raise FailedPrecondition("this business has no access token to mark")
        after = await self._write(
            self.store.update(
                business_id,
                {**changes, "update_time": _next_update_time(before)},
                expected_update_time=expected_update_time,
            ),
            before,
        )
        if after is None:
            raise NotFound(f"no business with id {business_id}")
        log.info("business updated", business_id=business_id, fields=sorted(changes))
        return after

    async def set_secret(
        self,
        business_id: str,
        name: str,
        value: str,
        expected_update_time: datetime | None = None,
    ) -> BusinessRecord:
        if name not in SECRET_FIELDS:
            raise ValueError(f"unknown secret {name}")
        before = await self.get(business_id)
        if expected_update_time is not None and before.update_time != expected_update_time:
            raise UpdateTimeChanged(before.update_time)
        fields: dict[str, Any] = {"update_time": _next_update_time(before)}
        if name == "whatsapp_access_token":
            fields["access_token_status"] = TokenStatus.VALID if value else TokenStatus.NONE
        stored = (
            self.cipher.encrypt(validate_secret(value, "value"), business_id, name)
            if value
            else None
        )
        after = await self._write(
            self.store.update(
                business_id, fields, {name: stored}, expected_update_time=expected_update_time
            ),
            before,
        )
        if after is None:
            raise NotFound(f"no business with id {business_id}")
        log.info(
            "channel secret set" if value else "channel secret cleared",
            business_id=business_id,
            field=name,
        )
        return after

    async def deactivate(self, business_id: str) -> BusinessRecord:
        return await self.update(business_id, {"active": False})

    # --- key rotation ------------------------------------------------------------------------

    async def rotate(
        self,
        *,
        dry_run: bool,
        page_size: int = 200,
        progress: Callable[[RotationReport], None] | None = None,
    ) -> RotationReport:
        """Re-encrypt every secret not under the current key. Safe to re-run at any point."""
        report = RotationReport()
        after: str | None = None
        while True:
            with store_errors():  # a store failing midway: UNAVAILABLE, and a re-run goes on
                page = await self.store.list(
                    after_id=after, limit=page_size, include_inactive=True, servable_only=False
                )
            if not page:
                break
            after = page[-1].id
            for record in page:
                report.businesses += 1
                touched = False
                for name, stored in record.secrets.items():
                    report.secrets += 1
                    try:
                        if not self.cipher.needs_rotation(stored):
                            report.already_current += 1
                            continue
                        plain = self.cipher.decrypt(stored, record.id, name)
                    except CryptoError as error:
                        report.failed += 1
                        log.error(
                            "secret not rotatable",
                            business_id=record.id,
                            field=name,
                            error=str(error),
                        )
                        continue
                    if dry_run:
                        report.rotated += 1
                        continue
                    fresh = self.cipher.encrypt(plain, record.id, name)
                    # Compare-and-set: a secret changed meanwhile is already under the new key.
                    with store_errors():
                        swapped = await self.store.replace_secret(record.id, name, stored, fresh)
                    if swapped:
                        report.rotated += 1
                        touched = True
                    else:
                        report.changed_meanwhile += 1
                if touched:
                    await self.invalidate(record)
            if progress is not None:
                progress(report)
        return report
