"""Prometheus metrics every gRPC service exports, named and labelled as go-grpc-prometheus
does (``grpc_code`` as Go spells it: ``OK``, ``InvalidArgument``, ``Canceled``…) so existing
dashboards and alerts work unchanged."""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

# grpc-go's codes.Code.String(), what go-grpc-prometheus puts in grpc_code: CamelCase, with
# two exceptions.
GO_CODE_NAMES = {code: code.name.title().replace("_", "") for code in grpc.StatusCode} | {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
}

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server, by method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GRPC_IN_FLIGHT = Gauge("grpc_server_in_flight", "RPCs being handled now.")
SERVING = Gauge(
    "parley_serving", "1 while the service reports SERVING on its health check.", ["service"]
)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on ``port`` from a background thread; 0 disables it."""
    if port:
        start_http_server(port, addr=host)
