"""Floors and load helpers every benchmark shares.

The no-op RPC floor every service benchmark compares against:

Two servers in their own processes: a bare ``grpc.aio`` server with the standard health servicer
and no interceptors, and the same health servicer behind Parley's runtime (interceptor chain,
access log, metrics). The no-op RPC is ``grpc.health.v1.Health/Check``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.healthcheck import check
from tests.support.processes import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCURRENCY = 32
DURATION_S = float(os.environ.get("BENCH_SECONDS", "3"))
LATENCY_CALLS = 1000
WARM_UP_CALLS = 50  # before each throughput measurement


# On uvloop, as the runtime runs every service (services/common/event_loop.py): same loop.
BARE_SERVER = """
import sys
import grpc
import uvloop
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()

uvloop.run(main())
"""

RUNTIME_SERVER = """
import sys
from parley.session.v1 import session_pb2_grpc
from services.common.server import Service, run
from services.common.settings import load_settings, CommonSettings

settings = load_settings(CommonSettings)
run(lambda: Service("parley.session.v1.SessionService",
                    session_pb2_grpc.add_SessionServiceServicer_to_server,
                    session_pb2_grpc.SessionServiceServicer()),
    settings, port=int(sys.argv[1]), metrics_port=0, log_name="bench")
"""


def start_server(
    source: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", source, str(port)],
        cwd=ROOT,
        env={
            **os.environ,
            "APP_ENV": "production",
            "LOG_FORMAT": "json",
            "READINESS_INTERVAL_SECONDS": "0.1",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    if not wait_for(lambda: check(address) == "SERVING", 20):
        process.kill()
        raise RuntimeError("benchmark server did not start")
    return process, address


async def throughput(
    call: Callable[[], Awaitable[Any]], seconds: float = DURATION_S, concurrency: int = CONCURRENCY
) -> float:
    """Calls per second with ``concurrency`` callers for ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    for _ in range(WARM_UP_CALLS):
        await call()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def latencies(call: Callable[[], Awaitable[Any]], calls: int = LATENCY_CALLS) -> list[float]:
    """One caller, back to back: the per-call latency without queueing."""
    samples = []
    for _ in range(50):
        await call()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def median_round(rounds: list[tuple[float, list[float]]]) -> tuple[float, list[float]]:
    return sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]


async def measure_health(address: str) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        async def call() -> Any:
            # With a deadline, as Parley's own clients always send one.
            return await stub.Check(request, timeout=5)

        return await throughput(call), await latencies(call)


ROUNDS = 3


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


async def noop_floor() -> tuple[float, list[float]]:
    """Throughput and latencies of the runtime's no-op RPC, for service benchmarks' ratios."""
    process, address = start_server(RUNTIME_SERVER)
    try:
        return await measure_health(address)
    finally:
        stop(process)


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK
