"""Prometheus metrics every gRPC service exports, named and labelled as go-grpc-prometheus
does (``grpc_code`` as Go spells it: ``OK``, ``InvalidArgument``, ``Canceled``…) so existing
dashboards and alerts work unchanged."""

from __future__ import annotations

import bisect
import errno
import itertools
from collections.abc import Callable, Iterable, Mapping

import grpc
from prometheus_client import REGISTRY, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from services.common.tls import certificate_ends

# grpc-go's codes.Code.String(), what go-grpc-prometheus puts in grpc_code: CamelCase, with
# two exceptions.
GO_CODE_NAMES = {code: code.name.title().replace("_", "") for code in grpc.StatusCode} | {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
}

HANDLING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LE = [*(str(float(bound)) for bound in HANDLING_BUCKETS), "+Inf"]  # "le" as Prometheus writes it
_OK = grpc.StatusCode.OK
# Only unary handlers are wrapped (and counted); go-grpc-prometheus's queries select on it.
_UNARY = "unary"


class MethodStats:
    """One method's calls: how many ended with each status code, and how long they took."""

    __slots__ = ("buckets", "errors", "ok", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(HANDLING_BUCKETS) + 1)  # the last one is +Inf
        self.ok = 0
        self.errors = {code: 0 for code in grpc.StatusCode if code is not _OK}
        self.sum = 0.0

    def record(self, code: grpc.StatusCode, seconds: float) -> None:
        if code is _OK:  # most calls: no dict lookup (an Enum's hash is Python code)
            self.ok += 1
        else:
            self.errors[code] += 1
        self.buckets[bisect.bisect_left(HANDLING_BUCKETS, seconds)] += 1
        self.sum += seconds

    def counts(self) -> dict[grpc.StatusCode, int]:
        return {_OK: self.ok, **self.errors}


class RpcMetrics(Collector):
    """``grpc_server_handled_total`` and ``grpc_server_handling_seconds``, kept as plain numbers
    and turned into metrics when Prometheus scrapes.

    Every RPC records into them on the event loop's thread. prometheus_client's Counter and
    Histogram take a lock for every increment (~2.5 µs a call, half of the interceptor's own
    work); these cost ~0.3 µs. A scrape (on the metrics server's thread) may see a call counted
    before its duration is added, never a torn number.
    """

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], MethodStats] = {}

    def method(self, service: str, method: str) -> MethodStats:
        return self._methods.setdefault((service, method), MethodStats())

    def collect(self) -> Iterable[Metric]:
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server, by method.",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        for (service, method), stats in list(self._methods.items()):
            for code, count in stats.counts().items():
                handled.add_metric([_UNARY, service, method, GO_CODE_NAMES[code]], count)
            cumulative = itertools.accumulate(list(stats.buckets))
            buckets = list(zip(_LE, cumulative, strict=True))
            handling.add_metric([_UNARY, service, method], buckets, stats.sum)
        yield handled
        yield handling


class InFlightGauge(Collector):
    """``grpc_server_in_flight``, read from ``set_function``'s function at scrape time.

    Not a prometheus_client Gauge: under the gateway's multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``) a Gauge writes its value to a file on creation, registered or
    not, and every gateway process then exported ``grpc_server_in_flight{pid=…} 0``, a series
    per process ever started.
    """

    def __init__(self) -> None:
        self._read: Callable[[], float] = lambda: 0

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("grpc_server_in_flight", "RPCs being handled now.", self._read())


class TlsExpiry(Collector):
    """``parley_tls_certificate_expiry_timestamp_seconds{variable}``: when the certificates this
    process serves or presents end (``GRPC_TLS_CERT``'s, ``GRPC_TLS_CA``'s), as of the last set
    of files it took (:meth:`taken`, at start-up and on each reload). Not the files' own: a set
    that does not go together is not taken, and the certificate still in use is the one whose
    end fails the handshakes. A log line at start-up warns of a certificate ending soon, but a
    process started with months left says nothing when its renewal fails later; this lets an
    alert say so (``ParleyTlsCertificateExpiresSoon``)."""

    def __init__(self) -> None:
        self._ends: dict[str, float] = {}

    def taken(self, files: Mapping[str, bytes | None]) -> None:
        """The PEM of each file now in use, by variable (None, or a key's: no series)."""
        ends = {variable: certificate_ends(pem) if pem else None for variable, pem in files.items()}
        self._ends = {variable: end.timestamp() for variable, end in ends.items() if end}

    def collect(self) -> Iterable[Metric]:
        if not self._ends:
            return  # plaintext: no series, nor an empty family
        family = GaugeMetricFamily(
            "parley_tls_certificate_expiry_timestamp_seconds",
            "When a TLS certificate in use ends (notAfter, Unix seconds), by variable.",
            labels=["variable"],
        )
        for variable, ends in self._ends.items():
            family.add_metric([variable], ends)
        yield family


# The process's own: a service's server (services.common.server) and the gateway's clients
# (services.common.clients) tell it what they took.
TLS_IN_USE = TlsExpiry()


# Registered by the runtime when a process serves gRPC (export_server_metrics), not on import:
# the gateway imports this module through its clients and would export a server's metrics that
# nothing in it updates (an in-flight gauge always 0).
RPC_METRICS = RpcMetrics()
GRPC_IN_FLIGHT = InFlightGauge()
SERVING = Gauge(
    "parley_serving",
    "1 while the service reports SERVING on its health check.",
    ["service"],
    registry=None,
)
_exported = False


def export_server_metrics() -> None:
    """Add the gRPC server's metrics to what /metrics shows (once per process)."""
    global _exported
    if not _exported:
        for collector in (RPC_METRICS, GRPC_IN_FLIGHT, SERVING, TLS_IN_USE):
            REGISTRY.register(collector)
        _exported = True


def start_metrics_server(port: int) -> None:
    """Serve /metrics on ``port`` from a background thread, over IPv6 and IPv4 as gRPC's own
    port is (an IPv6-only or dual-stack cluster scrapes pod IPv6 addresses), or IPv4 alone on a
    host without IPv6; 0 disables it."""
    if not port:
        return
    try:
        start_http_server(port, addr="::")  # dual-stack: Linux's bindv6only is 0 by default
    except OSError as error:
        if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        start_http_server(port, addr="0.0.0.0")
