"""gRPC clients for the gateway: one channel per service, round-robin over DNS, retries on
UNAVAILABLE through the service config, keepalive, and (:func:`with_call_defaults`) a deadline on
every call and the request id passed on in metadata."""

from __future__ import annotations

import contextvars
import json
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import grpc
import structlog

from services.common.interceptors import REQUEST_ID_KEY
from services.common.metrics import TLS_IN_USE
from services.common.settings import CommonSettings, ConfigurationError, read_setting_file
from services.common.tls import certificate_ends, channel_credentials

log = structlog.get_logger("parley.runtime")

# The request id of the message being handled; the gateway sets it per webhook/queue entry.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

DEFAULT_TIMEOUT_SECONDS = 2.0
# The largest reply a Parley service sends and its clients accept (requests stay within
# services.common.server.MAX_MESSAGE_BYTES). Sized for the session service's largest
# conversation: SESSION_HISTORY_LIMIT (at most 1,000) messages of 4,096 four-byte characters and
# a state at its 1 MiB bound, whose protobuf encoding can be 2.75 times its JSON: ~20 MiB.
MAX_REPLY_BYTES = 32 * 1024 * 1024
StubT = TypeVar("StubT")


def service_config(service_name: str) -> str:
    """Round-robin over every resolved address; retry UNAVAILABLE up to 3 attempts with backoff."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": service_name}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def dns_target(address: str) -> str:
    """``host:port`` → ``dns:///host:port`` so every A record is a round-robin backend."""
    if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return address
    return f"dns:///{address}"


class _CallDefaults:
    """A stub whose unary calls carry a default deadline and the request id in metadata, and
    wait for a connection (``wait_for_ready``) within that deadline.

    What a ``grpc.aio`` client interceptor would add, without its machinery: an intercepted call
    runs in a task of its own, which cost ~25 us of CPU per call (~5% of a gateway worker's).
    """

    def __init__(self, stub: Any, default_timeout: float) -> None:
        self._stub = stub
        self._default_timeout = default_timeout

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        default_timeout = self._default_timeout

        def call(
            request: Any,
            *,
            timeout: float | None = None,
            metadata: Sequence[tuple[str, str]] | None = None,
            **options: Any,
        ) -> Any:
            request_id = request_id_var.get()
            if request_id and not any(key == REQUEST_ID_KEY for key, _ in metadata or ()):
                metadata = (*(metadata or ()), (REQUEST_ID_KEY, request_id))
            # Wait for a connection within the deadline rather than fail UNAVAILABLE at once
            # while none is up: a service restarting (a rollout of one replica, a compose
            # restart) is back in a second or two, and a search the gateway gave up on is an
            # apology to the user. A service that stays away still fails at the deadline.
            options.setdefault("wait_for_ready", True)
            return method(
                request,
                timeout=default_timeout if timeout is None else timeout,
                metadata=metadata,
                **options,
            )

        setattr(self, name, call)  # once per method: later lookups skip __getattr__
        return call

    def rebind(self, stub: Any) -> None:
        """Calls from now on go through ``stub`` (a stub on a new channel)."""
        for name in [name for name in vars(self) if not name.startswith("_")]:
            delattr(self, name)  # a call bound to the old stub's method
        self._stub = stub


