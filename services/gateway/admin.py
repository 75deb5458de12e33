"""The admin API under ``/admin``: businesses, sessions, users' erasure, circuits, caches,
outbox, dead letters.

Allowed only with ``API_KEY`` in ``X-API-Key`` or ``Authorization: Bearer`` (constant-time
compare); with no key configured the whole API answers 404. Responses never carry a secret.
gRPC errors of the services become HTTP statuses in the app's exception handler.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import structlog
from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    Security,
)
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.business.v1 import business_pb2
from parley.search.v1 import search_pb2
from parley.session.v1 import session_pb2
from services.common.business_keys import normalize_number
from services.common.channel_secrets import secret_problem
from services.common.errors import error_info, field_violations
from services.common.redact import mask_phone
from services.gateway.clients import WARM_CACHE_SECONDS
from services.gateway.queue import DEAD_MAXLEN
from services.gateway.ratelimit import user_keys
from services.gateway.runtime import Runtime

log = structlog.get_logger()

STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"  # below 2**64, as Redis requires
# A bulk replay's cursor: after which dead letter it goes on, and up to which (the last one
# there when it began: a message that fails again is not replayed again by the same run).
BULK_CURSOR = r"^[0-9]{1,19}-[0-9]{1,19}_[0-9]{1,19}-[0-9]{1,19}$"
TOKEN_STATUS = {
    business_pb2.TOKEN_STATUS_UNSPECIFIED: "none",
    business_pb2.TOKEN_STATUS_VALID: "valid",
    business_pb2.TOKEN_STATUS_NEEDS_RENEWAL: "needs_renewal",
}

Text = Annotated[str, Field(max_length=1000)]
BusinessId = Annotated[str, Path(min_length=1, max_length=128)]
UserId = Annotated[str, Path(min_length=1, max_length=128)]
Ids = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=50)]
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API_KEY (or send it as a Bearer token)."
)
BEARER = HTTPBearer(auto_error=False, description="API_KEY as a Bearer token.")


class BusinessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    subdomain: Annotated[str, Field(min_length=1, max_length=63)]
    whatsapp_phone_number_ids: Ids = []
    whatsapp_numbers: Ids = []
    access_token: Text | None = None
    twilio_account_sid: Text | None = None
    twilio_auth_token: Text | None = None
    webhook_app_secret: Text | None = None
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    locale: Annotated[str, Field(max_length=35)] = "en"
    active: bool = True
    whatsapp_enabled: bool = True


class BusinessPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    subdomain: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    whatsapp_phone_number_ids: Ids | None = None
    whatsapp_numbers: Ids | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    active: bool | None = None
    whatsapp_enabled: bool | None = None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_token: Text | None = None
    twilio_account_sid: Text | None = None
    twilio_auth_token: Text | None = None
    webhook_app_secret: Text | None = None


class BusinessOut(BaseModel):
    id: str
    name: str
    subdomain: str
    whatsapp_phone_number_ids: list[str]
    whatsapp_numbers: list[str]
    timezone: str
    locale: str
    active: bool
    whatsapp_enabled: bool
    has_access_token: bool
    has_twilio_credentials: bool
    has_webhook_app_secret: bool
    access_token_status: str
    created_at: datetime | None
    updated_at: datetime | None


class BusinessList(BaseModel):
    businesses: list[BusinessOut]
    next_page_token: str


class OutboxButton(BaseModel):
    id: str
    title: str


class OutboxRow(BaseModel):
    id: str
    title: str
    description: str = ""


class OutboxMessage(BaseModel):
    id: str
    business_id: str
    user_id: str
    text: str
    buttons: list[OutboxButton]
    rows: list[OutboxRow]
    time: str


class Outbox(BaseModel):
    messages: list[OutboxMessage]
    next: str


class DeadLetterOut(BaseModel):
    id: str
    reason: str
    error: str
    time: str
    request_id: str
    message: dict[str, Any] | None
    raw: str | None


class DeadLetters(BaseModel):
    dead_letters: list[DeadLetterOut]
    next: str


class BulkReplay(BaseModel):
    replayed: int = Field(description="Records whose message was queued again.")
    skipped: int = Field(
        description="Records of the reason left as they were: being replayed or deleted by "
        "another call, or holding no message that can be read (409 alone)."
    )
    next: str | None = Field(
        description="Not null: the call stopped at its time limit (or `limit`); call again "
        "with `cursor` set to it. Null: every record of the reason is done."
    )


class Problem(BaseModel):
    detail: str
    fields: dict[str, str] = Field(
        default={}, description="Each refused field and why (a 400 of the service)."
    )
    applied: list[str] = Field(
        default=[],
        description="A 412 of `PUT .../token`: the secrets written before the business was seen "
        "changed (the others were not).",
    )


# The statuses the app's handler gives the services' errors (and Redis's), declared where they
# can happen so that the OpenAPI document says what the routes answer.
REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A value the service refused; `fields` names it."}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "Taken by another business (subdomain, identity)."}
}


CHANGED: dict[int | str, dict[str, Any]] = {
    412: {
        "model": Problem,
        "description": "`If-Match` names a version the business is no longer at (it changed "
        "since it was read): read it again (its `ETag`), redo the change, send again.",
    }
}
IF_MATCH = Header(
    max_length=1000,
    description="The `ETag` of `GET /admin/businesses/{id}`: change only while the business is "
    "still at that version, else 412.",
)


# No max_length: FastAPI's own check would answer a long key 422 with another message;
# idempotency_key_of answers every bad key 400 (the header's size is the HTTP server's bound).
IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key",
    description="Makes the request safe to send again (IETF draft *The Idempotency-Key HTTP "
    "Header Field*): a UUID is best, 1-128 printable characters, quoted or not. A request with "
    "the key of one already applied (within the hour; for a create, for good) answers that "
    "first answer and changes nothing again; the key reused with another request is 400.",
)
# uuid5 namespace of the request ids made from an Idempotency-Key (any fixed UUID would do).
_KEY_NAMESPACE = uuid.UUID("5d0b8c1e-4a53-5bd6-9f3e-2f1a7c9e6b40")


def idempotency_key_of(header: str | None) -> str | None:
    """The operator's Idempotency-Key, checked: 400 unless 1-128 printable characters."""
    if header is None:
        return None
    key = header
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]  # the draft's sf-string form; the bare token means the same key
    if not 1 <= len(key) <= 128 or not key.isprintable():
        raise HTTPException(400, "Idempotency-Key: 1-128 printable characters")
    return key


