"""Health endpoints and /metrics.

``/health`` is liveness only (no dependency is called); ``/ready`` and ``/health/ready`` say 503
unless Redis and the three services' gRPC health are SERVING (``?checks=redis``: Redis only);
``/health/detailed`` gathers every figure an operator needs, each dependency with its state and
latency, and never fails as a whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from google.protobuf import json_format

from parley.business.v1 import business_pb2
from parley.search.v1 import search_pb2
from parley.session.v1 import session_pb2
from services.common.metrics import TLS_IN_USE
from services.gateway import metrics
from services.gateway.runtime import Runtime

VERSION = "0.1.0"
# /ready?checks=…: "all" (Redis and the three services), or "redis" for the probe of a process
# that only needs its Redis to take work (a web process queues webhooks; a worker retries a
# service that is down): one unhealthy service must not take every replica out of rotation.
READY_CHECKS = ("all", "redis")


async def _timed(call: Callable[[], Awaitable[Any]], limit: float = 1.0) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            value = await call()
        result: dict[str, Any] = {"ok": True, "value": value}
    except grpc.aio.AioRpcError as error:
        result = {"ok": False, "error": f"{error.code().name}: {error.details()}"[:300]}
    except TimeoutError:
        result = {"ok": False, "error": "timed out"}
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


async def _none() -> list[Any]:
    return []


def _queue_up(value: float) -> tuple[str, float]:
    # Always there, so that `gateway_queue_up == 0` can be alerted on (the queue's gauges are
    # absent while Redis does not answer).
    return ("1 when the queue figures could be read from Redis, 0 when they could not.", value)


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def build_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", summary="Liveness: the process answers; no dependency is called.")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "service": "gateway",
            "version": VERSION,
            "role": runtime.role,
            "uptime_seconds": round(time.monotonic() - runtime.started, 3),
        }

    async def readiness(with_services: bool = True) -> tuple[bool, dict[str, Any]]:
        redis_check, services = await asyncio.gather(
            _timed(runtime.redis.ping),
            runtime.clients.health() if with_services else _none(),
        )
        checks: dict[str, Any] = {
            "redis": "SERVING" if redis_check["ok"] else redis_check.get("error", "DOWN")
        }
        checks.update({s.name: s.status for s in services})
        return all(v == "SERVING" for v in checks.values()), checks

    async def ready(checks: str = "all") -> Response:
        if checks not in READY_CHECKS:
            return JSONResponse(
                {"detail": f"checks must be one of: {', '.join(READY_CHECKS)}"}, status_code=400
            )
        ok, found = await readiness(with_services=checks == "all")
        return JSONResponse({"ready": ok, "checks": found}, status_code=200 if ok else 503)

    for path in ("/ready", "/health/ready"):
        router.add_api_route(
            path,
            ready,
            methods=["GET"],
            summary="Readiness: 503 unless Redis and the three services are SERVING "
            "(with checks=redis: Redis only, all a web process needs to take webhooks).",
            responses={503: {"description": "A dependency is not SERVING."}},
        )

    @router.get("/health/info", summary="Version, commit, uptime and the configuration in force.")
    async def info() -> dict[str, Any]:
        return {
            "service": "gateway",
            "version": VERSION,
            "commit": runtime.commit,
            "role": runtime.role,
            "uptime_seconds": round(time.monotonic() - runtime.started, 3),
            "config": runtime.settings.masked(),
        }

    @router.get("/health/detailed", summary="Every dependency, the queue, breakers, caches.")
    async def detailed() -> dict[str, Any]:
        clients = runtime.clients
        redis_check, services, queue, breakers, cache, storage = await asyncio.gather(
            _timed(runtime.redis.ping),
            clients.health(),
            _timed(runtime.queue.stats),
            _timed(
                lambda: clients.search.ListCircuitBreakers(
                    search_pb2.ListCircuitBreakersRequest(), timeout=1.0
                )
            ),
            _timed(
                lambda: clients.business.GetCacheStats(
                    business_pb2.GetCacheStatsRequest(), timeout=1.0
                )
            ),
            _timed(
                lambda: clients.session.GetStorageStatus(
                    session_pb2.GetStorageStatusRequest(), timeout=1.0
                )
            ),
        )
        dependencies: dict[str, Any] = {
            "redis": {
                "status": "SERVING" if redis_check["ok"] else "DOWN",
                "latency_ms": redis_check["latency_ms"],
                **({"error": redis_check["error"]} if not redis_check["ok"] else {}),
            }
        }
        for service in services:
            dependencies[service.name] = {
                "status": service.status,
                "latency_ms": service.latency_ms,
            }
        all_up = all(d["status"] == "SERVING" for d in dependencies.values())
        session_status = _dict(storage["value"]) if storage["ok"] else {"error": storage["error"]}
        degraded = bool(session_status.get("fallback_active"))
        describe = getattr(runtime.engine, "describe", None)
        engine = describe() if callable(describe) else {"engine": type(runtime.engine).__name__}
        return {
            "status": "healthy" if all_up and not degraded else "degraded",
            "version": VERSION,
            "role": runtime.role,
            "uptime_seconds": round(time.monotonic() - runtime.started, 3),
            "dependencies": dependencies,
            "queue": queue["value"] if queue["ok"] else {"error": queue["error"]},
            "workers": {
                "in_this_process": runtime.pool is not None,
                "held_partitions": runtime.pool.held_partitions if runtime.pool else [],
            },
            "circuit_breakers": (
                [_dict(b) for b in breakers["value"].circuit_breakers]
                if breakers["ok"]
                else {"error": breakers["error"]}
            ),
            "business_cache": _dict(cache["value"]) if cache["ok"] else {"error": cache["error"]},
            # This process's workers' cache of LookupBusiness answers (absent without workers).
            "gateway_business_cache": (
                runtime.businesses.describe() if runtime.businesses is not None else None
            ),
            "session_storage": session_status,
            "engine": engine,
            "outbox_only": runtime.settings.outbox_only,
        }

    @router.get(
        "/metrics",
        summary="Prometheus metrics (all processes of this host in multiprocess mode).",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        gauges: dict[str, tuple[str, float]] = {}
        try:
            async with asyncio.timeout(1.0):
                stats = await runtime.queue.stats()
            gauges = {
                "gateway_queue_length": ("Entries in the queue streams.", stats["length"]),
                "gateway_queue_pending": (
                    "Entries delivered to a worker and not yet acknowledged.",
                    stats["pending"],
                ),
                "gateway_queue_retrying": (
                    "Entries that failed and wait for another attempt.",
                    stats["retrying"],
                ),
                "gateway_queue_oldest_seconds": (
                    "How long the oldest message not yet answered has been queued (0: none).",
                    stats["oldest_seconds"],
                ),
                "gateway_dead_letters": (
                    "Records in the dead-letter stream.",
                    stats["dead_letters"],
                ),
                "gateway_live_workers": (
                    "Worker processes with a fresh heartbeat.",
                    stats["live_workers"],
                ),
                "gateway_queue_up": _queue_up(1.0),
            }
        except Exception:
            gauges = {"gateway_queue_up": _queue_up(0.0)}
        # With the ends of the client certificate and CA this process's channels use.
        body, content_type = metrics.render(gauges, TLS_IN_USE)
        return Response(body, media_type=content_type)

    # HEAD wherever GET: RFC 9110 asks it of every server, and uptime monitors (updown,
    # Montastic, Wasitup…) probe with it, for whom a 405 is a service down. Left out of the
    # OpenAPI document, where it would repeat every GET.
    for route in list(router.routes):
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            router.add_api_route(
                route.path,
                route.endpoint,
                methods=["HEAD"],
                response_class=route.response_class,
                include_in_schema=False,
            )
    return router
