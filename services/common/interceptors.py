"""The call handling every service's RPCs run through: request id, access log, metrics, error
mapping, a default deadline, and in-flight tracking for graceful shutdown.

It is one wrapper rather than four so each call pays for a single one, and it is put on each
handler as the handler is registered (:class:`Registrar`), not run as a ``grpc.aio``
interceptor on every call.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
import structlog

from services.common.errors import InvalidArgument, ServiceError
from services.common.logs import DeferredLog, bind_call_fields, reset_call_fields
from services.common.metrics import GRPC_IN_FLIGHT, RPC_METRICS

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


# New request ids: this process's random half, then a count (32 hex digits, as token_hex(16)
# writes them). Unique without a system call per RPC; an id needs to be unique, not secret.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count()


def _new_id_prefix() -> None:  # a forked child must not repeat its parent's ids
    global _ID_PREFIX, _ids
    _ID_PREFIX, _ids = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def request_id_from(metadata: Any) -> str:
    """The caller's request id when it sent a sane one, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return f"{_ID_PREFIX}{next(_ids):016x}"


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


_UNPARSABLE_REASON = "the body does not parse as the message"


async def _refuse_unparsable(context: Any) -> None:
    status = InvalidArgument("request", _UNPARSABLE_REASON).to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _until(requests: Any, ending: asyncio.Event) -> AsyncIterator[Any]:
    """``requests`` until ``ending`` is set: a client may keep its stream of requests open
    between them (a reflection client does), and the server's stop would wait for it."""
    iterator = aiter(requests)
    ended = asyncio.ensure_future(ending.wait())
    try:
        while True:
            receive = asyncio.ensure_future(anext(iterator))
            await asyncio.wait((receive, ended), return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                return
            try:
                request = receive.result()
            except StopAsyncIteration:
                return
            yield request
    finally:
        ended.cancel()


async def _parsed(request: Any, streaming: bool, context: Any, ending: asyncio.Event) -> Any:
    """The request (or, streaming, the requests until ``ending``), INVALID_ARGUMENT at the first
    that did not parse."""
    if not streaming:
        if request is _UNPARSABLE:
            await _refuse_unparsable(context)
        return request

    async def requests() -> AsyncIterator[Any]:
        async for each in _until(request, ending):
            if each is _UNPARSABLE:
                await _refuse_unparsable(context)
            yield each

    return requests()


def _streaming(handler: Any, ending: asyncio.Event) -> Any:
    """A streaming handler (health Watch, reflection) whose corrupt requests are INVALID_ARGUMENT
    too (gRPC itself answered UNKNOWN naming protobuf's DecodeError, and logged a traceback), and
    whose stream of requests ends when ``ending`` is set."""
    behavior = handler.unary_stream or handler.stream_unary or handler.stream_stream
    streaming = handler.request_streaming

    async def yielding(request: Any, context: Any) -> AsyncIterator[Any]:
        async for response in behavior(await _parsed(request, streaming, context, ending), context):
            yield response

    async def returning(request: Any, context: Any) -> Any:  # writes (context.write) or returns
        return await behavior(await _parsed(request, streaming, context, ending), context)

    # grpc tells the two kinds apart by the handler's own kind: the wrapper must be the same.
    wrapped = yielding if inspect.isasyncgenfunction(behavior) else returning
    make = (
        grpc.stream_stream_rpc_method_handler
        if handler.stream_stream
        else grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.unary_stream_rpc_method_handler
    )
    return make(
        wrapped,
        request_deserializer=_guarded(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class CallWrapper:
    """Wraps a unary-unary handler in the runtime's call handling; a streaming one (health
    Watch, reflection) only in the check of its requests (:func:`_streaming`)."""

    def __init__(self, in_flight: InFlight, default_deadline: float) -> None:
        self._in_flight = in_flight
        self._default_deadline = default_deadline
        # Set when the server stops taking calls: streams of requests end (see _until).
        self.streams_end = asyncio.Event()

    def wrap(self, full_method: str, handler: Any) -> Any:
        if handler is None:
            return None
        if handler.unary_unary is None:
            return _streaming(handler, self.streams_end)
        service, _, method = full_method.lstrip("/").rpartition("/")
        behavior = handler.unary_unary
        stats = RPC_METRICS.method(service, method)
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
                    raise InvalidArgument("request", _UNPARSABLE_REASON)
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
                # grpc cancels the handler both when the client cancels and when the client's
                # deadline passes; the latter is DEADLINE_EXCEEDED, as the client sees it (and
                # as ParleyGrpcErrors counts a service too slow for its callers).
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                else:
                    code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error")
                await context.abort(code, f"internal error (request id {request_id})")
            finally:
                elapsed = time.perf_counter() - start
                stats.record(code, elapsed)
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


class Registrar:
    """What a service registers its handlers with in place of the server: each one goes to the
    server wrapped (:class:`CallWrapper`), once, at start-up.

    Not a ``grpc.aio`` server interceptor: grpc awaits an interceptor on every RPC (a coroutine
    and a lookup per call), which cost the no-op RPC ~4 % of its throughput here. The generated
    ``add_…_to_server`` functions call only the two methods below, so this stands in for the
    server (:meth:`as_server`).
    """

    def __init__(self, server: grpc.aio.Server, wrapper: CallWrapper) -> None:
        self._server = server
        self._wrapper = wrapper

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrap = self._wrapper.wrap
        self._server.add_registered_method_handlers(
            service, {name: wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(h, self._wrapper) for h in handlers))

    def as_server(self) -> grpc.aio.Server:
        """This registrar, typed as what the generated functions take."""
        return cast(grpc.aio.Server, self)


class _Wrapped(grpc.GenericRpcHandler):
    """A generic handler whose handlers come wrapped (built once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrapper: CallWrapper) -> None:
        self._inner = inner
        self._wrapper = wrapper
        self._handlers: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:  # not ours: not kept, or made-up method names would pile up
                return None
            wrapped = self._handlers[method] = self._wrapper.wrap(method, handler)
        return wrapped