def with_call_defaults(stub: StubT, default_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> StubT:
    """``stub``, its unary calls given a default deadline and the current request id."""
    return cast(StubT, _CallDefaults(stub, default_timeout))


def rebind(wrapped: Any, stub: Any) -> None:
    """Point a :func:`with_call_defaults` stub, and everything holding it, at ``stub``."""
    cast(_CallDefaults, wrapped).rebind(stub)


# This close to its end a certificate's renewal has failed: cert-manager renews a third of its
# life ahead (a month of the usual 90 days).
EXPIRY_WARNING = timedelta(days=7)


def warn_if_expiring(variable: str, path: str, pem: bytes) -> None:
    """One warning when a certificate in ``pem`` (``GRPC_TLS_CERT``'s, ``GRPC_TLS_CA``'s) has
    expired or ends within :data:`EXPIRY_WARNING`: grpc serves and presents it without a word,
    and every handshake fails from its ``notAfter`` on. Only the file and the date are logged."""
    ends = certificate_ends(pem)
    if ends is None:
        return  # no readable certificate: refused where the file is loaded
    left = ends - datetime.now(UTC)
    if left <= EXPIRY_WARNING:
        log.warning(
            "TLS certificate expired" if left <= timedelta(0) else "TLS certificate expires soon",
            variable=variable,
            path=path,
            not_after=ends.isoformat(),
        )


def check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """OpenSSL reads the files first (an encrypted key is refused, never prompted for): grpc
    finds bad PEM only when a server binds or a client's handshake fails, and names no file.
    A :class:`ConfigurationError` names the variable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if cert and key:
        try:
            context.load_cert_chain(cert, key, password="")
        except ssl.SSLError:
            raise ConfigurationError(
                "GRPC_TLS_CERT", "with GRPC_TLS_KEY, not a PEM certificate and its unencrypted key"
            ) from None
        except OSError as error:  # replaced between its read and this check
            raise ConfigurationError("GRPC_TLS_CERT", _unreadable(error, "GRPC_TLS_KEY")) from None
    if ca:
        try:
            context.load_verify_locations(ca)
        except ssl.SSLError:
            raise ConfigurationError("GRPC_TLS_CA", "not PEM certificates") from None
        except OSError as error:
            raise ConfigurationError("GRPC_TLS_CA", _unreadable(error)) from None


def _unreadable(error: OSError, *also: str) -> str:
    return " or ".join(("cannot be read", *also)) + f" ({error.strerror or 'unreadable'})"


def read_tls_file(variable: str, path: str) -> bytes:
    """:func:`read_setting_file`, and a certificate's expiry checked (never a key's)."""
    data = read_setting_file(variable, path)
    if variable != "GRPC_TLS_KEY":
        warn_if_expiring(variable, path, data)
    return data


def client_credentials(settings: CommonSettings) -> grpc.ChannelCredentials | None:
    """The gateway's TLS to the services, from the same variables the services serve with.

    ``GRPC_TLS_CA`` (the CA that signed the services' certificates) turns TLS on; with
    ``GRPC_TLS_CERT`` and ``GRPC_TLS_KEY`` too, the gateway presents that client certificate
    (mutual TLS). Unset: plaintext, as before. Pass the result to :func:`make_channel`. A file
    that cannot be read is a :class:`~services.common.settings.ConfigurationError` naming its
    variable, as on the services.
    """
    cert, key, ca = settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_ca
    # Either half of the pair alone, or the pair without the CA, used to be dropped without a
    # word: the gateway then presented no certificate, or spoke plaintext.
    if bool(cert) != bool(key):
        raise ConfigurationError(
            "GRPC_TLS_KEY" if cert else "GRPC_TLS_CERT",
            "unset while the other is set: a client certificate needs both",
        )
    if cert and not ca:
        raise ConfigurationError(
            "GRPC_TLS_CA",
            "unset while GRPC_TLS_CERT and GRPC_TLS_KEY are set: the gateway speaks TLS to the"
            " services, and presents its certificate, only with their CA",
        )
    files: dict[str, bytes | None] = {"GRPC_TLS_CERT": None, "GRPC_TLS_CA": None}

    def read(variable: str, path: str) -> bytes:
        data = read_tls_file(variable, path)
        if variable in files:  # the certificates, never the key
            files[variable] = data
        return data

    credentials = channel_credentials(ca, cert, key, read)
    check_tls_files(ca, cert, key)
    TLS_IN_USE.taken(files)  # what the channels opened with these present and trust
    return credentials


def make_channel(
    address: str,
    service_name: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """One long-lived channel to ``service_name`` at ``address`` (stubs on it: wrap them with
    :func:`with_call_defaults` for the deadline and the request id)."""
    options = [
        ("grpc.service_config", service_config(service_name)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect within a second of a restarted service listening again (gRPC's default
        # backoff, 1 s growing by 1.6 up to 120 s, noticed a 5 s restart nearly 4 s late).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # The DNS name is resolved again when a connection ends (a pod gone, a server's
        # GRPC_MAX_CONNECTION_AGE_SECONDS): at most every 5 s rather than gRPC's 30, so
        # replicas added by a scale-up or a rollout take calls soon after.
        ("grpc.dns_min_time_between_resolutions_ms", 5000),
    ]
    target = dns_target(address)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
