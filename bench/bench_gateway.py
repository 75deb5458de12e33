"""Gateway benchmarks.

1. Acknowledgement: signed Cloud API webhooks per second (verify, parse, dedupe + enqueue in
   Redis, 200) against a bare FastAPI POST endpoint that reads the body and answers 200, both
   under uvicorn with the same settings, in the same run; then p99 at 1,000 webhooks/s offered.
2. End to end, with the real conversation engine, the offline search provider and a warm
   business cache: from webhook sent to reply accepted by a local fake of the Graph API, at
   100 messages/s. The distribution is reported.

The load generator is a small raw HTTP/1.1 keep-alive client on asyncio, so the client's own
cost stays small next to the servers' on a shared machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.floor import CONCURRENCY, DURATION_S, SLICE_SECONDS, SLICES, Interleaved, interleaved
from bench.report import Check, Section, percentile, summarize_latencies
from services.gateway.channels import cloud_api
from tests.support.processes import Valkey, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-app-secret-" + secrets.token_hex(8)
API_KEY = "bench-admin-" + secrets.token_hex(8)
PNID = "100000000000777"


BARE_APP = """
import sys, uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()

@app.post("/webhooks/whatsapp")
async def webhook(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
"""


class RawClient:
    """One keep-alive HTTP/1.1 connection; POST and read the whole response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def webhook(user: str, text: str, message_id: str = "") -> tuple[bytes, dict[str, str]]:
    message = {
        "from": user,
        "id": message_id or f"wamid.{secrets.token_hex(12)}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    contact = {"profile": {"name": "Bench"}, "wa_id": user}
    payload = cloud_api.notification(PNID, [message], [contact], "1555")
    body = json.dumps(payload).encode()
    return body, {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": cloud_api.sign(body, SECRET),
    }


class Webhooks:
    """Signed webhooks from ``users`` users, each message with an id never sent before: the
    gateway answers a duplicate before it enqueues anything, and the enqueue is measured."""

    def __init__(self, users: int = 500) -> None:
        self._template, _ = webhook("@@USER@@", "hello", "@@ID@@")
        self._users = [f"1555{n:07d}".encode() for n in range(users)]
        self._run = secrets.token_hex(6).encode()
        self._count = itertools.count()

    def __next__(self) -> tuple[bytes, dict[str, str]]:
        n = next(self._count)
        body = self._template.replace(b"@@USER@@", self._users[n % len(self._users)])
        body = body.replace(b"@@ID@@", b"wamid.%s%012x" % (self._run, n))
        return body, {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": cloud_api.sign(body, SECRET),
        }


class Poster:
    """One webhook POST per call, each on one of CONCURRENCY keep-alive connections (one per
    caller of the benchmark); anything but 200 fails the benchmark."""

    def __init__(self, port: int, webhooks: Webhooks) -> None:
        self.webhooks = webhooks
        self._idle = [RawClient(port) for _ in range(CONCURRENCY)]
        self._all = list(self._idle)

    async def __call__(self) -> int:
        client = self._idle.pop()
        try:
            body, headers = next(self.webhooks)
            status = await client.post("/webhooks/whatsapp", body, headers)
        finally:
            self._idle.append(client)
        if status != 200:
            raise RuntimeError(f"status {status} during the benchmark")
        return status

    def close(self) -> None:
        for client in self._all:
            client.close()


async def ack_rates(ports: dict[str, int], pids: dict[str, int]) -> Interleaved:
    """The bare app and the gateway, interleaved; ``ports`` and ``pids`` by kind."""
    webhooks = Webhooks()
    posters = {kind: Poster(port, webhooks) for kind, port in ports.items()}
    try:
        return await interleaved(posters, pids)
    finally:
        for poster in posters.values():
            poster.close()


async def open_loop(
    port: int, bodies: list[tuple[bytes, dict[str, str]]], rate: float, seconds: float
) -> tuple[list[float], list[float], float]:
    """Send at ``rate``/s regardless of answers; latencies, send times, achieved rate."""
    pool: asyncio.Queue[RawClient] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(RawClient(port))
    latencies: list[float] = []
    total = int(rate * seconds)
    sent_at = [0.0] * total
    start = time.perf_counter()

    async def one(i: int) -> None:
        client = await pool.get()
        body, headers = bodies[i % len(bodies)]
        began = time.perf_counter()
        sent_at[i] = time.time()
        status = await client.post("/webhooks/whatsapp", body, headers)
        latencies.append(time.perf_counter() - began)
        pool.put_nowait(client)
        if status != 200:
            raise RuntimeError(f"status {status}")

    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - start)
    while not pool.empty():
        pool.get_nowait().close()
    return latencies, sent_at, achieved


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Stack:
    """Valkey, the three services, the fake Graph API and a gateway, in their own processes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.valkey = Valkey(work / "valkey", None, "--appendfsync", "everysec").start()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports = {n: free_port() for n in ("session", "business", "search", "fake", "gw")}
        base = {
            "APP_ENV": "production",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "READINESS_INTERVAL_SECONDS": "0.2",
            "REDIS_URL": self.valkey.url,
        }
        self.env = base
        services = {
            "session": {"SESSION_PORT": str(self.ports["session"]), "SESSION_METRICS_PORT": "0"},
            "business": {
                "BUSINESS_PORT": str(self.ports["business"]),
                "BUSINESS_METRICS_PORT": "0",
                "BUSINESS_DB_PATH": str(work / "business.db"),
                "ENCRYPTION_SECRET": "bench-encryption-" + secrets.token_hex(8),
                "REDIS_URL": "",
            },
            "search": {"SEARCH_PORT": str(self.ports["search"]), "SEARCH_METRICS_PORT": "0"},
        }
        for name, extra in services.items():
            env = {**base, **extra}
            if not env.get("REDIS_URL"):
                env.pop("REDIS_URL")
            self.processes.append(
                spawn(["-m", f"services.{name}.server"], env, work / f"{name}.log")
            )
        self.processes.append(
            spawn(
                ["-m", "tests.support.fake_clouds", str(self.ports["fake"])],
                base,
                work / "fake.log",
            )
        )

    def gateway_env(self) -> dict[str, str]:
        return {
            **self.env,
            **gateway_wiring(self.ports, f"http://127.0.0.1:{self.ports['fake']}"),
            "RATE_LIMIT_USER": "1000/minute",
            "RATE_LIMIT_BUSINESS": "100000/minute",
            "USE_ASYNC_SEARCH": "false",  # one reply per message: the search result itself
            "QUEUE_PARTITIONS": os.environ.get("QUEUE_PARTITIONS", "16"),
            "WORKER_CONCURRENCY": os.environ.get("WORKER_CONCURRENCY", "8"),
        }

    def start_gateway(self, role: str) -> subprocess.Popen[bytes]:
        return start_gateway(self.work, self.gateway_env(), self.ports["gw"], role, self.processes)

    def close(self) -> None:
        stop(*reversed(self.processes))
        self.valkey.stop()


def gateway_wiring(ports: dict[str, int], graph_api_url: str) -> dict[str, str]:
    """A benchmark gateway's addresses and secrets (shared with bench_system)."""
    return {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(ports["gw"]),
        "SESSION_SERVICE_ADDR": f"127.0.0.1:{ports['session']}",
        "BUSINESS_SERVICE_ADDR": f"127.0.0.1:{ports['business']}",
        "SEARCH_SERVICE_ADDR": f"127.0.0.1:{ports['search']}",
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "bench-verify",
        "API_KEY": API_KEY,
        "WHATSAPP_API_BASE_URL": graph_api_url,
    }


def start_gateway(
    work: Path,
    env: dict[str, str],
    port: int,
    role: str,
    processes: list[subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes]:
    """``services.gateway.main --role ROLE`` on ``port``, added to ``processes``, once up."""
    process = spawn(
        ["-m", "services.gateway.main", "--role", role], env, work / f"gateway-{role}.log"
    )
    processes.append(process)
    if not wait_for(lambda: up(f"http://127.0.0.1:{port}/health"), 60, 0.2):
        raise RuntimeError("gateway did not start")
    return process


def ack_section(stack: Stack) -> Section:
    bare_port = free_port()
    bare = spawn(["-c", BARE_APP, str(bare_port)], {}, stack.work / "bare.log")
    gateway = stack.start_gateway("web")  # the ack path only: no worker competes for the CPU
    try:
        assert wait_for(lambda: up(f"http://127.0.0.1:{bare_port}/docs"), 30, 0.1)
        users = [f"1555{n:07d}" for n in range(500)]
        measured = asyncio.run(
            ack_rates(
                {"bare": bare_port, "gateway": stack.ports["gw"]},
                {"bare": bare.pid, "gateway": gateway.pid},
            )
        )
        bare_rps, gw_rps = measured.mean("bare"), measured.mean("gateway")
        fresh = [webhook(users[i % len(users)], f"rate {i}") for i in range(3_000)]
        latencies, _, achieved = asyncio.run(open_loop(stack.ports["gw"], fresh, 1000, 3.0))
        bare_lat, _, _ = asyncio.run(open_loop(bare_port, fresh, 1000, 3.0))
    finally:
        stop(bare, gateway)
        stack.processes.remove(gateway)
    summary = summarize_latencies(latencies)
    return Section(
        "Gateway: webhook acknowledgement (verify + dedupe + enqueue + 200) vs bare FastAPI",
        figures={
            "bare FastAPI (req/s)": round(bare_rps),
            "gateway (webhooks/s)": round(gw_rps),
            f"gateway / bare per slice ({SLICES} slices of {SLICE_SECONDS} s)": (
                measured.per_slice("gateway", "bare")
            ),
            "server CPU per request (µs, /proc)": measured.cpu_per_call_us(),
            "offered 1000/s, achieved (/s)": round(achieved),
            "gateway latency at 1000/s": summary,
            "bare latency at 1000/s": summarize_latencies(bare_lat),
        },
        checks=[
            Check("gateway / bare throughput", gw_rps / bare_rps, 0.5, ">="),
            Check("ack p99 at 1000 webhooks/s", summary["p99_ms"], 25.0, "<=", " ms"),
        ],
    )


def distribution_of(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {f"p{p}_ms": round(percentile(ms, p), 2) for p in (10, 25, 50, 75, 90, 95, 99, 100)}


def measure_e2e(
    stack: Stack, text: str, prefix: str, rate: float, seconds: float
) -> tuple[list[float], int, float, int]:
    """Send ``rate``/s for ``seconds``, one message per new user; webhook sent → first reply
    accepted by the fake. Samples, sent, achieved rate, answered."""
    fake = f"http://127.0.0.1:{stack.ports['fake']}"
    users = [f"{prefix}{n:07d}" for n in range(int(rate * seconds))]
    bodies = [webhook(user, text) for user in users]
    _, sent_at, achieved = asyncio.run(open_loop(stack.ports["gw"], bodies, rate, seconds))
    sent = dict(zip(users, sent_at, strict=True))
    wanted = set(users)

    def first_replies() -> dict[str, float]:
        first: dict[str, float] = {}
        for reply in httpx.get(f"{fake}/_received", timeout=10).json():
            to = reply["body"].get("to")
            if reply["body"].get("type") and to in wanted and to not in first:
                first[to] = reply["time"]
        return first

    wait_for(lambda: len(first_replies()) >= len(users), 90, 0.5)
    answered_at = first_replies()
    samples = [answered_at[u] - sent[u] for u in users if u in answered_at]
    return samples, len(users), achieved, len(samples)


def e2e_section(stack: Stack) -> Section:
    # The ack benchmark queued tens of thousands of messages for no business: start clean.
    stack.valkey.client().flushall()
    gateway = stack.start_gateway("all")
    base = f"http://127.0.0.1:{stack.ports['gw']}"
    fake = f"http://127.0.0.1:{stack.ports['fake']}"
    try:
        if not wait_for(lambda: up(f"{base}/ready"), 60, 0.2):
            raise RuntimeError("the stack did not become ready")
        admin = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30)
        created = admin.post(
            "/admin/businesses",
            json={
                "name": "Bench Travel",
                "subdomain": "bench",
                "whatsapp_phone_number_ids": [PNID],
                "whatsapp_numbers": ["+15550109999"],
                "access_token": "bench-graph-token",
            },
        )
        created.raise_for_status()
        admin.post("/admin/cache/warmup").raise_for_status()
        admin.post("/admin/cache/warm", params={"days_ahead": 3})
        text = "flights from Madrid to Paris tomorrow for 1 adult"
        # Warm up (not measured): the engine, the search cache, the connections.
        warm = [webhook(f"1777{n:07d}", text) for n in range(50)]
        asyncio.run(open_loop(stack.ports["gw"], warm, 50, 1.0))
        wait_for(lambda: len(httpx.get(f"{fake}/_received").json()) >= 50, 30, 0.2)
        # First at a rate this machine sustains (context), then the target rate.
        light, _, _, _ = measure_e2e(stack, text, "1555", 20.0, 5.0)
        seconds = max(5.0, DURATION_S * 2)
        rate = 100.0
        samples, expected, achieved, answered = measure_e2e(stack, text, "1666", rate, seconds)
    finally:
        stop(gateway)
        stack.processes.remove(gateway)
    summary = summarize_latencies(samples)
    distribution = distribution_of(samples)
    return Section(
        "Gateway: end to end at 100 msg/s (webhook sent → reply accepted by the fake Graph API), "
        "real engine, offline provider, warm business cache",
        figures={
            "offered (/s)": rate,
            "achieved (/s)": round(achieved, 1),
            "messages": expected,
            "answered": answered,
            "distribution": distribution,
            "for context, at 20 msg/s": distribution_of(light),
        },
        checks=[
            Check("end-to-end p95", summary["p95_ms"], 100.0, "<=", " ms"),
            Check("answered / sent", answered / expected, 1.0, ">="),
        ],
    )


def run() -> list[Section]:
    # Logs stay under var/ for a look after the run.
    work = ROOT / "var" / "bench-gateway"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stack = Stack(work)
    try:
        from services.common.healthcheck import check

        for name in ("session", "business", "search"):
            address = f"127.0.0.1:{stack.ports[name]}"
            if not wait_for(lambda a=address: check(a, "", 0.5) == "SERVING", 60, 0.2):
                raise RuntimeError(f"{name} did not start")
        parts = os.environ.get("BENCH_GATEWAY_PARTS", "ack,e2e").split(",")
        sections = []
        if "ack" in parts:
            sections.append(ack_section(stack))
        if "e2e" in parts:
            sections.append(e2e_section(stack))
        return sections
    finally:
        stack.close()
