"""Runtime benchmark: the no-op RPC through the interceptor chain vs a bare grpc.aio server."""

from __future__ import annotations

import asyncio

from bench.floor import (
    BARE_SERVER,
    ROUNDS,
    RUNTIME_SERVER,
    measure_health,
    median_round,
    start_server,
    stop,
)
from bench.report import Check, Section, summarize_latencies


def run() -> list[Section]:
    bare, bare_addr = start_server(BARE_SERVER)
    runtime, runtime_addr = start_server(RUNTIME_SERVER)
    try:
        # Alternate the two servers and keep each one's median round, so drift on a shared
        # machine hits both sides alike.
        bare_rounds, rt_rounds = [], []
        for _ in range(ROUNDS):
            bare_rounds.append(asyncio.run(measure_health(bare_addr)))
            rt_rounds.append(asyncio.run(measure_health(runtime_addr)))
    finally:
        stop(bare, runtime)
    bare_rps, bare_lat = median_round(bare_rounds)
    rt_rps, rt_lat = median_round(rt_rounds)
    bare_summary, rt_summary = summarize_latencies(bare_lat), summarize_latencies(rt_lat)
    return [
        Section(
            "Runtime: no-op RPC (Health/Check) through the interceptor chain vs bare grpc.aio",
            figures={
                "bare throughput (calls/s)": round(bare_rps),
                "runtime throughput (calls/s)": round(rt_rps),
                "bare latency": bare_summary,
                "runtime latency": rt_summary,
            },
            checks=[
                Check("runtime / bare throughput", rt_rps / bare_rps, 0.85, ">="),
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
