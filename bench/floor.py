"""Floors and load helpers every benchmark shares.

The no-op RPC floor every service benchmark compares against:

Two servers in their own processes: a bare ``grpc.aio`` server with the standard health servicer
and no interceptors, and the same health servicer behind Parley's runtime (interceptor chain,
access log, metrics). The no-op RPC is ``grpc.health.v1.Health/Check``.

Every gRPC benchmark measures its calls and its floor with :func:`interleaved`, and reports
their ratio: absolute rates on a shared machine drift, a ratio in the same slices does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
SLICES = 20  # interleaved slices of each kind of call (interleaved())
SLICE_SECONDS = 0.6

Call = Callable[[], Awaitable[Any]]


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
    call: Call, seconds: float = DURATION_S, concurrency: int = CONCURRENCY
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


async def latencies(call: Call, calls: int = LATENCY_CALLS, warm_up: int = 50) -> list[float]:
    """One caller, back to back: the per-call latency without queueing."""
    samples = []
    for _ in range(warm_up):
        await call()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


@contextlib.asynccontextmanager
async def channels(addresses: Mapping[str, str]) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """A channel to each address, by the same names, closed together."""
    async with contextlib.AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(grpc.aio.insecure_channel(address))
            for name, address in addresses.items()
        }


def health_check(channel: grpc.aio.Channel) -> Call:
    """The no-op RPC on ``channel``: ``Health/Check``, with a deadline as Parley's own clients
    always send one."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()

    async def call() -> Any:
        return await stub.Check(request, timeout=5)

    return call


@dataclass
class Interleaved:
    """Per kind of call: calls per second in each slice, the CPU time its server spent and the
    calls it served over all of them, and its latencies (one caller, after the slices)."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, kind: str) -> float:
        return statistics.fmean(self.rates[kind])

    def ratio(self, kind: str, floor: str) -> float:
        """``kind``'s throughput over ``floor``'s."""
        return self.mean(kind) / self.mean(floor)

    def per_slice(self, kind: str, floor: str) -> list[float]:
        """The ratio in each slice: how far one slice's figure can stray."""
        return [round(r / f, 2) for r, f in zip(self.rates[kind], self.rates[floor], strict=True)]

    def cpu_per_call_us(self) -> dict[str, int]:
        """Each kind's server CPU per call, µs (``/proc``: all of the server's threads)."""
        return {kind: round(cpu / self.calls[kind] * 1e6) for kind, cpu in self.server_cpu.items()}


async def interleaved(
    calls: Mapping[str, Call],
    pids: Mapping[str, int],
    *,
    slices: int = SLICES,
    slice_seconds: float = SLICE_SECONDS,
) -> Interleaved:
    """The throughput of each kind of call, measured in turn in short slices, ``slices`` times
    over, then each kind's latencies, in interleaved blocks too; ``pids``: the process that
    serves each kind.

    The machine is shared and its load drifts over seconds. Slices this short and interleaved
    expose every kind to the same drift, so their ratio holds where back-to-back runs of a few
    seconds each do not.
    """
    result = Interleaved()
    for kind in calls:
        result.rates[kind], result.latencies[kind] = [], []
        result.server_cpu[kind] = result.calls[kind] = 0.0
    for _ in range(slices):
        for kind, call in calls.items():
            before = cpu_seconds(pids[kind])
            rate = await throughput(call, slice_seconds)
            result.rates[kind].append(rate)
            result.server_cpu[kind] += cpu_seconds(pids[kind]) - before
            result.calls[kind] += rate * slice_seconds + WARM_UP_CALLS
    for _ in range(slices):
        for kind, call in calls.items():
            result.latencies[kind] += await latencies(call, LATENCY_CALLS // slices, warm_up=5)
    return result


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK
