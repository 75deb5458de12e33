"""Structured logging: JSON in production, readable in dev, the request id on every line.

structlog renders both its own events and the standard library's (grpc, uvicorn), so one
process writes one format. Per-call fields (request id, method) live in one context variable
(:func:`bind_call_fields`) and are merged into every line logged while the call runs.

Every RPC but the health probes writes an access line, so the processors are lean (one adds the
call's fields, the level, the time and the service in a single step) and those lines are
written in batches (:class:`DeferredLog`).

Logging never fails the code that logs: the lines go to stdout through :class:`LogOutput`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import IO, Any, BinaryIO, TextIO, cast

import orjson
import structlog
from prometheus_client import Counter

from services.common.settings import CommonSettings, guide_names_not_read

log = structlog.get_logger()

LOG_WRITES_DROPPED = Counter(
    "parley_log_writes_dropped_total",
    "Log writes lost: stdout's reader went away or its disk is full (a write can hold many lines).",
)
_gone: set[int] = set()  # descriptors whose reader went away, pointed at /dev/null since


class LogOutput:
    """stdout for the logs, whose writes never raise.

    When stdout's reader goes away (the log collector or the terminal's pipe closes: EPIPE),
    a raising write would fail whatever was logging: an RPC, a queued message, or a shutdown
    that still had stores to close (the business service then never exited, its SQLite
    threads still running). Here a failed write is dropped and counted. After EPIPE the
    descriptor is pointed at /dev/null, as Python's documentation advises for SIGPIPE, so the
    interpreter's own flush at exit and gRPC's C-level writes don't fail either; every later
    write is counted as dropped.
    """

    def __init__(self, stream: IO[Any]) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # no descriptor (a stream in a test)
            self._fd = None

    def write(self, data: str | bytes) -> int:
        if self._fd in _gone:
            LOG_WRITES_DROPPED.inc()
            return len(data)
        try:
            return int(self._stream.write(data))
        except OSError as error:
            self._failed(error)
            return len(data)

    def flush(self) -> None:
        if self._fd in _gone:
            return
        try:
            self._stream.flush()
        except OSError as error:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        LOG_WRITES_DROPPED.inc()
        if isinstance(error, BrokenPipeError) and self._fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
            _gone.add(self._fd)


# The fields of the call (RPC, queued message) being handled. Set as a new dict each time, never
# changed in place: a task started inside a call keeps the fields it started with.
_call_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "parley_log_call_fields", default=MappingProxyType({})
)
CallFieldsToken = contextvars.Token[Mapping[str, Any]]


def bind_call_fields(**fields: Any) -> CallFieldsToken:
    """Add ``fields`` to every line logged in this context, until :func:`reset_call_fields`."""
    return _call_fields.set({**_call_fields.get(), **fields})


def reset_call_fields(token: CallFieldsToken) -> None:
    """Back to the fields from before the :func:`bind_call_fields` that returned ``token``."""
    _call_fields.reset(token)


def merge_call_fields(
    _: Any, __: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """The processor that adds the call's fields (an event's own keys win)."""
    for name, value in _call_fields.get().items():
        event.setdefault(name, value)
    return event


def configure_logging(service: str, settings: CommonSettings) -> None:
    """Set up structlog and the root logger for one process named ``service``."""
    json_output = settings.log_format == "json" or (
        settings.log_format == "auto" and settings.is_production
    )
    shared: list[Any] = [StandardFields(service)]
    foreign_renderer: Any
    stdout_bytes = getattr(sys.stdout, "buffer", None)
    # structlog's own events are the hot path (one access line per RPC): in JSON they go out as
    # orjson's bytes, written as they are. The standard library's (grpc, uvicorn, httpx) go
    # through the same processors below and a str renderer.
    if json_output and stdout_bytes is not None:
        renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps_bytes)
        factory: Any = structlog.BytesLoggerFactory(cast(BinaryIO, LogOutput(stdout_bytes)))
        foreign_renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = foreign_renderer = (
            structlog.processors.JSONRenderer(serializer=_dumps)
            if json_output
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        factory = structlog.WriteLoggerFactory(cast(TextIO, LogOutput(sys.stdout)))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.log_level]
        ),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # A record's exc_info as its traceback (uvicorn's "Exception in ASGI application",
            # grpc's): left as it is, the renderer wrote three reprs and no trace of the cause.
            structlog.processors.format_exc_info,
            foreign_renderer,
        ],
    )
    # The loggers use only write and flush, all LogOutput has.
    handler = logging.StreamHandler(cast(TextIO, LogOutput(sys.stdout)))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # httpx writes a line for every request at INFO: one per send and read receipt, which the
    # worker's own line already covers, with the full URL (and any credentials a base URL
    # holds). Shown at DEBUG only.
    logging.getLogger("httpx").setLevel(
        root.level if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
    )
    for name, use in guide_names_not_read(os.environ):
        structlog.get_logger("parley.settings").warning(
            "a migration guide's variable that Parley does not read", variable=name, use=use
        )


class StandardFields:
    """What every line carries, in one processor: the call's fields (:func:`merge_call_fields`),
    ``level`` (as structlog's ``add_log_level`` names it), ``timestamp`` (as
    ``TimeStamper(fmt="iso", utc=True)``, e.g. ``2026-11-22T05:16:06.281721Z``, with the date and
    time of day formatted once a second instead of on every line) and ``service``."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(
        self, _: Any, method_name: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        merge_call_fields(_, method_name, event)
        event["level"] = _LEVEL_NAMES.get(method_name, method_name)
        if "timestamp" not in event:  # a deferred line brings the time it was recorded
            event["timestamp"] = iso_timestamp(time.time())
        event.setdefault("service", self.service)
        return event