def request_id(header: str | None, business_id: str = "") -> uuid.UUID:
    """The business service's request id (AIP-155) for one admin request: the same for every
    send of it, so the channel's retry of a call whose answer was lost is answered, not applied
    twice. From the operator's Idempotency-Key when given (with the business it changes, so a
    key names one request per business), else fresh."""
    key = idempotency_key_of(header)
    if key is None:
        return uuid.uuid4()
    # The id as the service validates it: in any case (or padded) it names one business.
    return uuid.uuid5(_KEY_NAMESPACE, f"{business_id.strip().lower()}\n{key}")


class Changed(Exception):
    """If-Match named a version the business is no longer at: 412 with its current ETag."""

    def __init__(self, current: Timestamp | None, applied: list[str] | None = None) -> None:
        super().__init__("the business changed since it was read")
        self.current = current
        self.applied = applied or []  # what the request wrote before the change was seen

    def response(self) -> JSONResponse:
        headers = {"ETag": etag(self.current)} if self.current is not None else None
        detail = "the business changed since it was read (If-Match): read it again and retry"
        body: dict[str, Any] = {"detail": detail}
        if self.applied:
            body["detail"] += "; already written: " + ", ".join(self.applied)
            body["applied"] = self.applied
        return JSONResponse(body, status_code=412, headers=headers)


def etag(update_time: Timestamp) -> str:
    """The business's version: every write moves its update_time (the service guarantees it)."""
    return f'"{update_time.ToJsonString()}"'


def listed_versions(if_match: str) -> list[Timestamp] | None:
    """The update_times If-Match names, None for ``*`` (any version). Strong comparison (RFC
    9110 13.1.1): a weak or unknown tag names none."""
    tags = [tag.strip() for tag in if_match.split(",") if tag.strip()]
    if "*" in tags:
        return None
    versions: list[Timestamp] = []
    for tag in tags:
        if len(tag) > 2 and tag[0] == tag[-1] == '"':
            stamp = Timestamp()
            try:
                stamp.FromJsonString(tag[1:-1])
            except ValueError:
                continue
            versions.append(stamp)
    return versions


