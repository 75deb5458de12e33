"""Exit 0 only when a gRPC server reports SERVING: a probe for compose and anything without
native gRPC probes.

    python -m services.common.healthcheck --addr localhost:50051 [--service NAME] [--timeout 2]
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import channel_credentials


def check(
    address: str,
    service: str = "",
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> str:
    """The serving status name, or the gRPC error code name when the call fails."""
    channel = (
        grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            response = stub.Check(request, timeout=timeout)  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description=" ".join(__doc__.split("\n\n")[0].split()),
    )
    cli.add_argument("--addr", required=True, help="host:port of the gRPC server")
    cli.add_argument("--service", default="", help='service name to check ("" is overall)')
    cli.add_argument("--timeout", type=float, default=2.0)
    cli.add_argument("--tls-ca", help="CA bundle, for a server with TLS")
    cli.add_argument("--tls-cert", help="client certificate, for mutual TLS")
    cli.add_argument("--tls-key", help="client key, for mutual TLS")
    return cli


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca):
        # Dropped without a word before: the probe spoke plaintext, or TLS without its
        # certificate, and a misspelt probe read as a service down (UNAVAILABLE).
        cli.error("--tls-cert and --tls-key go together, and with --tls-ca")
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as error:  # one line in the probe's output, not a traceback
        print(f"cannot read {error.filename}: {error.strerror}")
        return 1
    status = check(args.addr, args.service, args.timeout, credentials)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
