"""Business benchmark: cached LookupBusiness vs the no-op RPC, and a Zipf workload's hit ratio.

One business service process (SQLite store, production settings) with 1,000 businesses.
1. Zipf-distributed lookups by phone_number_id before any warm-up (cold, for reference), then
   WarmCache, then 10,000 more: hit ratio and database queries per 10,000 lookups, from the
   service's own GetCacheStats and its ``business_store_queries_total`` metric.
2. Throughput of cached lookups (by phone_number_id, over all 1,000 businesses) against the
   runtime's no-op RPC (Health/Check), in interleaved slices (``bench.floor.interleaved``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.floor import (
    RUNTIME_SERVER,
    Interleaved,
    channels,
    health_check,
    interleaved,
    start_server,
    stop,
)
from bench.report import Check, Section, summarize_latencies
from parley.business.v1 import business_pb2, business_pb2_grpc
from tests.support.processes import free_port

BUSINESSES = 1000
LOOKUPS = 10_000
ZIPF_S = 1.1
SEED = 7

BUSINESS_SERVER = """
import os, sys
os.environ["BUSINESS_PORT"] = sys.argv[1]
from services.business.server import main
sys.exit(main())
"""


def pnid(i: int) -> str:
    return f"{300000000000000 + i}"


async def seed(stub: business_pb2_grpc.BusinessServiceStub) -> None:
    async def create(i: int) -> None:
        await stub.CreateBusiness(
            business_pb2.CreateBusinessRequest(
                business=business_pb2.Business(
                    name=f"Bench {i}",
                    subdomain=f"bench-{i}",
                    whatsapp_phone_number_ids=[pnid(i)],
                    whatsapp_numbers=[f"+1555300{i:04d}"],
                    whatsapp_enabled=True,
                    active=True,
                    time_zone="UTC",
                    locale="en",
                ),
                credentials=business_pb2.ChannelCredentials(whatsapp_access_token=f"bench-{i}"),
            ),
            timeout=30,
        )

    for start in range(0, BUSINESSES, 50):
        await asyncio.gather(*(create(i) for i in range(start, min(start + 50, BUSINESSES))))


def store_queries(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "business_store_queries":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def zipf_run(
    stub: business_pb2_grpc.BusinessServiceStub, metrics_port: int, rng: random.Random
) -> dict[str, Any]:
    weights = [1 / (k**ZIPF_S) for k in range(1, BUSINESSES + 1)]
    ranks = rng.choices(range(BUSINESSES), weights=weights, k=LOOKUPS)
    before = await stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
    queries_before = await asyncio.to_thread(store_queries, metrics_port)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await stub.LookupBusiness(
                business_pb2.LookupBusinessRequest(phone_number_id=pnid(i)), timeout=5
            )

    await asyncio.gather(*(one(i) for i in ranks))
    after = await stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
    queries = await asyncio.to_thread(store_queries, metrics_port) - queries_before
    answered = (after.hits - before.hits) + (after.negative_hits - before.negative_hits)
    missed = after.misses - before.misses
    return {
        "lookups": LOOKUPS,
        "distinct businesses": len(set(ranks)),
        "hit ratio": round(answered / (answered + missed), 4),
        "db queries per 10,000 lookups": round(queries * 10_000 / LOOKUPS, 1),
        "cache size after": after.size,
    }


async def measure_lookup(addresses: dict[str, str], pids: dict[str, int]) -> Interleaved:
    """The no-op floor and cached lookups, interleaved."""
    async with channels(addresses) as channel:
        stub = business_pb2_grpc.BusinessServiceStub(channel["lookup"])
        requests = itertools.cycle(
            [business_pb2.LookupBusinessRequest(phone_number_id=pnid(i)) for i in range(BUSINESSES)]
        )

        async def lookup() -> Any:
            return await stub.LookupBusiness(next(requests), timeout=5)

        return await interleaved({"noop": health_check(channel["noop"]), "lookup": lookup}, pids)


async def scenario(address: str, metrics_port: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    rng = random.Random(SEED)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = business_pb2_grpc.BusinessServiceStub(channel)
        await seed(stub)
        cold = await zipf_run(stub, metrics_port, rng)
        warmed = (await stub.WarmCache(business_pb2.WarmCacheRequest())).loaded
        warm = await zipf_run(stub, metrics_port, rng)
    return cold, warm, warmed


def run() -> list[Section]:
    with tempfile.TemporaryDirectory() as tmp:
        metrics_port = free_port()
        process, address = start_server(
            BUSINESS_SERVER,
            {
                "BUSINESS_DB_PATH": str(Path(tmp) / "business.db"),
                "BUSINESS_METRICS_PORT": str(metrics_port),
                "ENCRYPTION_SECRET": "bench-encryption-secret-0123456789",
                "BUSINESS_CACHE_SIZE": str(BUSINESSES),
                "MONGODB_URI": "",
                "REDIS_URL": "",
                "WARMUP_CACHE": "false",
            },
        )
        floor, floor_address = start_server(RUNTIME_SERVER)
        try:
            cold, warm, warmed = asyncio.run(scenario(address, metrics_port))
            measured = asyncio.run(
                measure_lookup(
                    {"noop": floor_address, "lookup": address},
                    {"noop": floor.pid, "lookup": process.pid},
                )
            )
        finally:
            stop(process, floor)
    return [
        Section(
            "Business: cached LookupBusiness by phone_number_id vs the no-op RPC",
            figures={
                "no-op RPC throughput (calls/s)": round(measured.mean("noop")),
                "cached lookup throughput (calls/s)": round(measured.mean("lookup")),
                "cached lookup / no-op per slice": measured.per_slice("lookup", "noop"),
                "server CPU per call (µs, /proc: all its threads)": measured.cpu_per_call_us(),
                "no-op latency": summarize_latencies(measured.latencies["noop"]),
                "cached lookup latency": summarize_latencies(measured.latencies["lookup"]),
            },
            checks=[
                Check(
                    "cached lookup / no-op throughput", measured.ratio("lookup", "noop"), 0.8, ">="
                )
            ],
        ),
        Section(
            f"Business: Zipf(s={ZIPF_S}) lookups over {BUSINESSES} businesses",
            figures={
                "cold (no warm-up)": cold,
                "businesses loaded by WarmCache": warmed,
                "after warm-up": warm,
            },
            checks=[Check("hit ratio after warm-up", warm["hit ratio"], 0.99, ">=")],
        ),
    ]
