"""Structured logging: JSON in production, readable in dev, the request id on every line.

structlog renders both its own events and the standard library's (grpc, uvicorn), so one
process writes one format. Per-call fields (request id, method) live in contextvars and are
merged into every line logged while the call runs.
"""

from __future__ import annotations

import logging
import sys
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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # structlog's own events render straight to stdout (the hot path: one access line per RPC);
    # the standard library's (grpc, uvicorn, httpx) go through the same processors below.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.log_level]
        ),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("service", service)
        return event

    return add
