"""A change's cost inside the running session server, measured in one process.

``python -m bench.ab_session VARIANT [get|update|basic]`` starts the session server with
VARIANT's code run first: it switches the server between two behaviours by time, the original
in even periods of 0.2 s and the variant's in odd ones (``variant_on()``). 32 callers load it for
30 s while it reads its own CPU from ``/proc/<pid>/task/*/schedstat`` (ns, all threads) at
each period's edge. Each odd period is compared with the mean of its two neighbours.

Why: this machine's speed drifts by up to a factor of two from one second to the next, and two
server processes differ by ~10 to 40 µs per call even with the same code, so neither separate runs
of ``python -m bench session`` nor two servers side by side resolve a change of 10 µs. One
process switching every 0.2 s does: ``none`` (no switch) reads within ±3 µs.

To measure a change, add a variant here that calls the old code unless ``variant_on()``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.bench_session import SESSION_SERVER, get_requests, prepare, update_requests
from bench.floor import CONCURRENCY, start_server, stop
from parley.session.v1 import session_pb2 as pb
from parley.session.v1 import session_pb2_grpc
from tests.support.processes import Valkey

PERIOD_SECONDS = 0.2
SECONDS = float(os.environ.get("AB_SECONDS", "30"))
SWITCH = f"""
import time as _time
def variant_on():
    return int(_time.time() / {PERIOD_SECONDS}) % 2 == 1
def reuse_last(owner, name, copy=lambda result: result):
    # In odd periods owner.name answers (a copy of) its last result without running.
    original = getattr(owner, name)
    last = []
    def reused(*args, **kwargs):
        if variant_on() and last:
            return copy(last[0])
        last[:] = [original(*args, **kwargs)]
        return last[0]
    setattr(owner, name, reused)
"""
VARIANTS = {
    # The method's own noise: nothing switches.
    "none": "",
    # The method's scale: 50 µs of busy work per update in odd periods reads ~+75, since a
    # slower server also pays more per call for gRPC's handoffs (fewer calls share each one).
    # Read every figure here in these units.
    "busy-50us": """
import time as _t
from services.session import server
_update = server.SessionServicer.UpdateConversation
async def _busy(self, request, context):
    if variant_on():
        end = _t.thread_time() + 50e-6
        while _t.thread_time() < end:
            pass
    return await _update(self, request, context)
server.SessionServicer.UpdateConversation = _busy
""",
    # What an update does beyond one Redis round trip (checks, its script's arguments and
    # reply, the new version, the reply): in odd periods it sends a PING and answers the last
    # reply built. The most that making the handler itself cheaper can save.
    "ping-only": """
from services.session import server
_update = server.SessionServicer.UpdateConversation
_last = {}
async def _ping_only(self, request, context):
    if variant_on() and "reply" in _last:
        await self.store.redis._pipeline.command("PING")
        return _last["reply"]
    _last["reply"] = reply = await _update(self, request, context)
    return reply
server.SessionServicer.UpdateConversation = _ping_only
""",
    # What checking an update's messages or its state changes costs: in odd periods the last
    # result is reused (for the messages, as new bytes: the reply still looks them up).
    "append-reused": """
from services.session import convert
reuse_last(convert, "appended_messages", lambda out: [bytes(bytearray(raw)) for raw in out])
""",
    "state-reused": """
from services.session import convert
reuse_last(convert, "state_changes")
""",
    # What checking a state value's nesting as it is converted costs: in even periods the
    # conversion without the check (as it was before it), the check in odd ones.
    "value-depth": """
import math
from google.protobuf import struct_pb2
from services.common import struct_values
from services.session import convert
def _unchecked(value):
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise ValueError("numbers must be finite")
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        fields = value.struct_value.fields
        return {k: _unchecked(fields[k]) for k in fields}
    if kind == "list_value":
        return [_unchecked(v) for v in value.list_value.values]
    raise ValueError("a value must have one of its kinds set")
_checked = struct_values.value_to_python
convert.value_to_python = lambda value: _checked(value) if variant_on() else _unchecked(value)
""",
    # What recording the access line costs: none recorded in odd periods. Not what writing it
    # costs: a batch is written every 0.1 s, so half of an even period's lines go out in the
    # odd period after it (measure the batch in a loop: ~6 µs a line).
    "no-access-log": """
from services.common import interceptors
_deferred = interceptors.ACCESS_LOG.info
def _info(event, **fields):
    if not variant_on():
        _deferred(event, **fields)
