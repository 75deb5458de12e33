"""Structured logging: JSON in production, readable in dev, the request id on every line.

structlog renders both its own events and the standard library's (grpc, uvicorn), so one
process writes one format. Per-call fields (request id, method) live in contextvars and are
merged into every line logged while the call runs.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
import structlog

from services.common.settings import CommonSettings

log = structlog.get_logger()


def configure_logging(service: str, settings: CommonSettings) -> None:
    """Set up structlog and the root logger for one process named ``service``."""
    json_output = settings.log_format == "json" or (
        settings.log_format == "auto" and settings.is_production
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        UtcTimestamp(),
        _add_service(service),
    ]
    foreign_renderer: Any
    stdout_bytes = getattr(sys.stdout, "buffer", None)
    # structlog's own events are the hot path (one access line per RPC): in JSON they go out as
    # orjson's bytes, written as they are. The standard library's (grpc, uvicorn, httpx) go
    # through the same processors below and a str renderer.
    if json_output and stdout_bytes is not None:
        renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps_bytes)
        factory: Any = structlog.BytesLoggerFactory(stdout_bytes)
        foreign_renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = foreign_renderer = (
            structlog.processors.JSONRenderer(serializer=_dumps)
            if json_output
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        factory = structlog.WriteLoggerFactory(sys.stdout)
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, foreign_renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


class UtcTimestamp:
    """``TimeStamper(fmt="iso", utc=True)``'s ``timestamp``, e.g. ``2026-11-22T05:16:06.281721Z``,
    with the date and time of day formatted once a second instead of on every line."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads swap it whole

    def __call__(
        self, _: Any, __: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        now = time.time()
        second, text = self._second
        if int(now) != second:
            second = int(now)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event["timestamp"] = f"{text}.{int((now - second) * 1_000_000):06d}Z"
        return event


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def _dumps_bytes(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("service", service)
        return event

    return add