def matched_version(if_match: str, current: Timestamp | None = None) -> Timestamp | None:
    """The update_time If-Match names, None for ``*`` (any version). With several tags the one
    equal to ``current`` (the caller reads it), as only the current version can match."""
    versions = listed_versions(if_match)
    if versions is None:
        return None
    if current is not None and current in versions:
        return current
    if len(versions) != 1:
        raise Changed(current)
    return versions[0]


class ReusedKey(HTTPException):
    """The service refused the request id made of an Idempotency-Key: it names another request."""

    def __init__(self) -> None:
        super().__init__(
            400,
            "Idempotency-Key: already used (within the hour) for another request; send a new "
            "key with each request",
        )


def _reused_key(error: grpc.aio.AioRpcError) -> None:
    """400 naming the header when the service refused the request id made from it (only an
    operator's key can be reused: the gateway's own ids are fresh UUIDs)."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in field_violations(error):
        raise ReusedKey() from None


def _conflict(error: grpc.aio.AioRpcError) -> Timestamp | None:
    """The business's current update_time if ``error`` is the service's update-time conflict."""
    _reused_key(error)
    info = error_info(error) if error.code() == grpc.StatusCode.ABORTED else None
    if info is None or info.reason != "UPDATE_TIME_CONFLICT":
        raise error
    current = Timestamp()
    current.FromJsonString(info.metadata["current_update_time"])
    return current


SECRET_FIELDS = {
    "access_token": business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
    "twilio_account_sid": business_pb2.CHANNEL_SECRET_TWILIO_ACCOUNT_SID,
    "twilio_auth_token": business_pb2.CHANNEL_SECRET_TWILIO_AUTH_TOKEN,
    "webhook_app_secret": business_pb2.CHANNEL_SECRET_WEBHOOK_APP_SECRET,
}
PATCH_FIELDS = {
    "name": "name",
    "subdomain": "subdomain",
    "whatsapp_phone_number_ids": "whatsapp_phone_number_ids",
    "whatsapp_numbers": "whatsapp_numbers",
    "timezone": "time_zone",
    "locale": "locale",
    "active": "active",
    "whatsapp_enabled": "whatsapp_enabled",
}


class AdminAudit:
    """Who did what: each admin request that may change something is one ``admin request``
    line (method, route, status, client, path parameters with the user's number masked), and a
    refused key (401, 403) on any method an ``admin request refused`` warning, so that guessing
    shows. Never a header or a body: no key, no secret. ASGI middleware, so that the status is
    the one answered, after the exception handlers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/admin/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _audit(scope, status)


def _audit(scope: Scope, status: int) -> None:
    route = scope.get("route")
    method = scope["method"]
    refused = status in (401, 403)
    if not isinstance(route, APIRoute) or not (refused or method in CHANGES):
        return
    params = {
        name: mask_phone(value) if name == "user_id" else value[:128]
        for name, value in scope.get("path_params", {}).items()
    }
    client = scope.get("client")
    fields = {
        "method": method,
        "route": route.path,
        "status": status,
        "client": client[0] if client else "",
        **params,
    }
    if "user_id" in fields:
        fields["user"] = fields.pop("user_id")
    if refused:
        log.warning("admin request refused", **fields)
    else:
        log.info("admin request", **fields)


def _time(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime().replace(tzinfo=None) if ts.seconds or ts.nanos else None


def business_out(b: business_pb2.Business) -> BusinessOut:
    return BusinessOut(
        id=b.id,
        name=b.name,
        subdomain=b.subdomain,
        whatsapp_phone_number_ids=list(b.whatsapp_phone_number_ids),
        whatsapp_numbers=list(b.whatsapp_numbers),
        timezone=b.time_zone,
        locale=b.locale,
        active=b.active,
        whatsapp_enabled=b.whatsapp_enabled,
        has_access_token=b.has_access_token,
        has_twilio_credentials=b.has_twilio_credentials,
        has_webhook_app_secret=b.has_webhook_app_secret,
        access_token_status=TOKEN_STATUS.get(b.access_token_status, "unknown"),
        created_at=_time(b.create_time),
        updated_at=_time(b.update_time),
    )


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def build_router(runtime: Runtime) -> APIRouter:
    settings = runtime.settings

    # Security schemes rather than plain headers, so that the OpenAPI document says how to
    # authenticate (its `securitySchemes`; /docs's Authorize button) and generated clients
    # send the key on every call.
    async def require_key(
        x_api_key: Annotated[str | None, Security(KEY_HEADER)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> None:
        expected = settings.api_key
        if not expected:
            raise HTTPException(404, "the admin API is off (no API_KEY configured)")
        given = (x_api_key or "").strip()  # an empty X-API-Key must not hide a Bearer key
        if not given and bearer:
            given = bearer.credentials.strip()
        if not given:
            raise HTTPException(
                401,
                "an API key is required (X-API-Key or Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(403, "wrong API key")

    async def require_json(request: Request) -> None:
        # FastAPI reads a body of another type (or of none) as bytes and answers 422 "Input
        # should be a valid dictionary", which is what `curl -d` without a JSON Content-Type
        # gets: say what is wrong instead.
        headers = request.headers
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if request.method in {"POST", "PUT", "PATCH"} and has_body:
            kind = headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "application/json" and not kind.endswith("+json"):
                raise HTTPException(415, "the body must be JSON (Content-Type: application/json)")

    auth_responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "No API key."},
        403: {"description": "Wrong API key."},
        404: {"description": "Not found, or the admin API is off."},
        415: {"description": "A body that is not JSON."},
        503: {
            "model": Problem,
            "description": "A service or Redis is unavailable: retry after `Retry-After`.",
        },
    }
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(require_key), Depends(require_json)],
        responses=auth_responses,
    )

    def business() -> Any:
        """The stub of the running runtime (channels are made when the app starts)."""
        return runtime.clients.business

    @router.post(
        "/businesses",
        status_code=201,
        summary="Create a business.",
        responses=REFUSED | CONFLICT,
        description=(
            "Send an `Idempotency-Key` header (a UUID) to make the request safe to send again "
            "after a lost answer: a request with the key of one that created a business answers "
            "that business (201) instead of a 409 on its own subdomain."
        ),
    )
    async def create_business(
        body: BusinessIn,
        idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    ) -> BusinessOut:
        once = request_id(idempotency_key)
        credentials = business_pb2.ChannelCredentials(
            whatsapp_access_token=body.access_token or "",
            twilio_account_sid=body.twilio_account_sid or "",
            twilio_auth_token=body.twilio_auth_token or "",
            webhook_app_secret=body.webhook_app_secret or "",
        )
        request = business_pb2.CreateBusinessRequest(
            business=business_pb2.Business(
                name=body.name,
                subdomain=body.subdomain,
                whatsapp_phone_number_ids=body.whatsapp_phone_number_ids,
                whatsapp_numbers=body.whatsapp_numbers,
                time_zone=body.timezone,
                locale=body.locale,
                active=body.active,
                whatsapp_enabled=body.whatsapp_enabled,
            ),
            credentials=credentials,
            # Without a key of the caller's, one for this request: the channel's own retry
            # (UNAVAILABLE after the business service made it) then finds the business
            # instead of answering 409 for its subdomain.
            idempotency_key=idempotency_key_of(idempotency_key) or once.hex,
            request_id=str(once),
        )
        try:
            response = await business().CreateBusiness(request)
        except grpc.aio.AioRpcError as error:
            _reused_key(error)
            raise
        return business_out(response.business)

    @router.get("/businesses", summary="List businesses, one page at a time.", responses=REFUSED)
    async def list_businesses(
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
        page_token: Annotated[str, Query(max_length=500)] = "",
        include_inactive: bool = False,
    ) -> BusinessList:
        response = await business().ListBusinesses(
            business_pb2.ListBusinessesRequest(
                page_size=page_size, page_token=page_token, include_inactive=include_inactive
            )
        )
        return BusinessList(
            businesses=[business_out(b) for b in response.businesses],
            next_page_token=response.next_page_token,
        )

    async def expected_version(business_id: str, if_match: str | None) -> Timestamp | None:
        """The update_time a write must find (None: unconditional), or Changed."""
        if if_match is None:
            return None
        if "," not in if_match:
            return matched_version(if_match)
        return matched_version(if_match, (await found_business(business_id)).update_time)

    async def update_business(
        request: business_pb2.UpdateBusinessRequest, expected: Timestamp | None
    ) -> business_pb2.Business:
        """``request`` at version ``expected`` (None: any); Changed when the service refuses it
        as changed meanwhile."""
        if expected is not None:
            request.expected_update_time.CopyFrom(expected)
        try:
            answer: business_pb2.UpdateBusinessResponse = await business().UpdateBusiness(request)
        except grpc.aio.AioRpcError as error:
            raise Changed(_conflict(error)) from None
        return answer.business

    async def conditional(
        business_id: str,
        if_match: str | None,
        keyed: bool,
        write: Callable[[Timestamp | None], Awaitable[business_pb2.Business]],
    ) -> business_pb2.Business:
        """``write(expected)`` at the version If-Match names, or Changed. A request sent again
        with its Idempotency-Key and several versions finds the business off all of them when
        its first send was applied: that send was made at one of them, its request id with that
        version is the one the service remembers, so each listed version is sent in turn. The
        others are refused as the key's other requests; a version of no remembered request is
        stale, a conflict (412), and nothing is written: the precondition holds as before."""
        try:
            expected = await expected_version(business_id, if_match)
        except Changed:
            versions = listed_versions(if_match) if keyed and if_match is not None else None
            if not versions or len(versions) < 2:
                raise
            for version in versions:
                try:
                    return await write(version)
                except ReusedKey:
                    continue  # the key's request at another version: not this one
            raise ReusedKey() from None  # the key's request was another one at every version
        return await write(expected)

    @router.get(
        "/businesses/{business_id}",
        summary="One business; its `ETag` is its version, for `If-Match` on changes.",
        responses=REFUSED,
    )
    async def get_business(business_id: BusinessId, response: Response) -> BusinessOut:
        found = await business().GetBusiness(business_pb2.GetBusinessRequest(id=business_id))
        response.headers["ETag"] = etag(found.business.update_time)
        return business_out(found.business)

    @router.patch(
        "/businesses/{business_id}",
        summary="Change some fields of a business (only at the `If-Match` version, if sent).",
        response_model=BusinessOut,
        responses=REFUSED | CONFLICT | CHANGED,
    )
    async def patch_business(
        business_id: BusinessId,
        body: BusinessPatch,
        response: Response,
        if_match: Annotated[str | None, IF_MATCH] = None,
        idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    ) -> BusinessOut | JSONResponse:
        once = request_id(idempotency_key, business_id)
        try:
            return await patch(business_id, body, response, if_match, idempotency_key, once)
        except Changed as changed:
            return changed.response()

    async def patch(
        business_id: str,
        body: BusinessPatch,
        response: Response,
        if_match: str | None,
        idempotency_key: str | None,
        once: uuid.UUID,
    ) -> BusinessOut:
        given = body.model_dump(exclude_unset=True)
        given = {k: v for k, v in given.items() if v is not None}
        if not given:
            raise HTTPException(400, "nothing to change")
        proto = business_pb2.Business(id=business_id)
        for name, value in given.items():
            field = PATCH_FIELDS[name]
            if isinstance(value, list):
                getattr(proto, field).extend(value)
            else:
                setattr(proto, field, value)
        request = business_pb2.UpdateBusinessRequest(
            business=proto,
            update_mask=field_mask_pb2.FieldMask(paths=[PATCH_FIELDS[n] for n in given]),
            request_id=str(once),
        )

        async def update(expected: Timestamp | None) -> business_pb2.Business:
            return await update_business(request, expected)

        updated = await conditional(business_id, if_match, idempotency_key is not None, update)
        response.headers["ETag"] = etag(updated.update_time)
        return business_out(updated)

    @router.delete(
        "/businesses/{business_id}",
        summary="Deactivate a business (only at the `If-Match` version, if sent).",
        response_model=BusinessOut,
        responses=REFUSED | CHANGED,
    )
    async def delete_business(
        business_id: BusinessId,
        response: Response,
        if_match: Annotated[str | None, IF_MATCH] = None,
        idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    ) -> BusinessOut | JSONResponse:
        once = str(request_id(idempotency_key, business_id))

        async def deactivate(expected: Timestamp | None) -> business_pb2.Business:
            if expected is None:
                try:
                    deactivated: business_pb2.DeactivateBusinessResponse
                    deactivated = await business().DeactivateBusiness(
                        business_pb2.DeactivateBusinessRequest(id=business_id, request_id=once)
                    )
                except grpc.aio.AioRpcError as error:
                    _reused_key(error)
                    raise
                return deactivated.business
            # DeactivateBusiness is UpdateBusiness(active=false); this one carries the version.
            request = business_pb2.UpdateBusinessRequest(
                business=business_pb2.Business(id=business_id, active=False),
                update_mask=field_mask_pb2.FieldMask(paths=["active"]),
                request_id=once,
            )
            return await update_business(request, expected)

        try:
            stored = await conditional(
                business_id, if_match, idempotency_key is not None, deactivate
            )
        except Changed as changed:
            return changed.response()
        response.headers["ETag"] = etag(stored.update_time)
        return business_out(stored)

    @router.put(
        "/businesses/{business_id}/token",
        summary="Set channel secrets (stored encrypted; an empty string clears one).",
        response_model=BusinessOut,
        responses=REFUSED | CHANGED,
    )
    async def put_token(
        business_id: BusinessId,
        body: TokenIn,
        response: Response,
        if_match: Annotated[str | None, IF_MATCH] = None,
        idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    ) -> BusinessOut | JSONResponse:
        once = request_id(idempotency_key, business_id)
        given = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
        if not given:
            raise HTTPException(400, "give at least one of: " + ", ".join(SECRET_FIELDS))
        # Each secret is a write of its own: check them all before the first, so that a refused
        # one (a token pasted with its newline) does not leave the others written, e.g. a new
        # Twilio SID with the old auth token, a pair Twilio refuses.
        problems = {name: p for name, value in given.items() if (p := secret_problem(value))}
        if problems:
            name, problem = next(iter(problems.items()))
            return JSONResponse(
                {"detail": f"{name}: {problem}", "fields": problems}, status_code=400
            )

        async def put(expected: Timestamp | None) -> business_pb2.Business:
            stored: business_pb2.Business | None = None
            applied: list[str] = []
            for number, (name, value) in enumerate(given.items()):
                request = business_pb2.SetChannelTokenRequest(
                    business_id=business_id,
                    secret=SECRET_FIELDS[name],
                    value=value,
                    # One write per secret, one id each; the first is the request's own, so its
                    # key reused from another request is refused before anything is written.
                    request_id=str(uuid.uuid5(once, name) if number else once),
                )
                if expected is not None:
                    # Each write is one of its own: each expects the version the previous one
                    # made, so a change landing between two of them stops the rest instead of
                    # being overwritten by them.
                    request.expected_update_time.CopyFrom(expected)
                try:
                    stored = (await business().SetChannelToken(request)).business
                except grpc.aio.AioRpcError as error:
                    raise Changed(_conflict(error), applied) from None
                applied.append(name)
                if expected is not None:
                    expected = stored.update_time
            assert stored is not None
            return stored

        try:
            stored = await conditional(business_id, if_match, idempotency_key is not None, put)
        except Changed as changed:
            return changed.response()
        response.headers["ETag"] = etag(stored.update_time)
        return business_out(stored)

    async def found_business(business_id: str) -> business_pb2.Business:
        """The business (404 when there is none). Its ``id`` is the one the workers key
        conversations by: the service takes an id in any case, the session service only one."""
        found: business_pb2.GetBusinessResponse = await business().GetBusiness(
            business_pb2.GetBusinessRequest(id=business_id)
        )
        return found.business

    async def conversation_key(business_id: str, user_id: str) -> session_pb2.ConversationKey:
        return session_pb2.ConversationKey(
            business_id=(await found_business(business_id)).id,
            user_id=user_id,
            role=session_pb2.CONVERSATION_ROLE_CLIENT,
        )

    @router.get(
        "/sessions/{business_id}/{user_id}",
        summary="A user's live conversation.",
        responses=REFUSED,
    )
    async def get_session(business_id: BusinessId, user_id: UserId) -> dict[str, Any]:
        response = await runtime.clients.session.GetConversation(
            session_pb2.GetConversationRequest(key=await conversation_key(business_id, user_id))
        )
        return _dict(response.conversation)

    @router.delete(
        "/sessions/{business_id}/{user_id}",
        summary="End a user's conversation.",
        responses=REFUSED,
    )
    async def delete_session(business_id: BusinessId, user_id: UserId) -> dict[str, bool]:
        response = await runtime.clients.session.EndConversation(
            session_pb2.EndConversationRequest(key=await conversation_key(business_id, user_id))
        )
        return {"ended": response.ended}

    @router.delete(
        "/users/{business_id}/{user_id}",
        summary="Erase everything Parley holds of one user of one business.",
        responses=REFUSED,
        description=(
            "For an erasure request (GDPR art. 17); a phone number with or without its `+` "
            "(or as Twilio's `whatsapp:+…`, or with spaces) erases both ids it has (Cloud API, "
            "Twilio). The user's conversations, their messages still queued, their dead "
            "letters, the sent logs of both, their outbox and their rate-limit windows. Answers "
            "how many of each it deleted (all 0 when none). The dedupe markers stay until "
            "`DEDUPE_TTL_SECONDS` (a digest of a message id, no number or text). A message being "
            "answered at that moment is saved after: erase again once the user has stopped "
            "writing."
        ),
    )
    async def erase_user(business_id: BusinessId, user_id: UserId) -> dict[str, int]:
        found = await found_business(business_id)
        identities = {*found.whatsapp_phone_number_ids, *found.whatsapp_numbers}
        business_id = found.id  # as the workers key it
        # One number is two ids: the Cloud API's wa_id has no "+", Twilio's E.164 number has.
        # Written as Twilio's address ("whatsapp:+…", as its console shows the user) or with
        # spaces, it is the same number, read as the business service reads its own.
        number = re.fullmatch(r"\+?([0-9]+)", normalize_number(user_id))
        users = {number[1], f"+{number[1]}"} if number else {user_id}
        # The queue first: a message of theirs still queued would start a new conversation.
        erased = await runtime.queue.erase_user(users, identities)
        ended = await asyncio.gather(
            *(
                runtime.clients.session.EndConversation(
                    session_pb2.EndConversationRequest(
                        key=session_pb2.ConversationKey(
                            business_id=business_id, user_id=user, role=role
                        )
                    )
                )
                for user in users
                for role in (
                    session_pb2.CONVERSATION_ROLE_CLIENT,
                    session_pb2.CONVERSATION_ROLE_ADMIN,
                )
            )
        )
        erased["conversations"] = sum(response.ended for response in ended)
        erased["outbox"] = sum([await runtime.outbox.erase(business_id, user) for user in users])
        limits = [key for user in users for key in user_keys(business_id, user)]
        erased["rate_limits"] = int(await runtime.redis.delete(*limits))
        log.info("user erased", business_id=business_id, user=mask_phone(user_id), **erased)
        return erased

    @router.get("/circuits", summary="Every circuit breaker of the search providers.")
    async def circuits() -> dict[str, Any]:
        response = await runtime.clients.search.ListCircuitBreakers(
            search_pb2.ListCircuitBreakersRequest()
        )
        return {"circuit_breakers": [_dict(b) for b in response.circuit_breakers]}

    @router.post("/circuit/{name}/reset", summary="Close a breaker; an unknown name is 404.")
    async def reset_circuit(
        name: Annotated[str, Path(min_length=1, max_length=100)],
    ) -> dict[str, Any]:
        response = await runtime.clients.search.ResetCircuitBreaker(
            search_pb2.ResetCircuitBreakerRequest(name=name)
        )
        return {"circuit_breaker": _dict(response.circuit_breaker)}

    @router.post("/cache/warm", summary="Warm the flight search cache (popular routes).")
    async def warm_search(
        days_ahead: Annotated[int, Query(ge=1, le=30)] = 7,
    ) -> dict[str, int]:
        response = await runtime.clients.search.WarmCache(
            search_pb2.WarmCacheRequest(days_ahead=days_ahead), timeout=WARM_CACHE_SECONDS
        )
        return {
            "warmed": response.warmed,
            "failed": response.failed,
            "not_started": response.not_started,
        }

    @router.post("/cache/warmup", summary="Load active businesses into the lookup cache.")
    async def warm_business(
        limit: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> dict[str, int]:
        response = await business().WarmCache(
            business_pb2.WarmCacheRequest(limit=limit), timeout=30
        )
        return {"loaded": response.loaded}

    @router.get("/outbox", summary="Replies stored instead of sent (OUTBOX_ONLY=true).")
    async def outbox(
        user_id: Annotated[str, Query(min_length=1, max_length=128)],
        after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
        business_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    ) -> Outbox:
        messages, cursor = await runtime.outbox.read(user_id, after, business_id)
        return Outbox(messages=[OutboxMessage(**m) for m in messages], next=cursor)

    @router.get("/dead-letters", summary="Dead letters, oldest first, with their last error.")
    async def dead_letters(
        after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DeadLetters:
        items = await runtime.queue.dead_letters(after, limit)
        out = []
        for dead_id, record in items:
            message, raw = None, record.get("raw")
            if "orig_m" in record:
                try:
                    message = json.loads(record["orig_m"])
                except ValueError:
                    message = None
                # A corrupt entry's (another version's, one written by hand) may be any JSON:
                # shown as text, it must not make the whole list fail.
                if not isinstance(message, dict):
                    message, raw = None, raw or record["orig_m"][:2000]
            out.append(
                DeadLetterOut(
                    id=dead_id,
                    reason=record.get("reason", ""),
                    error=record.get("error", ""),
                    time=record.get("time", ""),
                    request_id=record.get("orig_rid", ""),
                    message=message,
                    raw=raw,
                )
            )
        return DeadLetters(dead_letters=out, next=items[-1][0] if items else (after or "0-0"))

    @router.post(
        "/dead-letters/replay",
        summary="Put every dead letter of one reason back on the queue, a page at a time.",
    )
    async def replay_reason(
        reason: Annotated[str, Query(pattern=r"^[a-z_]{1,64}$")],
        before: Annotated[
            datetime | None,
            Query(description="Only records dead-lettered before this time (UTC if no zone)."),
        ] = None,
        cursor: Annotated[
            str | None,
            Query(pattern=BULK_CURSOR, description="The `next` of the call before, to go on."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=DEAD_MAXLEN)] = DEAD_MAXLEN,
    ) -> BulkReplay:
        before_ms = None
        if before is not None:
            zoned = before if before.tzinfo else before.replace(tzinfo=UTC)
            before_ms = max(0, int(zoned.timestamp() * 1000))
        after, until = cursor.split("_") if cursor else (None, None)
        replayed, skipped, onward = await runtime.queue.replay_reason(
            reason,
            before_ms=before_ms,
            cursor=(after, until) if after and until else None,
            limit=limit,
        )
        log.info("dead letters replayed", reason=reason, replayed=replayed, skipped=skipped)
        return BulkReplay(
            replayed=replayed, skipped=skipped, next="_".join(onward) if onward else None
        )

    @router.post(
        "/dead-letters/{dead_id}/replay",
        summary="Put a dead letter's message back on the queue.",
        responses={409: {"description": "The record holds no message to replay."}},
    )
    async def replay(
        dead_id: Annotated[str, Path(max_length=50)],
    ) -> dict[str, str]:
        if not re.match(STREAM_ID, dead_id):
            raise HTTPException(404, "no such dead letter")
        try:
            entry_id = await runtime.queue.replay(dead_id)
        except ValueError as error:
            raise HTTPException(409, str(error)) from None
        if entry_id is None:
            raise HTTPException(404, "no such dead letter (or it was replayed)")
        return {"replayed": dead_id, "entry_id": entry_id}

    @router.delete(
        "/dead-letters",
        summary="Delete every dead letter of one reason (none of them to be replayed).",
    )
    async def discard_reason(
        reason: Annotated[str, Query(pattern=r"^[a-z_]{1,64}$")],
    ) -> dict[str, int]:
        deleted = await runtime.queue.discard_reason(reason)
        log.info("dead letters deleted", reason=reason, deleted=deleted)
        return {"deleted": deleted}

    @router.delete(
        "/dead-letters/{dead_id}",
        summary="Delete a dead letter that is not to be replayed.",
        responses={404: {"description": "No such dead letter (or it was replayed)."}},
    )
    async def discard(
        dead_id: Annotated[str, Path(max_length=50)],
    ) -> dict[str, str]:
        if not re.match(STREAM_ID, dead_id) or not await runtime.queue.discard(dead_id):
            raise HTTPException(404, "no such dead letter (or it was replayed)")
        log.info("dead letter deleted", dead_letter=dead_id)
        return {"deleted": dead_id}

    return router
