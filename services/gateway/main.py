"""Run the gateway: ``python -m services.gateway.main [--role web|worker|all]``.

- ``all`` (default): HTTP and queue workers in each process.
- ``web``: HTTP only (webhooks are queued; separate worker processes answer them).
- ``worker``: queue workers only; with ``WORKER_HTTP_PORT`` set, also ``/health``, ``/ready``
  and ``/metrics`` on that port (for probes and scraping), never webhooks or admin.

``WEB_CONCURRENCY`` > 1 runs that many HTTP processes (uvicorn workers). Their metrics are
merged through prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set (to
``var/prometheus`` unless given) and the metric files of processes no longer running are removed
before any process writes to it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from services.common.settings import refuse_to_start  # imports no prometheus_client
from services.gateway.http_protocol import bounded_protocol

if TYPE_CHECKING:
    from services.gateway.runtime import Role
    from services.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    if pid == os.getpid():  # a file of this pid is a former process's: this one wrote none yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _prepare_multiprocess_dir() -> None:
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or ROOT / "var" / "prometheus")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Only prometheus-client's files ("counter_<pid>.db"…), and only those of processes no
        # longer running: worker processes sharing the directory keep counting into theirs, and
        # a file removed under them would hide what they count until they restart.
        for stale in directory.glob("*.db"):
            pid = stale.stem.rpartition("_")[2]
            if not (pid.isdigit() and _running(int(pid))):
                stale.unlink()
    except OSError as error:  # e.g. an installed package's read-only tree, in the image
        refuse_to_start(
            f"PROMETHEUS_MULTIPROC_DIR: {directory} cannot be used ({error.strerror}); "
            "the metrics of every process are counted in files there"
        )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


ROLES = ("web", "worker", "all")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # argparse checks --role against its choices but never the default: GATEWAY_ROLE=workers
    # ran a web-only gateway whose queued messages no worker took.
    role = os.environ.get("GATEWAY_ROLE") or "all"
    if role not in ROLES:
        refuse_to_start("GATEWAY_ROLE: must be web, worker or all")
    parser = argparse.ArgumentParser(prog="python -m services.gateway.main")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=role,
        help="web: HTTP only; worker: queue workers only; all: both (default)",
    )
    return parser.parse_args(argv)


async def run_worker() -> int:
    from services.common.gc_tuning import settle_heap
    from services.common.settings import load_settings
    from services.gateway.runtime import Runtime
    from services.gateway.settings import GatewaySettings

    settings = load_settings(GatewaySettings)
    runtime = Runtime.build(settings, "worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    settle_heap()
    await stop.wait()
    await runtime.stop()  # finishes in-flight messages, hands partitions back
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["GATEWAY_ROLE"] = args.role
    try:
        concurrency = int(os.environ.get("WEB_CONCURRENCY", "1") or "1")
    except ValueError:
        refuse_to_start("WEB_CONCURRENCY: must be a whole number")
    # Must happen before prometheus_client is imported anywhere in this process tree. Also
    # whenever the directory is given (one web process, or a worker writing beside the web's):
    # prometheus_client then counts into files there, and a directory not made yet was a
    # FileNotFoundError traceback at the first metric.
    if (concurrency > 1 and args.role != "worker") or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _prepare_multiprocess_dir()

    from services.common.logs import configure_logging
    from services.common.settings import load_settings
    from services.gateway.settings import GatewaySettings

    settings = load_settings(GatewaySettings)  # exits 2 naming any bad or missing variable
    configure_logging("gateway", settings)
    try:
        return _serve(args.role, settings)
    except ValueError as error:  # a setting that validated but cannot be used (names it)
        refuse_to_start(str(error))


def _stopped(signum: int, frame: Any) -> None:
    raise SystemExit(0)


EVERY_ADDRESS = "::"  # GATEWAY_HOST's default: IPv6 and IPv4, as the services' ports


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _listening_socket(host: str, port: int, variable: str) -> socket.socket | None:
    """On ``::``, one socket for every address, IPv6 and IPv4 (IPv4 alone on a host without
    IPv6): an IPv6-only or dual-stack cluster probes, scrapes and routes to a pod at its IPv6
    address. uvicorn, given ``::``, listens on IPv6 alone (asyncio sets IPV6_V6ONLY), and
    given ``0.0.0.0`` on IPv4 alone. None for any other host: uvicorn binds it as given."""
    if host != EVERY_ADDRESS:
        return None
    try:
        try:
            return _bound(socket.AF_INET6, host, port)
        except OSError as error:
            if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            return _bound(socket.AF_INET, "0.0.0.0", port)
    except OSError as error:
        refuse_to_start(f"{variable}: cannot listen on port {port} ({error.strerror})")


def _serve(role: Role, settings: GatewaySettings) -> int:
    # uvicorn, once it has shut down gracefully on SIGTERM, raises the signal again under the
    # handler it found: the default one killed the process (status 143) although nothing
    # failed. The services exit 0 then, and so does the gateway. (Several web processes: the
    # parent handles SIGTERM itself and returns.)
    signal.signal(signal.SIGTERM, _stopped)
    if role == "worker" and not settings.worker_http_port:
        from services.common import event_loop

        return event_loop.run(run_worker())
    port, variable = (
        (settings.worker_http_port, "WORKER_HTTP_PORT")
        if role == "worker"
        else (settings.gateway_port, "GATEWAY_PORT")
    )
    # Open until uvicorn is done: it listens on a copy of its descriptor, in one process or in
    # each of several.
    sock = _listening_socket(settings.gateway_host, port, variable)
    server_options: dict[str, Any] = {
        **({"fd": sock.fileno()} if sock else {"host": settings.gateway_host, "port": port}),
        "log_config": None,  # keep our structlog handler
        "access_log": False,  # one structured line per webhook instead
        # As given: int() made a grace of 0.5 s none at all (uvicorn waits a float as well).
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        # Bounds on a request's head (64 KiB) and on the time a request may take to arrive.
        "http": bounded_protocol(settings.request_read_timeout_seconds),
    }
    if role == "worker":
        from services.gateway.app import create_app

        uvicorn.run(create_app(settings, "worker"), **server_options)
        return 0
    if settings.web_concurrency > 1:
        # The app is built in each uvicorn worker process: a setting it cannot use (a URL, a
        # TLS file, the engine's) would fail there, in a traceback per process, and uvicorn's
        # parent would then exit 0. Say it here, once: build what each process will.
        from services.gateway.runtime import Runtime

        Runtime.build(settings, role)
        uvicorn.run(
            "services.gateway.app:create_app_from_env",
            factory=True,
            workers=settings.web_concurrency,
            **server_options,
        )
        return 0
    from services.gateway.app import create_app

    uvicorn.run(create_app(settings, role), **server_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
