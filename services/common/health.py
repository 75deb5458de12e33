"""The standard health service (``grpc.health.v1.Health``) every gRPC service serves.

grpcio-health-checking's asyncio servicer leaves ``List`` unimplemented: ``grpcurl … Health/List``,
which reflection shows, failed. And its ``Watch`` streams never end: a server stopping with one
open (Envoy, a gRPC client's health checking, ``grpcurl … Health/Watch``) waited its whole grace
for it, then cut it. Here ``List`` answers, and :meth:`Health.end_watches` ends the streams once
they have been sent NOT_SERVING, so a stop waits only for real calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # a HealthCheckResponse.ServingStatus
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_END = None  # what a watcher's queue gets when its stream is to end


class Health(health_pb2_grpc.HealthServicer):
    """Check, List and Watch over one table of statuses; a name is unknown until it is set."""

    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        # One queue per open Watch, so a watcher sees every change in order, however slowly it
        # reads, and a set never waits for a watcher's write.
        self._watchers: dict[str, set[asyncio.Queue[Status | None]]] = {}
        self._shutting_down = False
        self._ended = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Any) -> Any:
        # types-grpcio-health-checking has no List yet.
        return health_pb2.HealthListResponse(  # type: ignore[attr-defined]
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        name = request.service
        queue: asyncio.Queue[Status | None] = asyncio.Queue()
        queue.put_nowait(self._statuses.get(name, SERVICE_UNKNOWN))
        if self._ended:
            queue.put_nowait(_END)
        watchers = self._watchers.setdefault(name, set())
        watchers.add(queue)
        try:
            while (status := await queue.get()) is not _END:
                await context.write(health_pb2.HealthCheckResponse(status=status))
        finally:
            watchers.discard(queue)
            if not watchers:  # a name nobody watches (or made up) is not kept
                self._watchers.pop(name, None)

    async def set(self, name: str, status: Status) -> None:
        """``name``'s status from now on (ignored once shutting down: it stays NOT_SERVING)."""
        if not self._shutting_down:
            self._set(name, status)

    def _set(self, name: str, status: Status) -> None:
        if self._statuses.get(name) == status:
            return
        self._statuses[name] = status
        for queue in self._watchers.get(name, ()):
            queue.put_nowait(status)

    async def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good (watchers are told)."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for name in list(self._statuses):
            self._set(name, NOT_SERVING)

    def end_watches(self) -> None:
        """End every Watch stream (status OK) after what it has been sent, and any opened later
        after its first status: for when the server stops taking calls."""
        self._ended = True
        for watchers in self._watchers.values():
            for queue in watchers:
                queue.put_nowait(_END)
