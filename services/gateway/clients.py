"""gRPC stubs to the three services, one long-lived channel each (``make_channel``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.business.v1 import business_pb2_grpc
from parley.search.v1 import search_pb2_grpc
from parley.session.v1 import session_pb2_grpc
from services.common.clients import (
    client_credentials,
    make_channel,
    rebind,
    with_call_defaults,
)
from services.common.settings import ConfigurationError
from services.common.tasks import cancel_and_wait
from services.common.tls import WatchedFiles
from services.gateway.settings import GatewaySettings

SESSION = "parley.session.v1.SessionService"
BUSINESS = "parley.business.v1.BusinessService"
SEARCH = "parley.search.v1.SearchService"

log = structlog.get_logger("parley.runtime")


@dataclass(frozen=True)
class DependencyHealth:
    name: str
    status: str  # SERVING, NOT_SERVING, UNKNOWN, or the gRPC error code
    latency_ms: float


# How often a gateway process looks at its TLS files (three stats): a renewed client certificate
# or CA is in use within this long, well inside the month cert-manager renews ahead.
TLS_CHECK_SECONDS = 30.0
# The longest deadline the gateway gives a call: the admin API's WarmCache of the search cache
# (its business cache's is 30 s); a message's calls end within the engine's time.
WARM_CACHE_SECONDS = 60.0


class Clients:
    def __init__(
        self, settings: GatewaySettings, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """``credentials``: read once at start-up (:func:`client_credentials`); else from
        ``settings``."""
        self._settings = settings
        self._tls_files = WatchedFiles(
            (settings.grpc_tls_ca, settings.grpc_tls_cert, settings.grpc_tls_key)
        )
        # Retired channels still finishing their calls, by the task closing each.
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._watch: asyncio.Task[None] | None = None
        self._channels = self._open(credentials or client_credentials(settings))
        timeout = settings.grpc_timeout_seconds
        session, business, search = self._stubs()
        self.session = with_call_defaults(session, timeout)
        self.business = with_call_defaults(business, timeout)
        self.search = with_call_defaults(search, timeout)
        self._health = self._health_stubs()

    def _open(self, credentials: grpc.ChannelCredentials | None) -> dict[str, grpc.aio.Channel]:
        settings = self._settings
        return {
            name: make_channel(address, name, credentials=credentials)
            for name, address in (
                (SESSION, settings.session_service_addr),
                (BUSINESS, settings.business_service_addr),
                (SEARCH, settings.search_service_addr),
            )
        }

    def _stubs(
        self,
    ) -> tuple[
        session_pb2_grpc.SessionServiceAsyncStub,
        business_pb2_grpc.BusinessServiceAsyncStub,
        search_pb2_grpc.SearchServiceAsyncStub,
    ]:
        """The three services' stubs on the channels in use."""
        channels = self._channels
        return (
            session_pb2_grpc.SessionServiceStub(channels[SESSION]),
            business_pb2_grpc.BusinessServiceStub(channels[BUSINESS]),
            search_pb2_grpc.SearchServiceStub(channels[SEARCH]),
        )

    def _health_stubs(self) -> dict[str, health_pb2_grpc.HealthStub]:
        return {
            name: health_pb2_grpc.HealthStub(channel) for name, channel in self._channels.items()
        }

    def watch_tls(self) -> None:
        """Look at the TLS files every :data:`TLS_CHECK_SECONDS` (:meth:`reload_tls`); nothing
        to watch in plaintext."""
        if self._watch is None and self._settings.grpc_tls_ca:
            self._watch = asyncio.create_task(self._watch_tls(), name="tls-files")

    async def _watch_tls(self) -> None:
        while True:
            await asyncio.sleep(TLS_CHECK_SECONDS)
            try:
                self.reload_tls()
            except Exception:  # the watch must outlive one bad look at the files
                log.exception("TLS files not reloaded: the channels in use kept")

    def reload_tls(self) -> bool:
        """New channels when the TLS files changed and make a valid set (cert-manager renewing
        the gateway's certificate, or the services' CA, into its Secret): a channel keeps the
        certificate it was opened with, so the gateway presented the old one until a restart,
        and failed every call once it expired. Calls under way finish on the old channels,
        closed after the longest deadline the gateway gives one. Files that do not go together
        (half written, a key of another pair) leave the channels in use, with one warning."""
        if not self._tls_files.changed():
            return False
        try:
            credentials = client_credentials(self._settings)
        except ConfigurationError as error:
            log.warning("TLS files changed, not usable: the last ones kept", reason=str(error))
            return False
        old, self._channels = self._channels, self._open(credentials)
        wrapped = (self.session, self.business, self.search)
        for stub_in_use, stub in zip(wrapped, self._stubs(), strict=True):
            rebind(stub_in_use, stub)
        self._health = self._health_stubs()
        grace = max(
            self._settings.engine_timeout_seconds + self._settings.grpc_timeout_seconds,
            WARM_CACHE_SECONDS,
        )
        for channel in old.values():
            closing = asyncio.create_task(channel.close(grace))
            self._closing[closing] = channel
            closing.add_done_callback(self._closing.pop)  # closed: not kept for good
        log.info("TLS files reloaded")
        return True

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
        await cancel_and_wait(self._watch)
        for channel in (*self._channels.values(), *self._closing.values()):
            await channel.close()
        await asyncio.gather(*self._closing)
