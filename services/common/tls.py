"""A gRPC client's TLS material, read from files: kept apart from the clients so the health probe
(``services.common.healthcheck``, run every few seconds) imports only grpc."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc


def _read(variable: str, path: str) -> bytes:
    return Path(path).read_bytes()


def channel_credentials(
    ca: str | None,
    cert: str | None,
    key: str | None,
    read: Callable[[str, str], bytes] = _read,
) -> grpc.ChannelCredentials | None:
    """TLS to the services when a CA is given; a client certificate too when cert and key are.
    ``read(variable, path)`` reads each file (``GRPC_TLS_CA``, ``GRPC_TLS_CERT``,
    ``GRPC_TLS_KEY``)."""
    if not ca:
        return None
    root = read("GRPC_TLS_CA", ca)
    if not (key and cert):
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=read("GRPC_TLS_KEY", key),
        certificate_chain=read("GRPC_TLS_CERT", cert),
    )
