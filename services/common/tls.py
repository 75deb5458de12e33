"""A gRPC client's TLS material, read from files: kept apart from the clients so the health probe
(``services.common.healthcheck``, run every few seconds) imports only grpc."""

from __future__ import annotations

from pathlib import Path

import grpc


def channel_credentials(
    ca: str | None, cert: str | None, key: str | None
) -> grpc.ChannelCredentials | None:
    """TLS to the services when a CA is given; a client certificate too when cert and key are."""
    if not ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key and cert else None,
        certificate_chain=Path(cert).read_bytes() if key and cert else None,
    )
