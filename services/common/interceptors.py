"""The server interceptor chain every service runs: request id, access log, metrics,
error mapping, a default deadline, and in-flight tracking for graceful shutdown.

It is one interceptor rather than four so each call pays for a single wrapper.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.common.errors import InvalidArgument, ServiceError
from services.common.logs import DeferredLog, bind_call_fields, reset_call_fields
from services.common.metrics import (
    GO_CODE_NAMES,
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_IN_FLIGHT,
)

log = structlog.get_logger("parley.access")
ACCESS_LOG = DeferredLog(log)  # one line per RPC, written in batches: see DeferredLog
REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128


class InFlight:
    """Counts calls being handled; ``idle`` is set whenever none is."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        GRPC_IN_FLIGHT.set_function(lambda: self.count)  # read at scrape time, free per call

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


def request_id_from(metadata: Any) -> str:
    """The caller's request id when it sent a sane one, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return secrets.token_hex(16)


# An enum member's .name is a Python-level property: looked up once, not on every call.
_CODE_NAMES = {code: code.name for code in grpc.StatusCode}
_UNPARSABLE = object()  # what the guarded deserializer returns for bytes that do not parse


class EncodedReply:
    """A reply a handler built in its wire encoding (from parts it keeps encoded): the runtime
    sends these bytes as they are, instead of a message that gRPC would serialize again."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _serializer(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The response serializer, passing an :class:`EncodedReply`'s bytes through."""
    if serialize is None:
        return None

    def serialized(response: Any) -> bytes:
        if response.__class__ is EncodedReply:
            return response.data
        return serialize(response)

    return serialized


def _guarded(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The request deserializer, returning a marker instead of raising on corrupt bytes: gRPC
    itself would answer UNKNOWN, and a client that sends garbage deserves INVALID_ARGUMENT."""
    if deserialize is None:
        return None

    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _UNPARSABLE

    return guarded


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler; streaming calls (health Watch, reflection) pass through.

    The wrapped handler is built once per method and cached: grpc calls ``intercept_service``
    for every RPC, and building handlers there would cost more than everything else here.
    """

    def __init__(self, in_flight: InFlight, default_deadline: float) -> None:
        self._in_flight = in_flight
        self._default_deadline = default_deadline
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        full_method: str = handler_call_details.method
        cached = self._handlers.get(full_method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(full_method, handler)
        self._handlers[full_method] = wrapped
        return wrapped

    def _wrap(self, full_method: str, handler: Any) -> Any:
        service, _, method = full_method.lstrip("/").rpartition("/")
        behavior = handler.unary_unary
        histogram = GRPC_HANDLING_SECONDS.labels(service, method)
        counters = {
            code: GRPC_HANDLED.labels(service, method, GO_CODE_NAMES[code])
            for code in grpc.StatusCode
        }
        in_flight = self._in_flight
        default_deadline = self._default_deadline
        # Probes call Health/Check every few seconds: their access lines are DEBUG, not noise.
        access_log = log.debug if service == "grpc.health.v1.Health" else ACCESS_LOG.info

        async def wrapped(request: Any, context: Any) -> Any:
            in_flight.enter()
            request_id = request_id_from(context.invocation_metadata())
            fields = bind_call_fields(request_id=request_id, rpc=method)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if request is _UNPARSABLE:
                    raise InvalidArgument("request", "the body does not parse as the message")
                if context.time_remaining() is None:  # the client set no deadline: use ours
                    async with asyncio.timeout(default_deadline):
                        response = await behavior(request, context)
                else:  # grpc itself cancels the call at the client's deadline
                    response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except ServiceError as error:
                code = error.code
                status = error.to_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            except TimeoutError:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                await context.abort(code, "the server's deadline for this call passed")
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error")
                await context.abort(code, f"internal error (request id {request_id})")
            finally:
                elapsed = time.perf_counter() - start
                histogram.observe(elapsed)
                counters[code].inc()
                access_log(
                    "rpc",
                    method=full_method,
                    code=_CODE_NAMES[code],
                    duration_ms=round(elapsed * 1000, 3),
                )
                reset_call_fields(fields)
                in_flight.leave()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_guarded(handler.request_deserializer),
            response_serializer=_serializer(handler.response_serializer),
        )
