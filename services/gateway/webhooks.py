"""Webhook endpoints: verify, parse, dedupe + enqueue, answer. Nothing is processed here.

The answer is 200 only once every message of the webhook is in Redis; if Redis cannot take them
the answer is 503 so the provider retries. Order of checks: size (413), signature (401 missing,
403 wrong), syntax (400), then usefulness (200 + dead letter for what we cannot use).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from parley.business.v1 import business_pb2
from services.common.clients import request_id_var
from services.common.outage import OutageLog
from services.common.redact import mask_message_id, mask_phone
from services.gateway import metrics
from services.gateway.channels import cloud_api, twilio
from services.gateway.runtime import Runtime

log = structlog.get_logger()

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A body the global app secret does not verify is checked against the own app secret of every
# business it names; Meta signs one delivery with one app's secret, so a few ids at most.
MAX_SIGNING_BUSINESSES = 20
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, float, str], Awaitable[Response]]  # request, received, request id

CLOUD_API_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "A WhatsApp Cloud API webhook (object, entry[].changes[].value)",
                    "properties": {
                        "object": {"type": "string"},
                        "entry": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "X-Hub-Signature-256",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "sha256=<hex HMAC-SHA256 of the raw body with the app secret>",
        }
    ],
    "responses": {
        "200": {"description": "Every message is queued (or was already)."},
        "400": {"description": "Not JSON, or not an object."},
        "401": {"description": "Signature missing."},
        "403": {"description": "Signature wrong."},
        "413": {"description": "Body over MAX_BODY_BYTES."},
        "415": {"description": "A compressed body (a Content-Encoding but identity)."},
        "503": {"description": "The queue cannot take the messages now; retry."},
    },
}
# What either Twilio webhook (POST or GET) answers once the message is queued.
TWIML_QUEUED = {
    "description": "Queued; an empty TwiML response.",
    "content": {"text/xml": {"schema": {"type": "string"}}},
}
TWILIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "MessageSid": {"type": "string"},
                        "From": {"type": "string"},
                        "To": {"type": "string"},
                        "Body": {"type": "string"},
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "X-Twilio-Signature",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "base64 HMAC-SHA1 of URL + sorted parameters with the auth token",
        }
    ],
    "responses": {
        "200": TWIML_QUEUED,
        "400": {"description": "Not a form."},
        "401": {"description": "Signature missing."},
        "403": {"description": "Signature wrong."},
        "413": {"description": "Body over MAX_BODY_BYTES."},
        "415": {"description": "A compressed body (a Content-Encoding but identity)."},
        "503": {"description": "The queue cannot take the message now; retry."},
    },
}

# A webhook set to HTTP GET in the Twilio console: the same parameters, in the query string, and
# the signature of the URL with that query (no parameters appended).
TWILIO_QUERY = {
    "parameters": [
        *(
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in ("MessageSid", "From", "To", "Body")
        ),
        {
            "name": "X-Twilio-Signature",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "base64 HMAC-SHA1 of the URL with its query, with the auth token",
        },
    ],
    "responses": {
        "200": TWIML_QUEUED,
        "400": {"description": "The query string is not a form."},
        "401": {"description": "Signature missing."},
        "403": {"description": "Signature wrong."},
        "503": {"description": "The queue cannot take the message now; retry."},
    },
}


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else uuid.uuid4().hex


def _reject(channel: str, status: int, outcome: str, detail: str) -> JSONResponse:
    metrics.child(metrics.WEBHOOKS, channel, outcome).inc()
    return JSONResponse({"detail": detail}, status_code=status)


def _cut_short(request: Request, channel: str, rid: str) -> Response:
    """The sender closed the connection before the body it announced ended: nothing is queued
    and nobody reads the answer. Counted (``incomplete``) and logged, not an error: any client
    can do it, and a proxy or provider timing out does it too."""
    metrics.child(metrics.WEBHOOKS, channel, "incomplete").inc()
    log.info("webhook body cut short", request_id=rid, channel=channel, path=request.url.path)
    return Response(status_code=400)


async def _acknowledge(request: Request, channel: str, handle: Handler) -> Response:
    """``handle(request, received, request_id)``: a webhook's answer, its time observed
    (``ACK_SECONDS``) unless the sender left before its body ended and no answer goes out."""
    started = time.perf_counter()
    received = time.time()
    rid = request_id(request)
    request_id_var.set(rid)  # for the gRPC calls a signature check may make
    answered = True
    try:
        return await handle(request, received, rid)
    except ClientDisconnect:
        answered = False  # no answer to time
        return _cut_short(request, channel, rid)
    finally:
        if answered:
            metrics.child(metrics.ACK_SECONDS, channel).observe(time.perf_counter() - started)


async def _body(request: Request, channel: str) -> bytes:
    """The webhook's body; one over MAX_BODY_BYTES is counted (``too_large``) before Starlette's
    413 goes out: nothing else counts or logs it, and a limit set below what the provider sends
    would lose its webhooks unseen.

    A compressed one is refused (415, ``malformed``) unread: neither provider compresses, and
    the signature is checked on the bytes as they come, so a body compressed on the way
    (a relay) would otherwise be refused as mis-signed, which says "rotated secret"."""
    encoding = request.headers.get("content-encoding", "").strip()
    if encoding and encoding.lower() != "identity":
        metrics.child(metrics.WEBHOOKS, channel, "malformed").inc()
        detail = f"Content-Encoding {encoding[:40]} is not accepted: send the body uncompressed"
        raise HTTPException(415, detail)
    try:
        return await request.body()
    except HTTPException as error:
        if error.status_code == 413:
            metrics.child(metrics.WEBHOOKS, channel, "too_large").inc()
        raise


class Unavailable(Exception):
    """A dependency needed to verify or queue is down: 503, the provider retries."""


def build_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["webhooks"])
    settings = runtime.settings
    # Every webhook fails while Redis is down (the providers retry): one error line per outage,
    # each refusal counted in gateway_webhooks_total{outcome="unavailable"}.
    queue_outage = OutageLog(log, "queue reachable again: webhooks accepted", level="error")

    async def verify(request: Request) -> Response:
        query = request.query_params
        expected = settings.whatsapp_verify_token
        given = query.get("hub.verify_token", "")
        if (
            expected
            and query.get("hub.mode") == "subscribe"
            and _same(given, expected)
            and "hub.challenge" in query
        ):
            return PlainTextResponse(query["hub.challenge"])
        return JSONResponse(
            {"detail": "hub.mode must be subscribe and hub.verify_token the verify token"},
            status_code=403,
        )

    for path in ("/webhooks/whatsapp", "/whatsapp_response"):  # Meta checks its callback URL
        router.add_api_route(
            path,
            verify,
            methods=["GET"],
            summary="Cloud API subscription check: echo hub.challenge when the token matches.",
            response_class=PlainTextResponse,
            openapi_extra={
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("hub.mode", "hub.verify_token", "hub.challenge")
                ],
                "responses": {"403": {"description": "Wrong mode or token."}},
            },
        )

    async def cloud_webhook(request: Request) -> Response:
        return await _acknowledge(request, "cloud_api", _cloud)

    async def _cloud(request: Request, received: float, rid: str) -> Response:
        body = await _body(request, "cloud_api")
        header = request.headers.get(cloud_api.SIGNATURE_HEADER)
        payload: Any = None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        try:
            verdict = await _verify_cloud(body, header, payload)
        except Unavailable:
            return _reject("cloud_api", 503, "unavailable", "cannot verify the signature now")
        if verdict is not None:
            return verdict
        if payload is None or not isinstance(payload, dict):
            return _reject("cloud_api", 400, "malformed", "the body must be a JSON object")
        parsed = cloud_api.parse(payload)
        try:
            ids = await runtime.queue.enqueue(parsed.messages, rid, received)
            # After the enqueue: a 503 from it would have the provider retry, and record them again.
            for item in parsed.unusable:
                await runtime.queue.dead_letter(
                    "unusable_payload", item.reason, fields={"rid": rid}, raw=item.item
                )
                metrics.DEAD_LETTERS.labels("unusable_payload").inc()
        except RedisError as error:
            queue_outage.failed("queue unavailable; answering 503", error, request_id=rid)
            return _reject("cloud_api", 503, "unavailable", "the queue is unavailable; retry")
        queue_outage.worked()
        # Counted once the webhook is taken: one answered 503 comes again, statuses and all;
        # and once per status: Meta delivers a webhook again when our 200 is lost or late.
        firsts = await runtime.queue.first_statuses(
            "cloud_api", [(status.message_id, status.status) for status in parsed.statuses]
        )
        for status, first in zip(parsed.statuses, firsts, strict=True):
            if not first:
                continue
            metrics.STATUSES.labels("cloud_api", metrics.status_label(status.status)).inc()
            log.info(
                "message status",
                request_id=rid,
                status=status.status,
                phone_number_id=status.phone_number_id,  # the business's number
                # Meta's ids hold the user's number (base64): masked as the recipient is.
                message_id=mask_message_id(status.message_id),
                recipient=mask_phone(status.recipient_id),
                errors=list(status.error_codes),
            )
        queued = sum(1 for i in ids if i)
        duplicates = len(ids) - queued
        if duplicates:
            metrics.child(metrics.DUPLICATES, "cloud_api").inc(duplicates)
        metrics.child(metrics.MESSAGES_ENQUEUED, "cloud_api").inc(queued)
        outcome = (
            "accepted"
            if queued
            else "duplicate"
            if duplicates
            else "status"
            if parsed.statuses
            else "group_message"
            if parsed.group_messages
            else "unusable"
        )
        metrics.child(metrics.WEBHOOKS, "cloud_api", outcome).inc()
        if parsed.messages or parsed.unusable or parsed.group_messages:
            log.info(
                "webhook accepted",
                request_id=rid,
                channel="cloud_api",
                queued=queued,
                duplicates=duplicates,
                unusable=len(parsed.unusable),
                statuses=len(parsed.statuses),
                group_messages=parsed.group_messages,
            )
        return Response(
            orjson.dumps({"queued": queued, "duplicates": duplicates, "request_id": rid}),
            media_type="application/json",
            headers={"x-request-id": rid},
        )

    async def _verify_cloud(body: bytes, header: str | None, payload: Any) -> Response | None:
        secret = settings.whatsapp_app_secret
        if header and secret and cloud_api.signature_matches(body, header, secret):
            return None
        if header is None and secret:
            return _reject("cloud_api", 401, "unsigned", "X-Hub-Signature-256 is missing")
        # Otherwise every business the body names must have signed it with its own app secret:
        # one business's secret never vouches for another's numbers.
        ids = cloud_api.phone_number_ids(payload)
        if len(ids) > MAX_SIGNING_BUSINESSES:
            return _reject(
                "cloud_api",
                403,
                "bad_signature",
                f"at most {MAX_SIGNING_BUSINESSES} phone number ids are checked against "
                "businesses' own app secrets",
            )
        if not secret:
            # No platform secret (never in production): a body is taken unsigned unless a
            # business it names has a secret of its own, so each of them is looked up.
            own = await asyncio.gather(*(_cloud_app_secret(pnid) for pnid in ids))
            if not any(own):
                return None  # no secret applies: accepted, warned at start-up
            if header is None:
                return _reject("cloud_api", 401, "unsigned", "X-Hub-Signature-256 is missing")
            signed = all(
                s and cloud_api.signature_matches(body, header, s) for s in dict.fromkeys(own)
            )
        else:
            signed = header is not None and await _each_signed(body, header, ids)
        if ids and signed:
            return None
        return _reject("cloud_api", 403, "bad_signature", "X-Hub-Signature-256 does not match")

    async def _each_signed(body: bytes, header: str, ids: list[str]) -> bool:
        """Whether each business has an app secret of its own that verifies the body. Looked
        up one at a time, up to the first that does not: the body is anyone's until then, and
        one naming 20 unknown numbers cost 20 lookups at once (10 ms of the business service's
        CPU per forged request) where the first said it is refused."""
        verified: set[str] = set()
        for pnid in ids:
            own = await _cloud_app_secret(pnid)
            if not own or (
                own not in verified and not cloud_api.signature_matches(body, header, own)
            ):
                return False
            verified.add(own)
        return True

    async def _cloud_app_secret(phone_number_id: str) -> str:
        credentials = await _business_secret(
            business_pb2.LookupBusinessRequest(
                phone_number_id=phone_number_id, include_credentials=True, include_inactive=True
            )
        )
        return credentials.webhook_app_secret

    async def _business_secret(
        request: business_pb2.LookupBusinessRequest,
    ) -> business_pb2.ChannelCredentials:
        """The credentials of the business that owns the identity. The requests ask for one that
        is inactive or has WhatsApp off too (``include_inactive``): its users' messages are
        verified with its own secret and queued, and the worker dead-letters them, as it does
        those signed with the global secret; refused, they were lost (Twilio does not retry a
        4xx) with nothing to replay once the business is back."""
        try:
            response = await runtime.clients.business.LookupBusiness(request)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return business_pb2.ChannelCredentials()
            raise Unavailable(error.code().name) from None
        return response.credentials

    for path in ("/webhooks/whatsapp", "/whatsapp_response"):
        router.add_api_route(
            path,
            cloud_webhook,
            methods=["POST"],
            summary="WhatsApp Cloud API webhook (JSON, X-Hub-Signature-256).",
            openapi_extra=CLOUD_API_BODY,
        )

    async def twilio_webhook(request: Request) -> Response:
        return await _acknowledge(request, "twilio", _twilio)

    async def _twilio(request: Request, received: float, rid: str) -> Response:
        # A number's webhook may be set to HTTP GET: the parameters come in the query string,
        # and Twilio signs the URL (query and all) with nothing appended. The query is in the
        # request's head, bounded at 64 KiB (431), far below MAX_BODY_BYTES.
        by_post = request.method == "POST"
        form = await _body(request, "twilio") if by_post else request.scope["query_string"]
        header = request.headers.get(twilio.SIGNATURE_HEADER)
        try:
            params = twilio.parse_form(form)
        except twilio.MalformedForm:
            params = None
        try:
            verdict = await _verify_twilio(request, params, header, by_post)
        except Unavailable:
            return _reject("twilio", 503, "unavailable", "cannot verify the signature now")
        if verdict is not None:
            return verdict
        if params is None:
            where = "body" if by_post else "query string"
            return _reject(
                "twilio",
                400,
                "malformed",
                f"the {where} must be form-encoded, with at most {twilio.MAX_FORM_FIELDS} fields",
            )
        if request.method == "HEAD":
            # The GET's answer, without its effects (RFC 9110): nothing queued, marked seen or
            # dead-lettered, so the GET that follows is the message's one delivery.
            return _twiml(rid)
        try:
            try:
                item = twilio.parse(params)
            except ValueError as error:
                await runtime.queue.dead_letter(
                    "unusable_payload", str(error), fields={"rid": rid}, raw=dict(params)
                )
                metrics.DEAD_LETTERS.labels("unusable_payload").inc()
                metrics.WEBHOOKS.labels("twilio", "unusable").inc()
                return _twiml(rid)
            if isinstance(item, twilio.Status):
                metrics.WEBHOOKS.labels("twilio", "status").inc()
                # Once per status: Twilio retries a callback whose answer it did not get.
                (first,) = await runtime.queue.first_statuses(
                    "twilio", [(item.message_sid, item.status)]
                )
                if not first:
                    return _twiml(rid)
                metrics.STATUSES.labels("twilio", metrics.status_label(item.status)).inc()
                # Twilio reports most WhatsApp delivery failures only here (63016: outside the
                # 24-hour window): the code says why a user had no answer.
                log.info(
                    "message status",
                    request_id=rid,
                    status=item.status,
                    business_number=mask_phone(twilio.business_number(params)),
                    message_id=item.message_sid,
                    recipient=mask_phone(item.recipient),
                    error_code=item.error_code,
                )
                return _twiml(rid)
            if isinstance(item, twilio.OtherChannel):
                # An SMS to the number: a reply would go to the sender on WhatsApp, a chat they
                # did not write in (or be refused there, 63016, after a search was spent).
                metrics.WEBHOOKS.labels("twilio", "not_whatsapp").inc()
                log.info(
                    "webhook not for WhatsApp",
                    request_id=rid,
                    channel="twilio",
                    came_by=item.channel,
                    message_id=item.message_sid,
                )
                return _twiml(rid)
            ids = await runtime.queue.enqueue([item], rid, received)
        except RedisError as error:
            queue_outage.failed("queue unavailable; answering 503", error, request_id=rid)
            return _reject("twilio", 503, "unavailable", "the queue is unavailable; retry")
        queue_outage.worked()
        if ids[0]:
            metrics.MESSAGES_ENQUEUED.labels("twilio").inc()
            metrics.WEBHOOKS.labels("twilio", "accepted").inc()
            log.info(
                "webhook accepted", request_id=rid, channel="twilio", user=mask_phone(item.user_id)
            )
        else:
            metrics.DUPLICATES.labels("twilio").inc()
            metrics.WEBHOOKS.labels("twilio", "duplicate").inc()
        return _twiml(rid)

    async def _verify_twilio(
        request: Request, params: list[tuple[str, str]] | None, header: str | None, by_post: bool
    ) -> Response | None:
        token = settings.twilio_auth_token
        urls = twilio.public_urls(
            settings.public_base_url,
            request.url.path,
            request.url.query,
            str(request.url),
            request.headers,
        )

        def signed_with(secret: str | None) -> bool:
            if not (header and secret and params is not None):
                return False
            signed = params if by_post else []  # a GET's are in the URL already
            return any(twilio.signature_matches(url, signed, header, secret) for url in urls)

        if signed_with(token):
            return None
        if header is None and token:
            return _reject("twilio", 401, "unsigned", "X-Twilio-Signature is missing")
        number = twilio.business_number(params or [])
        own = business_pb2.ChannelCredentials()
        if number:
            own = await _business_secret(
                business_pb2.LookupBusinessRequest(
                    whatsapp_number=number, include_credentials=True, include_inactive=True
                )
            )
        business_token = own.twilio_auth_token
        if not token and not business_token:
            if settings.is_production:
                # Unsigned messages would reach a business's bot and spend its rate limit.
                return _reject(
                    "twilio", 403, "no_secret", "no Twilio auth token is set for this number"
                )
            return None  # nothing to verify with (outside production): warned at start-up
        if header is None:
            return _reject("twilio", 401, "unsigned", "X-Twilio-Signature is missing")
        if signed_with(business_token):
            return None
        if own.twilio_account_sid and not business_token:
            # Its replies go out with the platform's credentials, but Twilio signs a
            # subaccount's webhooks with the subaccount's own auth token, which only it has.
            return _reject(
                "twilio",
                403,
                "bad_signature",
                "X-Twilio-Signature does not match: the business has a Twilio account SID and "
                "no auth token, and Twilio signs a subaccount's webhooks with its own auth token; "
                "store it (PUT /admin/businesses/{id}/token, twilio_auth_token)",
            )
        return _reject("twilio", 403, "bad_signature", "X-Twilio-Signature does not match")

    for path in ("/webhooks/twilio", "/whatsapp/webhook"):
        router.add_api_route(
            path,
            twilio_webhook,
            methods=["POST"],
            summary="Twilio WhatsApp webhook (form, X-Twilio-Signature); answers empty TwiML.",
            openapi_extra=TWILIO_BODY,
        )
        router.add_api_route(
            path,
            twilio_webhook,
            methods=["GET"],
            summary="Twilio WhatsApp webhook set to HTTP GET (parameters in the query string).",
            openapi_extra=TWILIO_QUERY,
        )
    return router


def _twiml(rid: str) -> Response:
    return Response(TWIML_EMPTY, media_type="text/xml", headers={"x-request-id": rid})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def plain_routes(router: APIRouter) -> list[Route]:
    """The router's webhooks again, as plain Starlette routes to serve ahead of FastAPI's.

    The endpoints take the raw ``Request`` and return a ``Response``: FastAPI's per-request route
    machinery (dependency solving, exit stacks, the included router's layers) has nothing to do
    for them, yet it cost ~70 of ~200 µs of CPU per webhook. The FastAPI routes stay registered,
    so the OpenAPI document still describes them; the same functions answer either way.

    One route per path, with every method the path takes (a GET also answers HEAD): a route
    answers 405 for a method it lacks, naming its own methods in ``Allow``, before FastAPI's
    route of the same path is looked at.

    Each path also answers with a trailing slash, the same way: Starlette would redirect it
    (307), and neither Meta nor Twilio follows a redirect, so a callback URL registered with
    the slash lost every webhook. (A Twilio signature covers the path as sent, slash and all.)
    """
    endpoints: dict[str, dict[str, Endpoint]] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            for method in route.methods or ():
                endpoints.setdefault(route.path, {})[method] = route.endpoint
    return [
        Route(served, _by_method(by_method), methods=list(by_method))
        for path, by_method in endpoints.items()
        for served in (path, path + "/")
    ]


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    if len(set(endpoints.values())) == 1:  # the Twilio paths: one function for every method
        return next(iter(endpoints.values()))
    if "GET" in endpoints:
        endpoints = {**endpoints, "HEAD": endpoints["GET"]}  # uvicorn writes no body for HEAD

    async def endpoint(request: Request) -> Response:
        return await endpoints[request.method](request)

    return endpoint
