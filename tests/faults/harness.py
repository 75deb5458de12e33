"""The whole stack under a steady load of signed webhooks, for the fault scenarios.

- :class:`Stack`: a Valkey of its own (append-only), the session, business and search services,
  the gateway as one web process plus separate worker processes running the real conversation
  engine, and a local fake of the Graph API as the reply sink (``OUTBOX_ONLY=false``).
- :class:`Load`: many users, each writing complete flight requests (*LHR to JFK on 2027-01-15*)
  at a steady overall rate, retrying a webhook the way Meta does while the gateway answers 5xx.
- :func:`tally`: which message got which replies.

How a reply is tied to its message: message *k* of user *u* asks for a departure date of its own
(``first day + k + u // 3``), and every reply the engine gives to a complete request names that date
(*Searching flights … for Sun 6 Dec …*, the results header *✈️ London (LHR) → … · Sun 6 Dec*, the
*search isn't available … (… Sun 6 Dec)* apology, *No flights found … on Sun 6 Dec*). A message is
**answered** when at least one *final* reply (results, stale results, no results or the
unavailable apology) names its date; a *Searching …* notice alone is not an answer. A message is
**answered twice** when it got more than one final reply, or any reply of it arrived twice.
A reply that names no message's date is counted as **other** (it would mean the bot misread a
message or the rate limit spoke). Of those answered twice, the ones **at a kill** are what
docs/gateway.md names as the limit of at-least-once delivery: the worker handling the message was
SIGKILLed after the provider had accepted a reply and before the sent log recorded it, and the
next worker sent that reply again (see :class:`Kill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis

from parley.search.v1 import search_pb2, search_pb2_grpc
from tests.support.fake_clouds import FakeClouds, Received
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for
from tests.support.stack import (
    Business,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    signed_cloud,
    start_gateway,
    start_services,
    start_worker,
)

FULL = os.environ.get("FAULTS_FULL", "") not in ("", "0", "false")

# Routes by airport code: resolution is exact, so every reply is a search answer.
ROUTES = [("LHR", "JFK"), ("CDG", "FCO"), ("MAD", "BCN")]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
FINAL_MARKS = ("✈️ *", "Sorry, flight search isn't available", "No flights found")


def day_label(day: dt.date) -> str:
    """The engine's English date (``services/gateway/bot/offers.day``)."""
    return f"{WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]}"


@dataclass
class Kill:
    """A worker SIGKILLed, and what it left: enough to tell a reply sent again because of the
    kill's instant from any other reply sent twice."""

    at: float  # time.time() just before the signal (the fake Graph API's clock)
    ports: set[int]  # the local ports of the worker's connections to the fake Graph API
    queued: bytes  # every queue entry's fields: a message there was not finished
    recorded: dict[str, int]  # replies in each message's sent log (by provider message id)


