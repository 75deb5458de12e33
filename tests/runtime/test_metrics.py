"""The runtime's per-call handling: its metrics as Prometheus reads them, the request ids it
makes, and the handlers it wraps."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from services.common.interceptors import CallWrapper, InFlight, _Wrapped, request_id_from
from services.common.metrics import RpcMetrics


def test_calls_are_exposed_as_go_grpc_prometheus_exposes_them() -> None:
    metrics = RpcMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    stats = metrics.method("parley.test.v1.T", "Get")
    for seconds in (0.0001, 0.0005, 0.003, 20.0):  # 0.0005 is on a bucket's bound: counted in it
        stats.record(grpc.StatusCode.OK, seconds)
    stats.record(grpc.StatusCode.CANCELLED, 0.2)
    text = generate_latest(registry).decode()

    def value(sample: str) -> float:
        found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        assert found, (sample, text)
        return float(found.group(1))

    labels = 'grpc_method="Get",grpc_service="parley.test.v1.T",grpc_type="unary"'
    assert value(f'grpc_server_handled_total{{grpc_code="OK",{labels}}}') == 4
    assert value(f'grpc_server_handled_total{{grpc_code="Canceled",{labels}}}') == 1
    assert value(f'grpc_server_handled_total{{grpc_code="Internal",{labels}}}') == 0
    bucket = f"grpc_server_handling_seconds_bucket{{{labels},le="
    assert value(bucket + '"0.0005"}') == 2
    assert value(bucket + '"0.005"}') == 3
    assert value(bucket + '"0.25"}') == 4
    assert value(bucket + '"10.0"}') == 4
    assert value(bucket + '"+Inf"}') == 5
    assert value(f"grpc_server_handling_seconds_count{{{labels}}}") == 5
    assert abs(value(f"grpc_server_handling_seconds_sum{{{labels}}}") - 20.2036) < 1e-9


def test_new_request_ids_are_unique_and_look_like_token_hex() -> None:
    ids = [request_id_from(()) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert request_id_from((("x-request-id", "abc"),)) == "abc"
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_from((("x-request-id", "x" * 200),)))


def test_made_up_method_names_are_not_kept() -> None:
    """The handlers of a generic handler are wrapped once per method; a method it does not
    serve (any path a client makes up) is answered None and leaves nothing behind."""

    class Inner(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            if details.method == "/pkg.S/Known":
                return grpc.unary_unary_rpc_method_handler(lambda request, context: request)
            return None

    wrapped = _Wrapped(Inner(), CallWrapper(InFlight(), 30.0))

    def details(method: str) -> grpc.HandlerCallDetails:
        return cast(grpc.HandlerCallDetails, SimpleNamespace(method=method, invocation_metadata=()))

    known = wrapped.service(details("/pkg.S/Known"))
    assert known is not None and wrapped.service(details("/pkg.S/Known")) is known
    for n in range(100):
        assert wrapped.service(details(f"/pkg.S/Made{n}")) is None
    assert list(wrapped._handlers) == ["/pkg.S/Known"]
