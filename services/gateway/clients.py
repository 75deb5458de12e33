"""gRPC stubs to the three services, one long-lived channel each (``make_channel``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.business.v1 import business_pb2_grpc
from parley.search.v1 import search_pb2_grpc
from parley.session.v1 import session_pb2_grpc
from services.common.clients import client_credentials, make_channel, with_call_defaults
from services.gateway.settings import GatewaySettings

SESSION = "parley.session.v1.SessionService"
BUSINESS = "parley.business.v1.BusinessService"
SEARCH = "parley.search.v1.SearchService"


@dataclass(frozen=True)
class DependencyHealth:
    name: str
    status: str  # SERVING, NOT_SERVING, UNKNOWN, or the gRPC error code
    latency_ms: float


class Clients:
    def __init__(
        self, settings: GatewaySettings, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """``credentials``: read once at start-up (:func:`client_credentials`); else from
        ``settings``."""
        credentials = credentials or client_credentials(settings)
        timeout = settings.grpc_timeout_seconds
        self._channels = {
            SESSION: make_channel(
                settings.session_service_addr,
                SESSION,
                credentials=credentials,
            ),
            BUSINESS: make_channel(
                settings.business_service_addr,
                BUSINESS,
                credentials=credentials,
            ),
            SEARCH: make_channel(
                settings.search_service_addr,
                SEARCH,
                credentials=credentials,
            ),
        }
        self.session = with_call_defaults(
            session_pb2_grpc.SessionServiceStub(self._channels[SESSION]), timeout
        )
        self.business = with_call_defaults(
            business_pb2_grpc.BusinessServiceStub(self._channels[BUSINESS]), timeout
        )
        self.search = with_call_defaults(
            search_pb2_grpc.SearchServiceStub(self._channels[SEARCH]), timeout
        )
        self._health = {
            name: health_pb2_grpc.HealthStub(channel) for name, channel in self._channels.items()
        }

    async def health(self, deadline: float = 1.0) -> list[DependencyHealth]:
        """Each service's standard gRPC health for its own name, with the call's latency."""
        return list(await asyncio.gather(*(self._check(n, deadline) for n in self._health)))

    async def _check(self, name: str, deadline: float) -> DependencyHealth:
        started = time.perf_counter()
        try:
            stub: Any = self._health[name]
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=name), timeout=deadline
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.RpcError as error:
            status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "UNKNOWN"
        return DependencyHealth(name, status, round((time.perf_counter() - started) * 1000, 2))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