def _connections(pid: int, port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Stack:
    valkey: Valkey
    services: Services
    search_metrics_port: int
    failure_file: Path
    fake: FakeClouds
    gateway: Gateway
    business: Business
    workers: list[ServiceProcess] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)

    @property
    def search_addr(self) -> str:
        return self.services.search

    def process(self, name: str) -> ServiceProcess:
        index = {"session": 0, "business": 1, "search": 2}[name]
        return self.services.processes[index]

    def restart_service(self, name: str, down_seconds: float = 0.0) -> None:
        """SIGTERM the service (it drains and exits), keep it down ``down_seconds``, start it
        again on the same port; return once it is SERVING."""
        index = {"session": 0, "business": 1, "search": 2}[name]
        old = self.services.processes[index]
        old.stop()
        time.sleep(down_seconds)
        new = ServiceProcess(old.module, {**old.env}, old.log_path).start()
        self.services.processes[index] = new
        addr = [self.services.session, self.services.business, self.services.search][index]
        new.wait_serving(addr, "", 60)

    def restart_web(self) -> None:
        """SIGTERM the gateway's web process (it drains and exits), start a new one on the same
        port; return once it is ready."""
        old = self.gateway.processes[0]
        old.stop()
        new = ServiceProcess(old.module, {**old.env}, old.log_path).start()
        self.gateway.processes[0] = new
        assert wait_for(self.ready, 60, 0.1), f"the new web process not ready:\n{new.log[-3000:]}"

    def restart_worker(self, index: int, tag: str) -> None:
        """SIGTERM a worker (it finishes its messages and hands its partitions back), then a
        new one."""
        self.workers[index].stop()
        self.start_worker(index, tag)

    def kill_worker(self, index: int) -> None:
        worker = self.workers[index]
        assert worker.process is not None
        ports = _connections(worker.process.pid, self.fake.port)
        at = time.time()
        worker.process.kill()  # SIGKILL
        worker.wait(10)
        # Read before anyone takes its partitions over (after VISIBILITY_TIMEOUT_SECONDS).
        self.kills.append(Kill(at, ports, *self._queue_state()))

    def _queue_state(self) -> tuple[bytes, dict[str, int]]:
        client: Any = redis.Redis.from_url(self.gateway.redis_url)  # redis-py's sync stubs
        try:
            queued = b"\n".join(
                value
                for key in client.scan_iter("gw:q:*")
                for _, fields in client.xrange(key)
                for value in fields.values()
            )
            recorded = {
                key.decode().split(":", 3)[3]: int(client.scard(key))
                for key in client.scan_iter("gw:sent:cloud_api:*")
            }
        finally:
            client.close()
        return queued, recorded

    def start_worker(self, index: int, tag: str) -> None:
        log = self.services.log_dir / f"worker{index}-{tag}.log"
        self.workers[index] = start_worker(self.gateway.env, log)
        self.gateway.processes.append(self.workers[index])

    def queue_idle(self) -> bool:
        """Every queue stream empty: nothing waiting, nothing in flight."""
        client = redis.Redis.from_url(self.gateway.redis_url, socket_connect_timeout=1)
        try:
            return all(int(client.xlen(key)) == 0 for key in client.scan_iter("gw:q:*"))
        except redis.RedisError:
            return False
        finally:
            client.close()

    def dead_letters(self) -> list[dict[str, str]]:
        client = redis.Redis.from_url(self.gateway.redis_url, decode_responses=True)
        try:
            return [fields for _, fields in client.xrange("gw:dead")]
        finally:
            client.close()

    def breakers(self) -> dict[str, int]:
        with grpc.insecure_channel(self.search_addr) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            response = stub.ListCircuitBreakers(search_pb2.ListCircuitBreakersRequest(), timeout=5)
        return {b.name: b.state for b in response.circuit_breakers}

    def search_metric(self, prefix: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.search_metrics_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix) and not line.startswith("#")
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.gateway.url}/health/ready", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.gateway.stop()
        for process in self.services.processes:
            process.stop()
        self.fake.stop()
        self.valkey.stop()


# Settings of the fault runs (documented in docs/reliability.md).
SERVICE_ENV = {"LOG_LEVEL": "INFO"}
GATEWAY_ENV = {
    "GATEWAY_ENGINE": "services.gateway.bot:create_engine",
    "OUTBOX_ONLY": "false",
    "LOG_LEVEL": "INFO",
    # The load is many users of one business at a steady rate: the limits are not the subject.
    "RATE_LIMIT_USER": "10000/minute",
    "RATE_LIMIT_BUSINESS": "1000000/minute",
    # A reply is "answered" once, so the optional extraction model stays out of it.
    "OPENAI_API_KEY": "",
    "MAX_ATTEMPTS": "10",
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_MAX_SECONDS": "2",
    "VISIBILITY_TIMEOUT_SECONDS": "3",
    "GRPC_TIMEOUT_SECONDS": "3",
}


def start_stack(root: Path, workers: int = 2) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    log_dir = root / "logs"
    valkey = Valkey(root / "valkey").start()
    fake = FakeClouds().start()
    metrics_port = free_port()
    failure_file = root / "search-provider-down"
    redis_base = f"redis://127.0.0.1:{valkey.port}"
    services = start_services(
        log_dir,
        common=SERVICE_ENV,
        session={
            "REDIS_URL": f"{redis_base}/1",
            "SESSION_HISTORY_LIMIT": "1000",  # every turn stays checkable
        },
        business={
            "BUSINESS_DB_PATH": str(root / "business.db"),
            "ENCRYPTION_SECRET": "faults-" + secrets.token_hex(12),
        },
        search={
            "SEARCH_METRICS_PORT": str(metrics_port),
            "REDIS_URL": f"{redis_base}/2",
            "SEARCH_OFFLINE_FAILURE_FILE": str(failure_file),
            # Results go stale after 1 s, so an outage finds stale entries to serve.
            "REDIS_CACHE_TTL_SECONDS": "1",
            "SEARCH_BREAKER_RECOVERY_SECONDS": "5" if FULL else "2",
        },
        timeout=90,
    )
    gateway = start_gateway(
        services, fake, f"{redis_base}/0", "gateway", role="web", workers=workers, **GATEWAY_ENV
    )
    business = with_retries(lambda: create_business(gateway))
    return Stack(
        valkey,
        services,
        metrics_port,
        failure_file,
        fake,
        gateway,
        business,
        workers=gateway.processes[1:],
    )