_second: tuple[int, str] = (-1, "")  # the last second formatted; one tuple: threads swap it whole


def iso_timestamp(now: float) -> str:
    """``now`` (seconds since the epoch) as ``2026-11-22T05:16:06.281721Z``."""
    global _second
    second, text = _second
    if int(now) != second:
        second = int(now)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{int((now - second) * 1_000_000):06d}Z"


DEFERRED_FLUSH_SECONDS = 0.1
DEFERRED_MAX_PENDING = 1000


class DeferredLog:
    """INFO lines of one hot path (the access line of every RPC) logged in batches, as nginx's
    ``access_log … buffer=… flush=…`` writes its own.

    Formatted and written right after each call, the line cost a busy server ~45 µs of CPU per
    RPC (a session get went from ~360 to ~310 µs without it): run once per call, that code is
    never warm. Here a call only records its fields; every ``DEFERRED_FLUSH_SECONDS`` (or once
    ``DEFERRED_MAX_PENDING`` wait) the lines go through the same processors back to back, each
    with the time and the call fields of when it was recorded, and out in one write (~6 µs a
    line; through the logger, which writes and flushes each line, ~13). Lines wait at most that
    long: :meth:`flush` runs at shutdown and at exit, so only a crash (SIGKILL) loses them.
    Nothing else is deferred: warnings and errors go out at once. Record from the event loop's
    thread (the interceptor does); without a running loop a line is written at once.
    """

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._pending: list[tuple[float, str, Mapping[str, Any], dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def info(self, event: str, **fields: Any) -> None:
        self._pending.append((time.time(), event, _call_fields.get(), fields))
        if len(self._pending) >= DEFERRED_MAX_PENDING:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to flush later: now
                self.flush()
                return
            # An empty context: the flush must not pick up this call's fields for other lines.
            self._timer = loop.call_later(
                DEFERRED_FLUSH_SECONDS, self.flush, context=contextvars.Context()
            )

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending or not self._logger.is_enabled_for(logging.INFO):
            return
        # The configured processors run on each line as the logger would run them, and the
        # lines go out in one write: the logger itself writes and flushes every line.
        config = structlog.get_config()
        processors = config["processors"]
        logger = config["logger_factory"]()
        lines = []
        for at, event, call_fields, fields in pending:
            line: Any = {**call_fields, **fields, "timestamp": iso_timestamp(at), "event": event}
            try:
                for processor in processors:
                    line = processor(logger, "info", line)
            except structlog.DropEvent:
                continue
            lines.append(line)
        if lines:
            logger.msg((b"\n" if isinstance(lines[0], bytes) else "\n").join(lines))


# structlog's names for the levels of its method aliases (``structlog.stdlib.add_log_level``).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


# A dataclass in a line goes out as its str (its repr), not field by field as orjson would:
# its repr is where a class holding credentials masks them (the gateway's ``Target``).
_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str, option=_DUMPS_OPTIONS).decode()


def _dumps_bytes(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str, option=_DUMPS_OPTIONS)