interceptors.ACCESS_LOG.info = _info
""",
    # What building the reply costs: in odd periods an update answers the last reply built (the
    # client parses another conversation's bytes; it does not check which).
    "reply-reused": """
from services.session import convert
reuse_last(convert, "conversation_reply")
""",
    # What the full reply costs an update: the basic view in odd periods.
    "basic-view": """
from services.session import server
from parley.session.v1 import session_pb2
_update = server.SessionServicer.UpdateConversation
async def _basic(self, request, context):
    if variant_on():
        request.view = session_pb2.CONVERSATION_VIEW_BASIC
    return await _update(self, request, context)
server.SessionServicer.UpdateConversation = _basic
""",
    # What sending the full reply costs, apart from building it: in odd periods an update
    # builds the full reply and sends the basic one (built too: that costs a few µs).
    "full-reply-unsent": """
from services.session import convert
_reply = convert.conversation_reply
def _built_not_sent(conversation, created, *, basic=False):
    full = _reply(conversation, created, basic=basic)
    if variant_on() and not basic:
        return _reply(conversation, created, basic=True)
    return full
convert.conversation_reply = _built_not_sent
""",
    # What encoding an update's new messages for its reply costs: in odd periods entries never
    # encoded before are left out of the reply. An upper bound: a later reply in an even
    # period encodes them then.
    "skip-uncached": """
from services.session import convert
_cached = convert._cached_message
_seen = set()
def _only_cached(raw):
    if variant_on() and raw not in _seen:
        return b""
    _seen.add(raw)
    return _cached(raw)
convert._cached_message = _only_cached
""",
}


def cpu_ns(pid: int) -> int:
    """CPU time of all of a process's threads, in ns (scheduler statistics)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as stat:
                total += int(stat.read().split()[0])
        except OSError:  # a thread that ended
            pass
    return total


async def measure(address: str, pid: int, kind: str) -> list[float]:
    """Per odd period: its µs of CPU per call minus its neighbours' mean."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        await prepare(stub)
        gets = get_requests()
        updates = update_requests(
            pb.CONVERSATION_VIEW_BASIC if kind == "basic" else pb.CONVERSATION_VIEW_UNSPECIFIED
        )

        async def call() -> None:
            if kind == "get":
                await stub.GetConversation(random.choice(gets), timeout=5)
            else:
                await stub.UpdateConversation(random.choice(updates), timeout=5)

        for _ in range(200):
            await call()
        calls: dict[int, int] = {}
        cpu_at: dict[int, int] = {}
        stop_at = time.time() + SECONDS

        async def worker() -> None:
            while time.time() < stop_at:
                await call()
                period = int(time.time() / PERIOD_SECONDS)
                calls[period] = calls.get(period, 0) + 1

        async def sampler() -> None:
            while time.time() < stop_at:
                period = int(time.time() / PERIOD_SECONDS)
                cpu_at.setdefault(period, cpu_ns(pid))
                await asyncio.sleep((period + 1) * PERIOD_SECONDS - time.time() + 0.0005)

        await asyncio.gather(sampler(), *(worker() for _ in range(CONCURRENCY)))
    per_call = {
        period: (cpu_at[period + 1] - cpu_at[period]) / calls[period] / 1000
        for period in cpu_at
        if period + 1 in cpu_at and calls.get(period, 0) > 50
    }
    return [
        per_call[p] - (per_call[p - 1] + per_call[p + 1]) / 2
        for p in per_call
        if p % 2 == 1 and p - 1 in per_call and p + 1 in per_call
    ]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VARIANTS or argv[1:2] not in ([], ["get"], ["update"], ["basic"]):
        print(__doc__, "\nvariants:", ", ".join(VARIANTS))
        return 2
    variant, kind = argv[0], (argv[1] if len(argv) > 1 else "update")
    with tempfile.TemporaryDirectory() as directory:
        valkey = Valkey(Path(directory) / "valkey").start()
        source = SESSION_SERVER.replace(
            "from services.session.server import main",
            SWITCH + VARIANTS[variant] + "\nfrom services.session.server import main",
        )
        env = {
            "REDIS_URL": valkey.url,
            "SESSION_METRICS_PORT": "0",
            "READINESS_INTERVAL_SECONDS": "30",
        }
        process, address = start_server(source, env)
        try:
            differences = asyncio.run(measure(address, process.pid, kind))
        finally:
            stop(process)
            valkey.stop()
    print(
        f"{variant} / {kind}: variant minus original, µs of server CPU per call: median "
        f"{statistics.median(differences):+.1f}, mean {statistics.fmean(differences):+.1f} "
        f"(n={len(differences)} periods)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