def with_retries(make: Any, tries: int = 5) -> Any:
    """The admin call behind ``create_business`` has a short gRPC deadline; on a machine busy
    with other work the first one after start-up can miss it (503)."""
    for attempt in range(tries):
        try:
            return make()
        except (AssertionError, httpx.HTTPError):
            if attempt == tries - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


# --- the load --------------------------------------------------------------------------------


@dataclass
class Message:
    user: str
    k: int
    wamid: str
    text: str
    label: str
    accepted: bool = False
    refused: bool = False
    posted_at: float = 0.0  # monotonic: the first delivery attempt of its webhook
    accepted_at: float = 0.0  # monotonic: the first 200 (the message is queued by then)


@dataclass
class Load:
    """``rate`` messages per second spread over ``users`` users (round robin), each message a
    complete request with a date of its own. ``twice``: every webhook is delivered twice, each
    copy after its own random delay (0 to 2 s), so copies and messages arrive out of order."""

    stack: Stack
    name: str
    users: int
    rate: float
    twice: bool = False
    first_day_offset: int = 5
    messages: list[Message] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.user_ids = [f"1{secrets.randbelow(10**10):010d}" for _ in range(self.users)]
        self.first_day = dt.date.today() + dt.timedelta(days=self.first_day_offset)

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 180) -> None:
        """Stop creating messages; wait until each one created was accepted (or given up)."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load generator did not finish"

    def _message(self, index: int) -> Message:
        u = index % self.users
        k = index // self.users
        origin, destination = ROUTES[u % len(ROUTES)]
        # Distinct for each of a user's messages; users of one route ask for one date a message
        # apart, so the same query comes back within seconds (cached, then stale).
        day = self.first_day + dt.timedelta(days=k + u // len(ROUTES))
        return Message(
            user=self.user_ids[u],
            k=k,
            wamid=f"wamid.{self.name}.{u}.{k}.{secrets.token_hex(4)}",
            text=f"{origin} to {destination} on {day.isoformat()}",
            label=day_label(day),
        )

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(
            base_url=self.stack.gateway.url, timeout=10, limits=limits
        ) as client:
            tasks: list[asyncio.Task[None]] = []
            start = time.monotonic()
            index = 0
            while not self._stop.is_set():
                message = self._message(index)
                self.messages.append(message)
                tasks.append(asyncio.create_task(self._deliver(client, message)))
                index += 1
                await asyncio.sleep(max(0.0, start + index / self.rate - time.monotonic()))
            await asyncio.gather(*tasks)

    async def _deliver(self, client: httpx.AsyncClient, message: Message) -> None:
        payload = cloud_payload(
            self.stack.business.phone_number_id, message.user, message.text, message.wamid
        )
        body, headers = signed_cloud(payload)
        copies = 2 if self.twice else 1
        results = await asyncio.gather(
            *(
                self._post(
                    client, message, body, headers, random.uniform(0, 2) if self.twice else 0.0
                )
                for _ in range(copies)
            )
        )
        message.accepted = any(results)
        message.refused = not message.accepted

    async def _post(
        self,
        client: httpx.AsyncClient,
        message: Message,
        body: bytes,
        headers: dict[str, str],
        delay: float,
    ) -> bool:
        """Deliver until 200, like the provider: retry 5xx and connection errors for 2 min."""
        await asyncio.sleep(delay)
        message.posted_at = message.posted_at or time.monotonic()
        deadline = time.monotonic() + 120
        backoff = 0.2
        while True:
            try:
                response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
                self.statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    message.accepted_at = message.accepted_at or time.monotonic()
                    return True
                if response.status_code < 500:
                    return False
            except httpx.HTTPError as error:
                self.statuses[type(error).__name__] += 1
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)


# --- counting --------------------------------------------------------------------------------


@dataclass
class Tally:
    scenario: str
    sent: int = 0
    refused: int = 0
    answered: int = 0
    twice: int = 0
    twice_at_a_kill: int = 0  # of ``twice``: the instant docs/gateway.md names (see Kill)
    never: int = 0
    out_of_order: int = 0
    other: int = 0
    stale: int = 0
    unavailable: int = 0
    notes: str = ""
    seconds: float = 0.0
    never_examples: list[str] = field(default_factory=list)
    twice_examples: list[str] = field(default_factory=list)
    order_examples: list[str] = field(default_factory=list)
    other_examples: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "answered": self.answered,
            "answered twice": self.twice,
            "never answered": self.never,
            "out of order": self.out_of_order,
            "other replies": self.other,
            "stale shown": self.stale,
            "told unavailable": self.unavailable,
            "refused (never 200)": self.refused,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
        }


def tally(scenario: str, fake: FakeClouds, load: Load, kills: list[Kill] | None = None) -> Tally:
    result = Tally(scenario)
    by_user: dict[str, list[Message]] = {}
    for message in load.messages:
        by_user.setdefault(message.user, []).append(message)
    result.users = list(by_user)
    for user, messages in by_user.items():
        texts = fake.texts(user)
        received = fake.replies(user)  # in the order of ``texts``
        matched: set[int] = set()
        replies: dict[str, list[int]] = {}  # message → where its replies are in ``texts``
        for message in messages:
            if not message.accepted:
                result.refused += 1
                continue
            result.sent += 1
            mine = [
                (i, t)
                for i, t in enumerate(texts)
                if message.label in t and (t.startswith("Searching") or _final(t))
            ]
            matched.update(i for i, _ in mine)
            replies[message.wamid] = [i for i, _ in mine]
            finals = [t for _, t in mine if _final(t)]
            repeated = any(n > 1 for n in Counter(t for _, t in mine).values())
            if finals:
                result.answered += 1
            else:
                result.never += 1
                result.never_examples.append(f"{message.wamid} {message.text!r}: {texts}")
            if len(finals) > 1 or repeated:
                result.twice += 1
                if explained_by_a_kill(message, [received[i] for i, _ in mine], kills or []):
                    result.twice_at_a_kill += 1
                else:
                    result.twice_examples.append(f"{message.wamid} {message.text!r}: {texts}")
            result.stale += sum("Live search is unavailable" in t for t in finals)
            result.unavailable += sum(t.startswith("Sorry, flight search") for t in finals)
        result.out_of_order += _out_of_order(messages, replies, texts, result.order_examples)
        for i, text in enumerate(texts):
            if i not in matched:
                result.other += 1
                result.other_examples.append(f"{user}: {text[:200]!r}")
    return result


def explained_by_a_kill(message: Message, replies: list[Received], kills: list[Kill]) -> bool:
    """Whether ``message``, answered twice, was so only at the instant docs/gateway.md names:
    a kill found it still queued with replies the provider had accepted, the latest of them on
    the killed worker's connections, that its sent log did not hold yet; and what came twice is
    no more than those."""
    texts = [_text(r) for r in replies]
    extra = sum(n - 1 for n in Counter(texts).values())
    extra += max(0, len({t for t in texts if _final(t)}) - 1)
    for kill in kills:
        if message.wamid.encode() not in kill.queued:
            continue
        # A request on its way at the kill may still be taken after it: by its connection.
        before = [r for r in replies if r.time < kill.at or r.peer in kill.ports]
        unrecorded = len(before) - kill.recorded.get(message.wamid, 0)
        latest = before[len(before) - unrecorded :] if unrecorded > 0 else []
        if latest and all(r.peer in kill.ports for r in latest) and extra <= unrecorded:
            return True
    return False


def _text(received: Received) -> str:
    if received.body["type"] == "text":
        return str(received.body["text"]["body"])
    return str(received.body["interactive"]["body"]["text"])


def _out_of_order(
    messages: list[Message], replies: dict[str, list[int]], texts: list[str], examples: list[str]
) -> int:
    """A user's messages are answered in the order they were queued: every reply to a message
    comes before any reply to a later one. Only pairs whose order is certain are compared: the
    earlier one's webhook had its 200 before the later one's was first posted (a webhook
    retried through an outage may be queued after one sent after it)."""
    found = 0
    answered = [m for m in messages if m.accepted and replies.get(m.wamid)]
    for later in answered:
        before = [m for m in answered if m.accepted_at < later.posted_at]
        if not before:
            continue
        last = max(before, key=lambda m: m.accepted_at)
        if max(replies[last.wamid]) > min(replies[later.wamid]):
            found += 1
            examples.append(f"{last.text!r} answered after {later.text!r}: {texts}")
    return found


def _final(text: str) -> bool:
    return text.startswith(FINAL_MARKS)


def wait_all_answered(stack: Stack, load: Load, timeout: float) -> None:
    """Until every accepted message is answered and the queue is empty (or ``timeout``)."""

    def done() -> bool:
        if not stack.queue_idle():
            return False
        current = tally("", stack.fake, load)
        return current.never == 0

    wait_for(done, timeout, 0.5)
    # Anything still in flight (a retry, a late duplicate) shows up within this pause.
    time.sleep(2)
    wait_for(stack.queue_idle, 30, 0.5)
