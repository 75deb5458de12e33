"""Runtime benchmark: the no-op RPC through the interceptor chain vs a bare grpc.aio server."""

from __future__ import annotations

import asyncio

from bench.floor import (
    BARE_SERVER,
    RUNTIME_SERVER,
    Interleaved,
    channels,
    health_check,
    interleaved,
    start_server,
    stop,
)
from bench.report import Check, Section, summarize_latencies


async def measure(addresses: dict[str, str], pids: dict[str, int]) -> Interleaved:
    """The no-op RPC on both servers, interleaved."""
    async with channels(addresses) as channel:
        return await interleaved({name: health_check(c) for name, c in channel.items()}, pids)


def run() -> list[Section]:
    bare, bare_addr = start_server(BARE_SERVER)
    runtime, runtime_addr = start_server(RUNTIME_SERVER)
    try:
        measured = asyncio.run(
            measure(
                {"bare": bare_addr, "runtime": runtime_addr},
                {"bare": bare.pid, "runtime": runtime.pid},
            )
        )
    finally:
        stop(bare, runtime)
    bare_summary = summarize_latencies(measured.latencies["bare"])
    rt_summary = summarize_latencies(measured.latencies["runtime"])
    return [
        Section(
            "Runtime: no-op RPC (Health/Check) through the interceptor chain vs bare grpc.aio",
            figures={
                "bare throughput (calls/s)": round(measured.mean("bare")),
                "runtime throughput (calls/s)": round(measured.mean("runtime")),
                "runtime / bare per slice": measured.per_slice("runtime", "bare"),
                "server CPU per call (µs, /proc: all its threads)": measured.cpu_per_call_us(),
                "bare latency": bare_summary,
                "runtime latency": rt_summary,
            },
            checks=[
                Check("runtime / bare throughput", measured.ratio("runtime", "bare"), 0.85, ">="),
                Check(
                    "added p50 latency",
                    rt_summary["p50_ms"] - bare_summary["p50_ms"],
                    0.3,
                    "<=",
                    " ms",
                ),
            ],
        )
    ]
