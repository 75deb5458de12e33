"""Start-up and shutdown for every gRPC service, so each service's ``main`` is a few lines.

A service hands :func:`run` a :class:`Service`: its full name, the generated ``add_..._to_server``
function, its servicer, and a readiness check. The runtime adds standard health (``""`` and the
service name, NOT_SERVING until the readiness check passes, re-checked for as long as the process
lives), reflection, the interceptor chain, a metrics port, and graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import event_loop
from services.common.clients import MAX_REPLY_BYTES, check_tls_files, warn_if_expiring
from services.common.gc_tuning import settle_heap
from services.common.health import Health
from services.common.interceptors import ACCESS_LOG, CallWrapper, InFlight, Registrar
from services.common.logs import configure_logging
from services.common.metrics import (
    SERVING,
    TLS_IN_USE,
    export_server_metrics,
    start_metrics_server,
)
from services.common.reflection import enable_reflection
from services.common.settings import (
    CommonSettings,
    ConfigurationError,
    read_setting_file,
    refuse_to_start,
)
from services.common.tasks import wait_shielded
from services.common.tls import WatchedFiles

log = structlog.get_logger("parley.runtime")

Readiness = Callable[[], Awaitable[None]]
"""Raises (with a reason a human can act on) while the service cannot serve."""

# SERVING from the moment the server answers until shutdown, whatever the datastore does: the
# name for liveness and startup probes, so an outage of the datastore takes replicas out of
# rotation (readiness, on "" and the service name) without having them restarted.
LIVENESS = "liveness"
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING_STATUS = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a request's bound (gRPC's default); replies: MAX_REPLY_BYTES
READINESS_TIMEOUT_SECONDS = 5.0


async def _always_ready() -> None:
    return None


@dataclass
class Service:
    """What a service tells the runtime about itself."""

    name: str  # full gRPC service name, e.g. "parley.session.v1.SessionService"
    register: Callable[[Any, grpc.aio.Server], None]  # the generated add_XServicer_to_server
    servicer: Any
    readiness: Readiness = _always_ready
    # Run after the port is bound and before readiness is checked (open pools, warm caches).
    on_start: Callable[[], Awaitable[None]] | None = None
    # Run after the server has stopped (close pools, flush).
    on_stop: Callable[[], Awaitable[None]] | None = None
    extra_health_names: list[str] = field(default_factory=list)


def _tls_files(settings: CommonSettings) -> tuple[bytes, bytes, bytes | None]:
    """The key, certificate and CA (or None) the settings name, checked: a
    :class:`ConfigurationError` names the variable of a file that cannot be used."""
    cert_path, key_path = settings.grpc_tls_cert, settings.grpc_tls_key
    assert cert_path and key_path
    key = read_setting_file("GRPC_TLS_KEY", key_path)
    cert = read_setting_file("GRPC_TLS_CERT", cert_path)
    ca = read_setting_file("GRPC_TLS_CA", settings.grpc_tls_ca) if settings.grpc_tls_ca else None
    # grpc only finds bad PEM when it binds, and then says "Failed to bind to address".
    check_tls_files(settings.grpc_tls_ca, cert_path, key_path)
    # At start-up and on each reload: grpc serves an expired certificate without a word.
    warn_if_expiring("GRPC_TLS_CERT", cert_path, cert)
    if ca is not None and settings.grpc_tls_ca:
        warn_if_expiring("GRPC_TLS_CA", settings.grpc_tls_ca, ca)
    return key, cert, ca


class _TlsFiles:
    """The TLS files, read again when one of them changes (cert-manager renewing a certificate
    into a mounted Secret, an operator replacing the files): grpc asks before each new
    connection's handshake, so a renewed certificate is served without a restart, before the
    old one expires. Files that do not make a valid set (half written, mismatched) leave the
    last good set in use, with one warning."""

    def __init__(self, settings: CommonSettings) -> None:
        self._settings = settings
        self._files = WatchedFiles(
            (settings.grpc_tls_key, settings.grpc_tls_cert, settings.grpc_tls_ca)
        )
        self.initial = self._take(*_tls_files(settings))

    @staticmethod
    def _take(key: bytes, cert: bytes, ca: bytes | None) -> Any:
        """The configuration grpc serves next, its certificates' ends exported."""
        configuration = grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca
        )
        TLS_IN_USE.taken({"GRPC_TLS_CERT": cert, "GRPC_TLS_CA": ca})
        return configuration

    def fetch(self) -> Any:
        """A new configuration when the files changed and make a valid set, else None (keep
        the one in use). Called by grpc, on its own thread, before each handshake."""
        if not self._files.changed():
            return None
        try:
            configuration = self._take(*_tls_files(self._settings))
        except ConfigurationError as error:
            log.warning("TLS files changed, not usable: the last ones kept", reason=str(error))
            return None
        log.info("TLS files reloaded")
        return configuration


def server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """TLS when GRPC_TLS_CERT and GRPC_TLS_KEY are set; mutual TLS when GRPC_TLS_CA is too. The
    files are read again when they change (:class:`_TlsFiles`)."""
    cert_path, key_path = settings.grpc_tls_cert, settings.grpc_tls_key
    if not (cert_path or key_path or settings.grpc_tls_ca):
        return None
    if not (cert_path and key_path):
        # One of the pair, or the CA alone, used to be ignored: a service asked for TLS, or to
        # require client certificates, served plaintext to every client.
        given = "GRPC_TLS_CERT" if cert_path else "GRPC_TLS_KEY" if key_path else "GRPC_TLS_CA"
        raise ConfigurationError(
            "GRPC_TLS_KEY" if cert_path else "GRPC_TLS_CERT",
            f"unset while {given} is set: a service serves TLS only with both",
        )
    files = _TlsFiles(settings)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=bool(settings.grpc_tls_ca)
    )


def _cannot_listen(address: str, what: str) -> ValueError:
    return ValueError(
        f"cannot listen on {address} ({what}): another process holds the port,"
        " or the host is not an address of this machine"
    )


def _connection_age(seconds: float) -> list[tuple[str, int]]:
    """gRPC resolves a DNS name again only when a connection ends: without an age, a client
    keeps the replicas it found first for as long as it lives, and new ones get no calls (gRFC
    A9's remedy). No age grace: calls in flight on an aged connection always finish."""
    return [("grpc.max_connection_age_ms", int(seconds * 1000))] if seconds > 0 else []


class Runtime:
    """One running service: server, health, readiness loop and shutdown."""

    def __init__(self, service: Service, settings: CommonSettings, port: int) -> None:
        self.service = service
        self.settings = settings
        export_server_metrics()
        self.in_flight = InFlight()
        self.health = Health()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_REPLY_BYTES),
                # No second process on a port one already holds: gRPC's default (SO_REUSEPORT)
                # lets a stale copy of a service take a share of the calls without a word.
                ("grpc.so_reuseport", 0),
                # Accept the clients' keepalive pings (see services.common.clients).
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                *_connection_age(settings.grpc_max_connection_age_seconds),
            ],
        )
        self._wrapper = CallWrapper(self.in_flight, settings.grpc_default_deadline_seconds)
        registrar = Registrar(self.server, self._wrapper).as_server()
        service.register(service.servicer, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        enable_reflection(
            [service.name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], registrar
        )
        address = f"{settings.grpc_host}:{port}"
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc's "Failed to bind to address …"
            raise _cannot_listen(address, "gRPC") from None
        self._ready = False
        self._stopping = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def health_names(self) -> list[str]:
        return ["", self.service.name, *self.service.extra_health_names]

    async def _set_health(self, ready: bool) -> None:
        status = SERVING_STATUS if ready else NOT_SERVING_STATUS
        for name in self.health_names:
            await self.health.set(name, status)
        SERVING.labels(self.service.name).set(1 if ready else 0)

    async def _watch_readiness(self) -> None:
        """Re-check readiness for the life of the process, logging each transition once."""
        last_reason: str | None = None
        while not self._stopping.is_set():
            limit = asyncio.timeout(READINESS_TIMEOUT_SECONDS)
            try:
                async with limit:
                    await self.service.readiness()
                if self._stopping.is_set():  # a check that ended during shutdown says nothing
                    return
            except Exception as error:  # the check's own failure is the reason we report
                reason = str(error) or type(error).__name__
                if limit.expired():  # not the check's own words: a bare "TimeoutError"
                    reason = f"the readiness check took over {READINESS_TIMEOUT_SECONDS:g} s"
                if self._ready or reason != last_reason:
                    log.warning("not ready", service=self.service.name, reason=reason)
                self._ready, last_reason = False, reason
                await self._set_health(False)
            else:
                if not self._ready:
                    log.info("serving", service=self.service.name, port=self.port)
                self._ready, last_reason = True, None
                await self._set_health(True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.readiness_interval_seconds):
                    await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    def start_readiness(self) -> None:
        """Check readiness from now on, until a stop is requested."""
        self._watcher = asyncio.create_task(self._watch_readiness())

    async def run(self) -> int:
        await self._set_health(False)
        await self.server.start()
        await self.health.set(LIVENESS, SERVING_STATUS)
        log.info("started", service=self.service.name, port=self.port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.service.on_start is not None:
            await self.service.on_start()
        settle_heap()
        self.start_readiness()
        await self._stopping.wait()
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        """Health NOT_SERVING at once; calls are still taken until none is in flight (half the
        grace at most); then stop, letting the calls in flight finish within the rest."""
        grace = self.settings.shutdown_grace_seconds
        try:
            log.info(
                "shutting down",
                service=self.service.name,
                grace_seconds=grace,
                in_flight=self.in_flight.count,
            )
            await self.health.enter_graceful_shutdown()
            SERVING.labels(self.service.name).set(0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            # The server keeps answering (health says NOT_SERVING) while in-flight calls drain,
            # for half the grace at most: clients that do not read health (the gateway's
            # channel) keep sending, so under steady load no moment without a call may come,
            # and the calls taken meanwhile need the rest of the grace to finish once it stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace / 2):
                    await self.in_flight.idle.wait()
            # Watch streams never end by themselves, nor do streams of requests a client keeps
            # open (reflection's): the stop would wait its grace for them.
            self.health.end_watches()
            self._wrapper.streams_end.set()
            await self.server.stop(max(0.0, deadline - loop.time()))
            # Writes whose callers were cancelled still run (run_shielded): the stores they use
            # close after them.
            await wait_shielded()
        finally:
            # A readiness check under way may be opening a store (the first ping does): it
            # ends (within READINESS_TIMEOUT_SECONDS) before the stores close, not after, when
            # it would leave one open. Not cancelled: a cut open leaves its thread too.
            self._stopping.set()
            if self._watcher is not None:
                await asyncio.wait([self._watcher])
            # Whatever failed above, the stores are closed: a store's threads left running
            # (aiosqlite's) would keep the process from ever exiting.
            if self.service.on_stop is not None:
                await self.service.on_stop()
            ACCESS_LOG.flush()
        log.info("stopped", service=self.service.name)


def run(
    service_factory: Callable[[], Service],
    settings: CommonSettings,
    *,
    port: int,
    metrics_port: int,
    log_name: str,
) -> int:
    """Configure logging and metrics, build the service, and serve until SIGTERM or SIGINT.

    A ``ValueError`` while building (a :class:`~services.common.settings.ConfigurationError`
    names its variable) stops start-up as a bad environment value does: one line, status 2.
    """
    configure_logging(log_name, settings)
    try:
        start_metrics_server(metrics_port)
    except OSError:
        refuse_to_start(str(_cannot_listen(f"[::]:{metrics_port}", "metrics")))

    async def main() -> int:
        try:
            runtime = Runtime(service_factory(), settings, port)
        except ValueError as error:
            refuse_to_start(str(error))
        return await runtime.run()

    return event_loop.run(main())
