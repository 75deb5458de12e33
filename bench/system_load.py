"""The system benchmark's load: who writes what, how it is sent, and how replies are matched.

- :class:`Mix`: 10,000 users spread over the businesses; each message is a route request built
  from a Zipf-ranked route, template and date, one of the conversation tests' phrasings (Zipf by
  rank), or a follow-up (a number, *more*, *thanks*, a correction…), also Zipf-ranked.
- :func:`signed_bodies`: Cloud API webhooks, signed with ``X-Hub-Signature-256``, built before a
  step starts so the generator only writes bytes while it runs.
- :func:`offer`: an open-loop sender. Request *i* is due at ``start + i / rate`` whatever the
  answers do; its latencies are measured from that due time (no coordinated omission), and the
  rate actually put on the wire is reported next to the offered one.
- :class:`Matcher`: pairs each sent message with its reply at the fake Graph API, by recipient and
  order. The gateway marks a message read (a receipt carrying its id) when it starts on it and a
  user's messages are handled one after the other, so the first reply to a user after the
  receipt of message *m* (and before the next receipt) answers *m*.
- :func:`knee`: where the latency curve turns up.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.gateway.channels import cloud_api
from tests.bot.phrasings import CASES

ZIPF_S = 1.1
USERS = 10_000
TEMPLATES = [
    "{o} to {d} {date}",
    "flights from {o} to {d} {date}",
    "{o} to {d}",
    "I need a flight from {o} to {d} {date}",
    "to {d} from {o} {date}",
    "{o} - {d} {date} for 2 people",
    "one way {o} to {d} {date}",
    "direct flights from {o} to {d} {date}",
]
DATES = [
    "tomorrow",
    "next friday",
    "this weekend",
    "on the 5th",
    "next week",
    "dec 20",
    "in 3 days",
    "on monday",
    "3 march back 10 march",
]
FOLLOW_UPS = [
    "1",
    "more",
    "thanks",
    "hi",
    "actually sunday",
    "make it 2 adults",
    "2",
    "help",
    "new",
    "hola",
]
# Shares of the three kinds of message.
KINDS = (("route", 0.55), ("phrasing", 0.30), ("follow_up", 0.15))


def _cities(case: Any) -> tuple[str, str] | None:
    """A route from a labelled phrasing, where both ends are city names (not airport codes)."""
    named = case.o and case.d and len(case.o) > 3 and len(case.d) > 3
    if named and case.locale == "en" and case.o != case.d:
        return case.o, case.d
    return None


ROUTES: list[tuple[str, str]] = list(dict.fromkeys(r for c in CASES if (r := _cities(c))))
PHRASINGS: list[str] = [c.text for c in CASES]


class Zipf:
    """Ranks 0..n-1 with probability proportional to 1 / (rank + 1) ** s."""

    def __init__(self, n: int, s: float = ZIPF_S) -> None:
        self.cumulative = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])


@dataclass(frozen=True)
class Message:
    id: str  # provider message id (wamid.…), unique in the run
    user: str
    phone_number_id: str
    text: str
    kind: str


class Mix:
    """Deterministic (seeded) stream of messages from ``users`` users over the businesses."""

    def __init__(self, phone_number_ids: list[str], users: int = USERS, seed: int = 9) -> None:
        self.rng = random.Random(seed)
        self.pnids = phone_number_ids
        self.users = [f"1{n:010d}" for n in range(3_000_000_000, 3_000_000_000 + users)]
        self.routes, self.templates = Zipf(len(ROUTES)), Zipf(len(TEMPLATES))
        self.dates, self.phrasings = Zipf(len(DATES)), Zipf(len(PHRASINGS))
        self.follow_ups = Zipf(len(FOLLOW_UPS))
        self._kinds = [k for k, _ in KINDS]
        self._shares = [w for _, w in KINDS]
        self._count = itertools.count()

    def business_of(self, user: str) -> str:
        return self.pnids[int(user) % len(self.pnids)]

    def text(self) -> tuple[str, str]:
        kind = self.rng.choices(self._kinds, self._shares)[0]
        if kind == "route":
            o, d = ROUTES[self.routes.draw(self.rng)]
            template = TEMPLATES[self.templates.draw(self.rng)]
            date = DATES[self.dates.draw(self.rng)]
            return kind, template.format(o=o, d=d, date=date).strip()
        if kind == "phrasing":
            return kind, PHRASINGS[self.phrasings.draw(self.rng)]
        return kind, FOLLOW_UPS[self.follow_ups.draw(self.rng)]

    def next(self, tag: str = "") -> Message:
        user = self.users[self.rng.randrange(len(self.users))]
        kind, text = self.text()
        return Message(
            id=f"wamid.bench{tag}.{next(self._count):08d}",
            user=user,
            phone_number_id=self.business_of(user),
            text=text,
            kind=kind,
        )

    def take(self, n: int, tag: str = "") -> list[Message]:
        return [self.next(tag) for _ in range(n)]


def cloud_body(message: Message, display_number: str = "15550100001") -> bytes:
    text = {
        "from": message.user,
        "id": message.id,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": message.text},
    }
    contact = {"profile": {"name": "Bench User"}, "wa_id": message.user}
    payload = cloud_api.notification(message.phone_number_id, [text], [contact], display_number)
    return json.dumps(payload).encode()


def signed_bodies(messages: list[Message], secret: str) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for message in messages:
        body = cloud_body(message)
        out.append(
            (
                body,
                {
                    "Content-Type": "application/json",
                    cloud_api.SIGNATURE_HEADER: cloud_api.sign(body, secret),
                },
            )
        )
    return out


@dataclass
class Offered:
    """What the generator did in one step."""

    rate: float
    sent: int = 0
    due_at: list[float] = field(default_factory=list)  # wall clock, per request
    ack_s: list[float] = field(default_factory=list)  # due time → response read
    statuses: Counter[int] = field(default_factory=Counter)
    achieved: float = 0.0  # requests put on the wire per second
    lag_p99_ms: float = 0.0  # how late the generator wrote requests (99th percentile)


async def offer(
    port: int,
    bodies: list[tuple[bytes, dict[str, str]]],
    rate: float,
    path: str = "/webhooks/whatsapp",
    connections: int = 128,
) -> Offered:
    """Send ``bodies`` at ``rate`` per second, open loop, over keep-alive connections."""
    from bench.bench_gateway import RawClient  # here: the Locust file imports this module

    pool: asyncio.Queue[Any] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(RawClient(port))
    total = len(bodies)
    result = Offered(rate=rate, sent=total, due_at=[0.0] * total, ack_s=[0.0] * total)
    written = [0.0] * total
    start_perf = time.perf_counter() + 0.05
    start_wall = time.time() + (start_perf - time.perf_counter())

    async def one(i: int, due: float) -> None:
        client = await pool.get()
        written[i] = time.perf_counter()
        body, headers = bodies[i]
        try:
            status = await client.post(path, body, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 599  # connection failed: counted as an error
            client.close()
            client = RawClient(port)
        result.ack_s[i] = time.perf_counter() - due
        result.statuses[status] += 1
        pool.put_nowait(client)

    tasks = []
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and start_perf + i / rate <= now:
            result.due_at[i] = start_wall + i / rate
            tasks.append(asyncio.create_task(one(i, start_perf + i / rate)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start_perf + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    lags = sorted(written[k] - (start_perf + k / rate) for k in range(total))
    result.lag_p99_ms = round(lags[int(0.99 * (total - 1))] * 1000, 2) if lags else 0.0
    span = max(written) - min(written) if total > 1 else 0.0
    result.achieved = (total - 1) / span if span > 0 else float(total)
    while not pool.empty():
        pool.get_nowait().close()
    return result


class Matcher:
    """Pairs messages with replies, fed the fake's records in arrival order, a batch at a time.

    ``sent``: message id → (user, time sent). Records are ``["r", "", message_id, t]`` (a read
    receipt: the gateway started on that message) or ``["m", to, "", t]`` (a message to a user).
    """

    def __init__(self, sent: dict[str, tuple[str, float]]) -> None:
        self.sent = sent
        self.latency_s: dict[str, float] = {}  # message id → first reply time - time sent
        self.receipts: set[str] = set()  # message ids the gateway took up
        self._current: dict[str, str] = {}  # user → the message being answered
        self._unclaimed: dict[str, float] = {}  # user → when a reply came with no message open
        self._receipt_at: dict[str, float] = {}  # message id → its receipt, after such a reply

    def feed(self, records: list[list[Any]]) -> None:
        for kind, to, message_id, at in records:
            if kind == "r":
                if message_id in self.sent:
                    self.receipts.add(message_id)
                    user, sent_at = self.sent[message_id]
                    self._current[user] = message_id
                    # The receipt goes out alongside the turn, so a fast answer can reach the
                    # fake first; or that reply was the previous message's second one. Which,
                    # the next reply tells: see settle().
                    unclaimed = self._unclaimed.pop(user, None)
                    if unclaimed is not None and unclaimed >= sent_at:
                        self._receipt_at[message_id] = at
                continue
            message_id = self._current.pop(to, "")
            if message_id:
                self._answer(message_id, at)
            else:
                self._unclaimed.setdefault(to, at)

    def settle(self, ids: list[str]) -> int:
        """Messages taken up whose reply came before their receipt and no reply after: answered,
        at the receipt's time at the latest (a bound never better than the truth). How many."""
        settled = 0
        for message_id in ids:
            at = self._receipt_at.pop(message_id, None)
            if at is not None and message_id not in self.latency_s:
                settled += 1
                self._answer(message_id, at)
        return settled

    def _answer(self, message_id: str, at: float) -> None:
        if message_id not in self.latency_s:
            self.latency_s[message_id] = at - self.sent[message_id][1]


def knee(points: list[tuple[float, float, bool]], factor: float = 2.0) -> float | None:
    """The highest offered rate before the curve turns up.

    ``points``: (offered rate, p95 ms, kept up) in increasing rate. A step "turns up" when its
    p95 is more than ``factor`` times the lowest step's, or it did not keep up (not every
    message answered, or the achieved rate short of the offered one). The knee is the last
    step before the first one that turns up; ``None`` when even the first does.
    """
    if not points:
        return None
    base = points[0][1]
    last = None
    for rate, p95, kept_up in points:
        if not kept_up or p95 > factor * base:
            return last
        last = rate
    return last
