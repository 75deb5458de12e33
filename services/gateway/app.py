"""The gateway's HTTP face: webhooks, health, metrics and the admin API.

Started by ``services.gateway.main`` (``--role web|worker|all``); with role ``all`` (the default)
the queue workers run in the same process, started and stopped with the app's lifespan, so a
SIGTERM finishes the messages in flight before the process exits.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import field_violations
from services.common.gc_tuning import settle_heap
from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.gateway import admin, health, webhooks
from services.gateway.runtime import Role, Runtime
from services.gateway.settings import GatewaySettings

log = structlog.get_logger()
VERSION = health.VERSION

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


class GatewayApp(FastAPI):
    """FastAPI, every error body of it ``{"detail": …}`` JSON (see :class:`JsonTooLarge`)."""

    def build_middleware_stack(self) -> ASGIApp:
        return JsonTooLarge(super().build_middleware_stack())


class JsonTooLarge:
    """Starlette's body limit answers a body whose ``Content-Length`` is over ``max_body_size``
    with a plain-text 413 of its own, outside every exception handler, while one found over it
    as it streams gets the JSON ``{"detail": …}`` every other error of the gateway has: the
    plain one is answered in that shape too. (The gateway's own answers are JSON or TwiML, never
    a plain-text 413.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_json(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = (b"content-type", b"text/plain; charset=utf-8") in message["headers"]
            if not replaced:
                await send(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await JSONResponse({"detail": "Content Too Large"}, 413)(scope, receive, send)

        await self.app(scope, receive, send_json)


def serve_with_trailing_slash(router: Router) -> None:
    """A path no route takes, but would without its trailing slash (``/health/``,
    ``/admin/businesses/``), is served as that path, where Starlette would answer 307 to a URL
    built from the Host header (behind an ingress: ``http://`` and the inside name), which a
    probe or ``curl -X POST`` need not follow. Anything else is still the JSON 404. (The
    webhooks have routes of their own with the slash: a Twilio signature covers it.)"""

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] == "http" and path != "/" and path.endswith("/"):
            # In place, not a copy: the route it matches is set on this scope, where the
            # admin audit (a middleware outside) reads it.
            scope["path"] = path.rstrip("/") or "/"
            await router.app(scope, receive, send)
            return
        await router.not_found(scope, receive, send)

    router.redirect_slashes = False
    router.default = default


def create_app(settings: GatewaySettings, role: Role = "all") -> FastAPI:
    runtime = Runtime.build(settings, role)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.whatsapp_app_secret:
            log.warning("WHATSAPP_APP_SECRET is not set: unsigned Cloud API webhooks are accepted")
        if not settings.twilio_auth_token:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio webhooks are checked only against "
                "businesses' own tokens, and refused without one"
                if settings.is_production
                else "TWILIO_AUTH_TOKEN is not set: Twilio webhooks are checked only against "
                "businesses' own tokens, unsigned ones accepted otherwise"
            )
        if not settings.api_key:
            log.warning("API_KEY is not set: the admin API is off")
        await runtime.start()
        settle_heap()
        log.info("gateway started", role=role, outbox_only=settings.outbox_only)
        try:
            yield
        finally:
            await runtime.stop()
            log.info("gateway stopped")

    app = GatewayApp(
        title="Parley gateway",
        version=VERSION,
        description="WhatsApp webhooks in, replies out: verify, dedupe, queue, answer.",
        lifespan=lifespan,
        # 413 over the limit, by Content-Length at once and while streaming a chunked body.
        max_body_size=settings.max_body_bytes,
    )
    app.state.runtime = runtime
    serve_with_trailing_slash(app.router)
    if role == "worker":  # probes and metrics only: a worker takes no traffic
        app.include_router(health.build_router(runtime))
        return app
    # Webhooks first: routes are matched in order, and they are the hot path.
    hooks = webhooks.build_router(runtime)
    app.include_router(hooks)  # for the OpenAPI document: the plain routes below answer
    app.router.routes[:0] = webhooks.plain_routes(hooks)
    app.include_router(health.build_router(runtime))
    app.include_router(admin.build_router(runtime))
    app.add_middleware(admin.AdminAudit)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 echoes each value it refused (`input`; for a missing field, the
        # whole body): a token too long or sent under a wrong name would go back over the wire
        # and into any proxy or log that records bodies. The field and the reason are enough.
        errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, error: RedisError) -> JSONResponse:
        log.warning("redis unavailable", error=str(error)[:200])
        return JSONResponse(
            {"detail": "Redis is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(grpc.aio.AioRpcError)
    async def grpc_error(_: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        status = HTTP_STATUS.get(error.code(), 502)
        content: dict[str, Any] = {"detail": error.details() or error.code().name}
        violations = (
            field_violations(error) if error.code() == grpc.StatusCode.INVALID_ARGUMENT else {}
        )
        if violations:
            content["fields"] = violations
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(content, status_code=status, headers=headers)

    return app


def create_app_from_env() -> FastAPI:
    """For uvicorn's ``--factory`` with several processes: each builds its own app."""
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings)
    role: Role = os.environ.get("GATEWAY_ROLE", "all")  # type: ignore[assignment]
    return create_app(settings, role)
