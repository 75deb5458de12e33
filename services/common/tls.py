"""A gRPC client's TLS material, read from files: kept apart from the clients so the health probe
(``services.common.healthcheck``, run every few seconds) imports only grpc."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime
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


class WatchedFiles:
    """Files whose replacement is noticed: cert-manager renewing a certificate into a mounted
    Secret, an operator replacing the files. ``stat`` follows the symlinks a Kubernetes Secret
    volume swaps on an update, so a new ``..data`` directory counts as a change."""

    def __init__(self, paths: Iterable[str | None]) -> None:
        self._paths = [path for path in paths if path]
        self._stamp = self._stamps()

    def _stamps(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            stats = [os.stat(path) for path in self._paths]
        except OSError:
            return None  # one is missing mid-update: not a change yet
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)

    def changed(self) -> bool:
        """Whether any file changed since the last call (or since they were first seen)."""
        stamp = self._stamps()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


def certificate_ends(pem: bytes) -> datetime | None:
    """When the first of the certificates in ``pem`` ends (``notAfter``, UTC); None when it holds
    no readable certificate."""
    from cryptography import x509  # here: the health probe imports this module, not this

    try:
        return min(cert.not_valid_after_utc for cert in x509.load_pem_x509_certificates(pem))
    except ValueError:
        return None
