"""Nothing lost, nothing twice: dead workers, Redis outages, retries, dead letters, limits."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.redact import mask_phone
from services.gateway.queue import DEAD, Queue, replay_claim_key, sent_log_key, stream_key
from services.gateway.worker import RATE_NOTICE
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.proxy import RawAnswers, ReplyCutter
from tests.support.stack import (
    API_KEY,
    REMOTE_INVALIDATIONS,
    Business,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    dead_letters,
    meta_wamid,
    metric,
    new_wa_id,
    next_db,
    post_cloud,
    queue_lengths,
    signed_cloud,
    signed_twilio,
    start_gateway,
    start_worker,
    twilio_form,
)

T = TypeVar("T")


@pytest.fixture(scope="module")
def limited(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    """A gateway with a low per-user rate limit and few attempts."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "reliability",
        RATE_LIMIT_USER="4/minute",
        MAX_ATTEMPTS="3",
    )
    gw.business = create_business(gw)
    yield gw
    gw.stop()


def slow_message_in_flight(
    gw: Gateway, fake_clouds: FakeClouds, business: Business, text: str
) -> str:
    """Post ``text`` (the test engine's "slow N …") from a new user and return that user once
    a worker has started on it: the read receipt goes out when work starts."""
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, text)
    message_id = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    with gw.http as client:
        assert post_cloud(client, payload).status_code == 200
    assert wait_for(lambda: fake_clouds.read_receipts(message_id), 20)
    return wa_id


def test_worker_killed_mid_message_is_answered_once(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "sigkill",
        role="web",
        workers=1,
    )
    try:
        business = create_business(gw)
        wa_id = slow_message_in_flight(gw, fake_clouds, business, "slow 1.5 then die")
        worker = gw.processes[1]
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        assert fake_clouds.replies(wa_id) == []
        gw.processes.append(start_worker(gw.env, services.log_dir / "sigkill-worker-b.log"))
        assert wait_for(lambda: fake_clouds.replies(wa_id), 30)
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "next"))
        assert wait_for(lambda: len(fake_clouds.replies(wa_id)) >= 2, 20)
        assert fake_clouds.texts(wa_id) == ["echo: slow 1.5 then die #1", "echo: next #2"]
        assert "taking over an entry whose worker died" in gw.processes[2].log
    finally:
        gw.stop()


def test_a_worker_killed_after_finding_the_user_over_the_limit_does_not_answer_in_full(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """The worker finds the user over their limit, sends the one notice and dies before
    acknowledging. The limits count a message once, so the retry does not check them again:
    it must learn the decision from the attempt's record. (Was a bug: the retry answered the
    message in full, as if the user had been under the limit.)"""
    graph = ReplyCutter(fake_clouds.url.removeprefix("http://"), hold=30).start()
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "limit-then-die",
        role="web",
        workers=1,
        RATE_LIMIT_USER="1/minute",
        WHATSAPP_API_BASE_URL=f"http://{graph.address}",
    )
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "first"))
            assert wait_for(lambda: fake_clouds.texts(wa_id) == ["echo: first #1"], 20)
            # The notice reaches Meta; its answer is held until the worker is killed.
            graph.cut_reply_to(RATE_NOTICE.encode())
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "second"))
        assert wait_for(lambda: len(fake_clouds.texts(wa_id)) == 2, 20)
        worker = gw.processes[1]
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        gw.processes.append(start_worker(gw.env, services.log_dir / "limit-then-die-b.log"))
        assert wait_for(lambda: queue_lengths(gw.redis_url) == 0, 30), "never finished"
        assert fake_clouds.texts(wa_id) == ["echo: first #1", RATE_NOTICE]
    finally:
        gw.stop()
        graph.stop()


def test_a_reaction_over_the_users_limit_gets_no_rate_notice(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """A reaction (a 👍 on a reply) is never answered, over the user's limit too: the one notice
    of the window waits for a message the user wrote. (Was a bug: a reaction that found the user
    over their limit was answered with the rate-limit notice, and the text after it got none.)"""
    business = limited.business
    assert business is not None
    wa_id = new_wa_id()
    written = [f"text {n}" for n in range(4)]  # the fixture's 4/minute
    with limited.http as client:
        for text in written:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, text))
        assert wait_for(lambda: len(fake_clouds.texts(wa_id)) == 4, 20)
        thumbs_up = {"message_id": meta_wamid(wa_id), "emoji": "\N{THUMBS UP SIGN}"}
        reaction = cloud_payload(
            business.phone_number_id, wa_id, "", type="reaction", reaction=thumbs_up
        )
        assert post_cloud(client, reaction).json()["queued"] == 1
        # Acknowledged once handled (a notice sent before): the queue empties.
        assert wait_for(lambda: queue_lengths(limited.redis_url) == 0, 20)
        assert len(fake_clouds.texts(wa_id)) == 4
        post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "one more"))
    assert wait_for(lambda: len(fake_clouds.texts(wa_id)) == 5, 20)
    assert fake_clouds.texts(wa_id)[4] == RATE_NOTICE


def test_delivery_statuses_of_a_webhook_refused_with_503_are_counted_once(
    services: Services, fake_clouds: FakeClouds, fresh_valkey: Valkey
) -> None:
    """A webhook's delivery statuses were counted before its messages were queued: while Redis
    was down, each retry of a webhook carrying both (Meta batches them) counted its statuses
    again, and gateway_message_statuses_total grew with the provider's retries."""
    gw = start_gateway(services, fake_clouds, fresh_valkey.url, "statuses-503")
    try:
        business = create_business(gw)
        payload = cloud_payload(business.phone_number_id, new_wa_id(), "with a status")
        payload["entry"][0]["changes"][0]["value"]["statuses"] = [
            {"id": "wamid.status-once", "status": "delivered", "recipient_id": "15550002"}
        ]
        delivered = 'gateway_message_statuses_total{channel="cloud_api",status="delivered"}'
        with gw.http as client:
            fresh_valkey.stop()
            for _ in range(3):  # the provider retries what got 503
                assert post_cloud(client, payload).status_code == 503
            fresh_valkey.start()
            assert wait_for(lambda: post_cloud(client, payload).status_code == 200, 20)
        assert metric(gw, delivered) == 1
    finally:
        gw.stop()


def test_redis_down_gives_503_and_every_accepted_message_is_answered(
    services: Services, fake_clouds: FakeClouds, fresh_valkey: Valkey
) -> None:
    gw = start_gateway(services, fake_clouds, fresh_valkey.url, "redis-down")
    try:
        business = create_business(gw)
        users = [new_wa_id() for _ in range(6)]
        accepted: list[str] = []
        with gw.http as client:
            for user in users[:3]:
                response = post_cloud(
                    client, cloud_payload(business.phone_number_id, user, "before")
                )
                assert response.status_code == 200
                accepted.append(user)
            fresh_valkey.stop()
            for user in users[3:5]:
                response = post_cloud(
                    client, cloud_payload(business.phone_number_id, user, "during")
                )
                assert response.status_code == 503
            assert client.get("/ready").status_code == 503
            fresh_valkey.start()
            # The provider retries what got 503; keep going until Redis takes it.
            for user in users[3:]:
                payload = cloud_payload(business.phone_number_id, user, "after")
                assert wait_for(lambda p=payload: post_cloud(client, p).status_code == 200, 20)
                accepted.append(user)
        for user in accepted:
            assert wait_for(lambda u=user: fake_clouds.replies(u), 30), f"{user} not answered"
            assert len(fake_clouds.replies(user)) == 1
        # Each refused webhook is counted; the log says it once, and once when it is over.
        refused = gw.processes[0].log_events("queue unavailable; answering 503")
        assert [e["level"] for e in refused][:1] == ["error"], refused
        assert {e["level"] for e in refused[1:]} <= {"debug"}, refused
        (back,) = gw.processes[0].log_events("queue reachable again: webhooks accepted")
        assert back["failures"] == len(refused) >= 2
    finally:
        gw.stop()


def test_a_reply_sent_as_redis_fills_up_is_not_sent_again(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """Redis reaches ``maxmemory`` (noeviction) while a message is in flight: the reply goes
    out, but neither its sent-log record nor the turn's save can be written (one Redis holds
    both, as with compose and ``make run``). Once memory is freed, the message is finished
    without a second reply. (Was a bug: the record was dropped as best effort, and the next
    attempt, finding neither, answered again.)"""
    gw = start_gateway(
        services, fake_clouds, f"redis://127.0.0.1:{valkey.port}/{next_db()}", "oom-sent"
    )
    admin = redis.Redis(port=valkey.port)
    try:
        wa_id = slow_message_in_flight(gw, fake_clouds, create_business(gw), "slow 1.5 full")
        admin.config_set("maxmemory", 1)  # every write refused from now on
        assert wait_for(lambda: fake_clouds.texts(wa_id), 20)
        assert wait_for(lambda: gw.processes[0].log_events("could not record a sent reply"), 20), (
            gw.processes[0].log[-3000:]
        )
        admin.config_set("maxmemory", 0)
        assert wait_for(lambda: queue_lengths(gw.redis_url) == 0, 30), "never finished"
        assert fake_clouds.texts(wa_id) == ["echo: slow 1.5 full #1"]
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        gw.stop()


def test_a_session_redis_out_of_memory_holds_messages_back_without_dead_letters(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, fresh_valkey: Valkey
) -> None:
    """The session service's Redis is full (``noeviction``): it answers RESOURCE_EXHAUSTED
    until memory is freed, which says nothing about the message. The message waits, as for a
    service that is down, and is answered once writes resume. (Was a bug: taken for the
    message's own failure, it used up MAX_ATTEMPTS in a second and was dead-lettered.)"""
    gw = start_gateway(services, fake_clouds, fresh_valkey.url, "session-oom")  # queue elsewhere
    session_redis = redis.Redis(port=valkey.port)
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        session_redis.config_set("maxmemory", 1)  # the session service refuses every write
        with gw.http as client:
            assert (
                post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "hi")).status_code
                == 200
            )

        def refused() -> int:
            return sum(
                "RESOURCE_EXHAUSTED" in str(event.get("error"))
                for event in gw.processes[0].log_events("message failed; will retry")
            )

        assert wait_for(lambda: refused() >= 5 or dead_letters(gw), 20)
        session_redis.config_set("maxmemory", 0)
        assert wait_for(lambda: fake_clouds.texts(wa_id), 20), dead_letters(gw)
        assert fake_clouds.texts(wa_id) == ["echo: hi #1"]
        assert dead_letters(gw) == []
    finally:
        session_redis.config_set("maxmemory", 0)
        session_redis.close()
        gw.stop()


def test_a_failed_send_is_retried_and_answered_once(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    assert limited.business is not None
    wa_id = new_wa_id()
    fake_clouds.failures.append((500, {"error": {"code": 1, "message": "temporary"}}))
    with limited.http as client:
        assert (
            post_cloud(
                client, cloud_payload(limited.business.phone_number_id, wa_id, "retry me")
            ).status_code
            == 200
        )
    # The fake records the refused message too: wait for the retry's (else it may take a
    # failure the next test scripts).
    assert wait_for(lambda: fake_clouds.texts(wa_id) == ["echo: retry me #1"] * 2, 20)
    assert metric(limited, "gateway_retries_total") >= 1


@pytest.mark.parametrize("body", ["cut short", "stalled"])
def test_a_reply_accepted_with_a_broken_body_is_not_sent_again(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, body: str
) -> None:
    """The Graph API answers 200 and the body after its head is cut off (a proxy's connection
    reset) or never comes: the status says Meta took the message, so it is sent once and
    counted accepted. (Was a bug: the body's failure made the send look failed, `error` or
    `timeout`, and the message was retried, so the user got the reply twice.)"""
    reply = f"echo: {body} #1".encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    whole = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.out"}]}'
    broken: list[bytes] = []

    def graph(request: bytes) -> tuple[bytes, bool]:
        if reply in request and not broken:
            broken.append(request)
            return head + b'{"messaging_product":', body == "cut short"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(whole) + whole, False

    raw = RawAnswers(graph).start()
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "accepted-broken-body",
        WHATSAPP_API_BASE_URL=raw.url,
    )
    try:
        business = create_business(gw)
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, new_wa_id(), body))
        answered = 'gateway_messages_processed_total{outcome="answered"}'
        assert wait_for(lambda: metric(gw, answered) == 1, 30)
        assert [r for r in raw.requests if reply in r] == broken
        assert metric(gw, 'gateway_sends_total{outcome="accepted"') == 1
        assert metric(gw, "gateway_retries_total") == 0
    finally:
        gw.stop()
        raw.stop()


def test_a_saved_turn_whose_answer_was_lost_is_not_saved_again(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """The session service makes the worker's UpdateConversation, and the connection drops
    before its answer leaves (a restart, a network cut): the call is sent again (the channel's
    retry on UNAVAILABLE) and meets the version its own write made. (Was a bug: the worker took
    it for another writer's and applied its turn again, so the conversation held the user's
    message and the reply twice.) Another writer's update in between is still kept, with the
    turn applied on top of it."""
    cutter = ReplyCutter(services.session).start()
    redis_url = f"redis://127.0.0.1:{valkey.port}/{next_db()}"
    gw = start_gateway(
        services, fake_clouds, redis_url, "lost-save", SESSION_SERVICE_ADDR=cutter.address
    )
    channel = grpc.insecure_channel(services.session)  # straight to the service
    session = session_pb2_grpc.SessionServiceStub(channel)
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        key = session_pb2.ConversationKey(
            business_id=business.id, user_id=wa_id, role=session_pb2.CONVERSATION_ROLE_CLIENT
        )
        first = cloud_payload(business.phone_number_id, wa_id, "hello")
        first_id = first["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        cutter.cut_reply_to(first_id.encode())  # only UpdateConversation carries it
        slow = cloud_payload(business.phone_number_id, wa_id, "slow 1 meanwhile")
        slow_id = slow["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        with gw.http as client:
            assert post_cloud(client, first).status_code == 200
            assert wait_for(lambda: queue_lengths(redis_url) == 0 and cutter.cuts == 1, 20)
            assert post_cloud(client, slow).status_code == 200
            # While the engine sleeps on it, another writer updates the conversation.
            assert wait_for(lambda: fake_clouds.read_receipts(slow_id), 20)
            session.UpdateConversation(
                session_pb2.UpdateConversationRequest(
                    key=key,
                    append=[
                        session_pb2.Message(role=session_pb2.MESSAGE_ROLE_SYSTEM, content="note")
                    ],
                ),
                timeout=5,
            )
        assert wait_for(lambda: len(fake_clouds.texts(wa_id)) == 2, 20)
        assert wait_for(lambda: queue_lengths(redis_url) == 0, 20)
        assert fake_clouds.texts(wa_id) == ["echo: hello #1", "echo: slow 1 meanwhile #2"]
        conversation = session.GetConversation(
            session_pb2.GetConversationRequest(key=key), timeout=5
        ).conversation
        assert [m.content for m in conversation.history] == [
            "hello",
            "echo: hello #1",
            "note",
            "slow 1 meanwhile",
            "echo: slow 1 meanwhile #2",
        ]
        assert conversation.version == 4  # created, a write per turn and the other writer's
    finally:
        channel.close()
        gw.stop()
        cutter.stop()


def post_long_reply_then_another(
    limited: Gateway, fake_clouds: FakeClouds, failures: list[tuple[int, dict[str, Any]] | None]
) -> tuple[str, str]:
    """From a new user, a message whose answer is two Graph API messages (a text over 1,024
    characters with a button: the text, then the button with a short body), then a second
    message, with ``failures`` scripted for the answer's messages. Returns the user and the
    answer's text once the second message is answered (so the first is finished)."""
    assert limited.business is not None
    wa_id = new_wa_id()
    text = "buttons " + "long " * 250
    fake_clouds.failures += failures
    with limited.http as client:
        for body in (text, "after"):
            payload = cloud_payload(limited.business.phone_number_id, wa_id, body)
            assert post_cloud(client, payload).status_code == 200
    assert wait_for(lambda: any(t.startswith("echo: after") for t in fake_clouds.texts(wa_id)), 20)
    return wa_id, f"echo: {text} #1"


def dead_letters_of(gateway: Gateway, wa_id: str) -> list[dict[str, Any]]:
    return [d for d in dead_letters(gateway) if (d["message"] or {}).get("user_id") == wa_id]


def test_a_part_of_a_long_reply_that_failed_is_retried_alone(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """The second of a reply's two provider messages fails (retryable): the retry sends only
    that one, so the user gets each once. (Was a bug: a reply was recorded as sent only after
    its last provider message, so the retry sent the first again.)"""
    temporary = (500, {"error": {"code": 1, "message": "temporary"}})
    wa_id, answer = post_long_reply_then_another(limited, fake_clouds, [None, temporary])
    # The fake records the refused message too: the button's, once refused and once accepted.
    assert fake_clouds.texts(wa_id) == [
        answer,
        "Choose an option:",
        "Choose an option:",
        "echo: after #2",
    ]


def test_a_part_of_a_long_reply_refused_for_good_still_saves_the_turn(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """The user has the first part: no dead letter (a replay would answer twice), the rest of
    the answer is dropped and the turn is saved. (Was a bug: dead-lettered, the turn lost.)"""
    refused = (400, {"error": {"code": 131009, "message": "Parameter value is not valid"}})
    before = metric(limited, 'gateway_messages_processed_total{outcome="partly_sent"')
    wa_id, answer = post_long_reply_then_another(limited, fake_clouds, [None, refused])
    assert fake_clouds.texts(wa_id) == [answer, "Choose an option:", "echo: after #2"]
    assert not dead_letters_of(limited, wa_id)
    assert metric(limited, 'gateway_messages_processed_total{outcome="partly_sent"') == before + 1


def test_max_attempts_then_dead_letter_and_replay(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    assert limited.business is not None
    wa_id = new_wa_id()
    rid = f"boom-{time.time_ns()}"  # not the user id: it is logged in full
    with limited.http as client:
        body, headers = signed_cloud(cloud_payload(limited.business.phone_number_id, wa_id, "boom"))
        client.post("/webhooks/whatsapp", content=body, headers={**headers, "x-request-id": rid})

    def mine() -> list[dict[str, Any]]:
        return dead_letters_of(limited, wa_id)

    assert wait_for(lambda: len(mine()) == 1, 20)
    [record] = mine()
    assert record["reason"] == "max_attempts"
    assert "the engine failed on purpose" in str(record["error"])
    with limited.admin() as admin:
        replayed = admin.post(f"/admin/dead-letters/{record['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert admin.post(f"/admin/dead-letters/{record['id']}/replay").status_code == 404
        assert admin.post("/admin/dead-letters/not-an-id/replay").status_code == 404
    # Replayed, it fails the same way and comes back as a new record.
    assert wait_for(lambda: len(mine()) == 1 and mine()[0]["id"] != record["id"], 20)
    assert fake_clouds.replies(wa_id) == []
    # One request id all along: the webhook's, on every retry, dead letter and replay.
    assert record["request_id"] == mine()[0]["request_id"] == rid
    lines = [e for e in limited.processes[0].log_events() if e.get("user") == mask_phone(wa_id)]
    events = [e["event"] for e in lines]
    assert events.count("message dead-lettered") == 2 and "message failed; will retry" in events
    assert {e.get("request_id") for e in lines} == {rid}


def test_concurrent_replays_of_a_dead_letter_queue_it_once(limited: Gateway) -> None:
    """Twenty replays of one dead letter at once (a double click, two operators, a script run
    twice): one is 200, the others 404, and the message is queued once. (Was a bug: each replay
    read the record before any deleted it, so several were 200 and queued it again each; a
    message that failed again came back as that many dead letters.)"""
    users = [new_wa_id() for _ in range(6)]
    with limited.http as client:
        for wa_id in users:  # no business owns this number: dead-lettered at once
            assert (
                post_cloud(client, cloud_payload("999999999999999", wa_id, "hi")).status_code == 200
            )
    assert wait_for(lambda: all(len(dead_letters_of(limited, u)) == 1 for u in users), 20)
    records = {u: dead_letters_of(limited, u)[0]["id"] for u in users}

    async def race(dead_id: str, n: int = 20) -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(
            base_url=limited.url, headers={"X-API-Key": API_KEY}, timeout=30, limits=limits
        ) as admin:
            await asyncio.gather(*(admin.get("/health") for _ in range(n)))  # n connections
            replays = [admin.post(f"/admin/dead-letters/{dead_id}/replay") for _ in range(n)]
            return [r.status_code for r in await asyncio.gather(*replays)]

    for dead_id in records.values():
        codes = asyncio.run(race(dead_id))
        assert sorted(set(codes)) == [200, 404] and codes.count(200) == 1, codes
    # Each replayed message fails the same way once more: one new record per user, not more.
    assert wait_for(
        lambda: all({d["id"] for d in dead_letters_of(limited, u)} - {records[u]} for u in users),
        20,
    )
    time.sleep(1)
    assert [len(dead_letters_of(limited, u)) for u in users] == [1] * len(users)


def unknown_business_dead_letters(gateway: Gateway, users: list[str]) -> dict[str, str]:
    """A message from each user to a number no business has (dead-lettered at once,
    ``unknown_business``): each user's record id."""
    with gateway.http as client:
        for wa_id in users:
            payload = cloud_payload("999999999999999", wa_id, "hi")
            assert post_cloud(client, payload).status_code == 200
    assert wait_for(lambda: all(len(dead_letters_of(gateway, u)) == 1 for u in users), 20)
    return {u: dead_letters_of(gateway, u)[0]["id"] for u in users}


def replayed_once_each(gateway: Gateway, records: dict[str, str]) -> None:
    """Each record's message failed once more, so each user has one new record: not more
    (queued twice), not the old one (never queued)."""
    assert wait_for(
        lambda: all({d["id"] for d in dead_letters_of(gateway, u)} - {records[u]} for u in records),
        20,
    )
    time.sleep(1)
    for wa_id, dead_id in records.items():
        assert [d["id"] != dead_id for d in dead_letters_of(gateway, wa_id)] == [True], wa_id


def test_every_dead_letter_of_one_reason_is_replayed_a_page_at_a_time(limited: Gateway) -> None:
    """After an outage that dead-lettered 50,000 messages, one call per record is no remedy:
    `POST /admin/dead-letters/replay?reason=…` replays every record of a reason (those before
    `before`, when given), answering how many were replayed and skipped, and `next` to go on
    when it stopped at its time limit (here: at `limit`). A message that fails again is not
    replayed again by the same run. (Was a bug: no such call; 404.)"""
    early = [new_wa_id() for _ in range(3)]
    records = unknown_business_dead_letters(limited, early)
    cut = time.time()
    time.sleep(0.01)
    late = unknown_business_dead_letters(limited, [new_wa_id()])
    with limited.admin() as admin:
        params: dict[str, Any] = {
            "reason": "unknown_business",
            "before": datetime.fromtimestamp(cut, UTC).isoformat(),
            "limit": 1,
        }
        calls, replayed = 0, 0
        while True:
            answer = admin.post("/admin/dead-letters/replay", params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["replayed"] + body["skipped"] <= 1, body
            replayed += body["replayed"]
            calls += 1
            if body["next"] is None:
                break
            params["cursor"] = body["next"]
        assert replayed >= len(early) and calls >= len(early)
        replayed_once_each(limited, records)
        # The later one was left: dead-lettered after `before`.
        assert [d["id"] for d in dead_letters_of(limited, *late)] == list(late.values())
        assert (
            admin.post("/admin/dead-letters/replay", params={"reason": "unknown_business"}).json()[
                "next"
            ]
            is None
        )
        nothing = admin.post("/admin/dead-letters/replay", params={"reason": "no_such_reason"})
        assert nothing.json() == {"replayed": 0, "skipped": 0, "next": None}
        epoch = {"reason": "unknown_business", "before": "1970-01-01T00:00:00Z"}
        assert admin.post("/admin/dead-letters/replay", params=epoch).json() == nothing.json()
        bad = {"reason": "unknown_business", "cursor": "1-1"}
        assert admin.post("/admin/dead-letters/replay", params=bad).status_code == 422
        assert admin.post("/admin/dead-letters/replay").status_code == 422  # a reason is required
    replayed_once_each(limited, late)
    with limited.http as anonymous:
        replay = anonymous.post("/admin/dead-letters/replay", params={"reason": "x"})
        assert replay.status_code == 401


def test_bulk_and_single_replays_at_once_queue_each_record_once(limited: Gateway) -> None:
    """Two bulk replays of a reason and a single replay of each of its records, all at once
    (two operators, a script run twice): each record is queued once, as the single replay's
    claim makes it."""
    records = unknown_business_dead_letters(limited, [new_wa_id() for _ in range(6)])
    # Both runs end where the records do: a record dead-lettered again is not theirs.
    until = datetime.fromtimestamp(time.time(), UTC).isoformat()

    async def race() -> tuple[list[dict[str, Any]], list[int]]:
        n = 2 + len(records)
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(
            base_url=limited.url, headers={"X-API-Key": API_KEY}, timeout=30, limits=limits
        ) as admin:
            await asyncio.gather(*(admin.get("/health") for _ in range(n)))  # n connections
            params = {"reason": "unknown_business", "before": until}
            bulk = [admin.post("/admin/dead-letters/replay", params=params) for _ in range(2)]
            single = [admin.post(f"/admin/dead-letters/{i}/replay") for i in records.values()]
            answers = await asyncio.gather(*bulk, *single)
        return [a.json() for a in answers[:2]], [a.status_code for a in answers[2:]]

    bulks, singles = asyncio.run(race())
    assert all(b["next"] is None for b in bulks), bulks
    assert set(singles) <= {200, 404}, singles
    # Each of ours was replayed by one of the calls (the bulk ones count the other tests' too).
    ours = len(records)
    assert sum(b["replayed"] for b in bulks) + singles.count(200) >= ours
    replayed_once_each(limited, records)


def test_corrupt_entries_are_listed_and_refused_for_replay(limited: Gateway) -> None:
    """Entries a worker cannot read (written by another version, or by hand) are dead-lettered
    as `corrupt_entry`: the list shows them, and a replay is 409 with the reason. (Was a bug: one
    whose message was JSON but not an object made every `GET /admin/dead-letters` that reached
    it a 500, hiding every dead letter after it; replaying one that was an object the gateway
    could not use was a 500.)"""
    marker = f"corrupt-{time.time_ns()}"
    client = redis.Redis.from_url(limited.redis_url, decode_responses=True)
    try:
        for m in ('{"text": "from another version"}', "[1, 2]", '"text"', "not json"):
            client.xadd(stream_key(0), {"m": m, "rid": marker, "rt": "1"})
    finally:
        client.close()

    def mine() -> list[dict[str, Any]]:
        with limited.admin() as admin:
            response = admin.get("/admin/dead-letters", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return [d for d in response.json()["dead_letters"] if d["request_id"] == marker]

    assert wait_for(lambda: len(mine()) == 4, 20)
    records = mine()
    assert {d["reason"] for d in records} == {"corrupt_entry"}
    assert [d["message"] for d in records] == [{"text": "from another version"}, None, None, None]
    assert [d["raw"] for d in records][1:] == ["[1, 2]", '"text"', "not json"]
    with limited.admin() as admin:
        for record in records:
            replayed = admin.post(f"/admin/dead-letters/{record['id']}/replay")
            assert replayed.status_code == 409, replayed.text
            assert "cannot be read" in replayed.json()["detail"]
    assert len(mine()) == 4  # kept for the operator


def test_a_replayed_dead_letter_does_not_send_again_what_it_sent_before(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """The engine sends an interim reply, then fails every attempt: dead-lettered with the
    interim reply out. Replayed, it must not send that again. (Was a bug: a replay starts at
    attempt 1, which did not read the sent log.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        post_cloud(
            client, cloud_payload(limited.business.phone_number_id, wa_id, "early then boom")
        )

    def mine() -> list[dict[str, Any]]:
        return dead_letters_of(limited, wa_id)

    assert wait_for(lambda: len(mine()) == 1, 20)
    [record] = mine()
    assert fake_clouds.texts(wa_id) == ["working on it"]
    with limited.admin() as admin:
        assert admin.post(f"/admin/dead-letters/{record['id']}/replay").status_code == 200
    assert wait_for(lambda: len(mine()) == 1 and mine()[0]["id"] != record["id"], 20)
    assert fake_clouds.texts(wa_id) == ["working on it"]


def test_a_dead_letter_an_operator_will_not_replay_can_be_deleted(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """Some dead letters are never to be replayed: a signed payload with nothing usable (its
    replay is 409), a message the operator has answered by hand. `DELETE /admin/dead-letters/
    {id}` removes one, with the sent log kept for its replay; after it, a replay or a second
    delete is 404. (Was a bug: the admin API could only list and replay them, so such records
    stayed until the 100,000 cap trimmed them, and `ParleyDeadLettersNearCap` paged with no
    remedy but redis-cli.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        post_cloud(
            client, cloud_payload(limited.business.phone_number_id, wa_id, "early then boom")
        )
        unusable = cloud_payload(limited.business.phone_number_id, wa_id, "hi")
        del unusable["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        assert post_cloud(client, unusable).status_code == 200
    assert wait_for(lambda: len(dead_letters_of(limited, wa_id)) == 1, 20)
    [record] = dead_letters_of(limited, wa_id)
    assert fake_clouds.texts(wa_id) == ["working on it"]  # its sent log is kept for a replay
    [unused] = [d for d in dead_letters(limited) if wa_id in (d["raw"] or "")]
    assert unused["reason"] == "unusable_payload"
    wamid = record["message"]["provider_message_id"]
    client = redis.Redis.from_url(limited.redis_url)
    try:
        assert client.exists(sent_log_key("cloud_api", wamid))
        with limited.admin() as admin:
            assert admin.post(f"/admin/dead-letters/{unused['id']}/replay").status_code == 409
            for dead_id in (record["id"], unused["id"]):
                deleted = admin.delete(f"/admin/dead-letters/{dead_id}")
                assert (deleted.status_code, deleted.json()) == (200, {"deleted": dead_id})
                again = admin.delete(f"/admin/dead-letters/{dead_id}")
                assert again.status_code == 404 and again.json()["detail"]
                assert admin.post(f"/admin/dead-letters/{dead_id}/replay").status_code == 404
            assert admin.delete("/admin/dead-letters/not-an-id").status_code == 404
        with limited.http as anonymous:
            assert anonymous.delete(f"/admin/dead-letters/{record['id']}").status_code == 401
        assert not client.exists(sent_log_key("cloud_api", wamid))
    finally:
        client.close()
    remaining = {d["id"] for d in dead_letters(limited)}
    assert not {record["id"], unused["id"]} & remaining


def test_every_dead_letter_of_one_reason_can_be_deleted_at_once(limited: Gateway) -> None:
    """The stream fills with records nobody will replay (unusable payloads: Meta's errors
    webhooks, a number of the app no business has): `DELETE /admin/dead-letters?reason=…`
    deletes them all in one call, and nothing of another reason. (Was a bug: one call per
    record, 80,000 of them when `ParleyDeadLettersNearCap` pages.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        for n in range(3):
            unusable = cloud_payload(limited.business.phone_number_id, wa_id, f"u{n}")
            del unusable["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            assert post_cloud(client, unusable).status_code == 200
        assert (
            post_cloud(client, cloud_payload("999999999999999", wa_id, "kept")).status_code == 200
        )

    def mine() -> list[dict[str, Any]]:
        return [
            d
            for d in dead_letters(limited)
            if wa_id in (d["raw"] or "") or (d["message"] or {}).get("user_id") == wa_id
        ]

    assert wait_for(lambda: len(mine()) == 4, 20)
    with limited.admin() as admin:
        deleted = admin.delete("/admin/dead-letters", params={"reason": "unusable_payload"})
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted"] >= 3
        again = admin.delete("/admin/dead-letters", params={"reason": "unusable_payload"})
        assert again.json() == {"deleted": 0}
        assert admin.delete("/admin/dead-letters").status_code == 422  # a reason is required
    assert [d["reason"] for d in mine()] == ["unknown_business"]


def test_deleting_a_reason_leaves_a_record_being_replayed_to_its_replay(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """A replay claims its record, queues the message, then deletes the record: a delete of the
    record's reason in that moment must leave it, and its sent log, to the replay. (Was a bug:
    `DELETE /admin/dead-letters?reason=…` took no claim, so it could delete the sent log of a
    message just queued again, and the parts it had sent went to the user a second time.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        post_cloud(
            client, cloud_payload(limited.business.phone_number_id, wa_id, "early then boom")
        )
    assert wait_for(lambda: len(dead_letters_of(limited, wa_id)) == 1, 20)
    [record] = dead_letters_of(limited, wa_id)
    sent_log = sent_log_key("cloud_api", record["message"]["provider_message_id"])
    client = redis.Redis.from_url(limited.redis_url)
    try:
        assert client.exists(sent_log)
        # Where a replay stands after queuing the message and before deleting the record.
        client.set(replay_claim_key(record["id"]), "1", ex=60)
        with limited.admin() as admin:
            deleted = admin.delete("/admin/dead-letters", params={"reason": "max_attempts"})
            assert deleted.status_code == 200, deleted.text
            assert [d["id"] for d in dead_letters_of(limited, wa_id)] == [record["id"]]
            assert client.exists(sent_log)
            client.delete(replay_claim_key(record["id"]))  # the replay gave up: deletable
            admin.delete("/admin/dead-letters", params={"reason": "max_attempts"})
        assert dead_letters_of(limited, wa_id) == []
        assert not client.exists(sent_log) and not client.exists(replay_claim_key(record["id"]))
    finally:
        client.close()
    assert fake_clouds.texts(wa_id) == ["working on it"]


def test_erasing_a_user_waits_for_a_replay_of_their_dead_letter_and_erases_its_message(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A replay holds its record's claim while it queues the message again, then deletes the
    record: an erasure in that moment must not leave the message queued. (Was a bug: the
    erasure took no claim; it deleted the record and scanned the partitions at once, the replay
    then queued the message, and the user's words outlived the erasure.)"""
    # No worker: the queued message stays where the erasure must find it.
    gw = start_gateway(
        services, fake_clouds, f"redis://127.0.0.1:{valkey.port}/{next_db()}", "erase", role="web"
    )
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "erase me"))

        def with_queue(work: Callable[[Queue], Awaitable[T]]) -> T:
            async def run() -> T:
                queue = Queue(aioredis.Redis.from_url(gw.redis_url), 8, 60)
                try:
                    return await work(queue)
                finally:
                    await queue.redis.aclose()

            return asyncio.run(run())

        async def dead_lettered(queue: Queue) -> tuple[str, dict[str, str]]:
            # As a worker gives up on the message: its entry's fields into a dead letter.
            for partition in range(queue.partitions):
                for entry_id, fields in await queue.redis.xrange(stream_key(partition)):
                    await queue.redis.xdel(stream_key(partition), entry_id)
                    kept = {k.decode(): v.decode() for k, v in fields.items()}
                    return await queue.dead_letter("max_attempts", "boom", fields=kept), kept
            raise AssertionError("the message was not queued")

        async def replay_finishes(queue: Queue) -> None:
            # What a replay does after taking its claim and reading the record.
            await queue.requeue(fields)
            await queue.redis.xdel(DEAD, dead_id)

        dead_id, fields = with_queue(dead_lettered)
        client = redis.Redis.from_url(gw.redis_url)
        try:
            client.set(replay_claim_key(dead_id), "1", ex=60)  # a replay has read the record
            with gw.admin() as admin, ThreadPoolExecutor(1) as pool:
                erasure = pool.submit(admin.delete, f"/admin/users/{business.id}/{wa_id}")
                web = gw.processes[0]
                waits = "erasure waits for a replay of a dead letter"
                assert wait_for(lambda: erasure.done() or web.log_events(waits), 20)
                with_queue(replay_finishes)
                erased = erasure.result(timeout=30)
            assert erased.status_code == 200, erased.text
            assert erased.json()["queued"] == 1, erased.json()
            assert queue_lengths(gw.redis_url) == 0 and dead_letters_of(gw, wa_id) == []
        finally:
            client.close()
    finally:
        gw.stop()


def erase_the_one_queued_message(gw: Gateway, business: Business, wa_id: str) -> None:
    """``DELETE /admin/users/…`` of a user with one message queued (the one under test)."""
    with gw.admin() as admin:
        erased = admin.delete(f"/admin/users/{business.id}/{wa_id}")
    assert erased.status_code == 200, erased.text
    assert erased.json()["queued"] == 1, erased.json()


def attempt_records(gw: Gateway) -> dict[bytes, dict[bytes, bytes]]:
    """The attempt counts and errors the queue holds (``gw:att:…``, ``gw:err:…``), by hash."""
    client = redis.Redis.from_url(gw.redis_url)
    try:
        held = {
            key: client.hgetall(key)
            for key in client.scan_iter("gw:*")
            if b":att:" in key or b":err:" in key
        }
    finally:
        client.close()
    return {key: fields for key, fields in held.items() if fields}


def test_a_message_erased_while_it_waits_for_its_retry_is_not_retried(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A failed message waits out its backoff in its worker's memory, still pending in the
    stream. Erasing its user deletes the entry, its attempts and its error; the retry must not
    run it all the same. (Was a bug: the worker retried the entry it held, failed again and
    dead-lettered it, so the erased user's words and number were back in the dead letters; one
    that succeeded would have saved a new conversation with them and answered it.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "erase-waiting",
        MAX_ATTEMPTS="2",
        RETRY_BASE_SECONDS="3",
        RETRY_MAX_SECONDS="3",
    )
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        words = "boom, my passport is XK-" + secrets.token_hex(4)
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, words))
        failed = "message failed; will retry"
        assert wait_for(lambda: gw.processes[0].log_events(failed), 20)
        erase_the_one_queued_message(gw, business, wa_id)
        # The user writes again: their new message waits behind the erased one, so its answer
        # comes once the erased one's retry is due and decided.
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "hello again"))
        assert wait_for(lambda: fake_clouds.texts(wa_id), 30)
        assert fake_clouds.texts(wa_id) == ["echo: hello again #1"]
        assert dead_letters_of(gw, wa_id) == []
        assert attempt_records(gw) == {}  # no attempt count or error of the erased entry
    finally:
        gw.stop()


def test_an_attempt_running_at_the_erase_leaves_neither_a_retry_nor_its_error(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """An attempt under way when its user is erased fails after the erase and records its
    error: that attempt is not retried, and its error does not stay in ``gw:err`` (a hash
    without expiry, whose fields only an acknowledgement or an erase delete)."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "erase-running",
        MAX_ATTEMPTS="2",
    )
    try:
        business = create_business(gw)
        wa_id = slow_message_in_flight(gw, fake_clouds, business, "slow 4 then boom")
        erase_the_one_queued_message(gw, business, wa_id)
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "hello again"))
        assert wait_for(lambda: fake_clouds.texts(wa_id), 30)
        assert fake_clouds.texts(wa_id) == ["echo: hello again #1"]
        assert dead_letters_of(gw, wa_id) == []
        assert attempt_records(gw) == {}
    finally:
        gw.stop()


def test_an_attempt_failing_after_its_user_is_erased_records_no_error(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """The error of an attempt that fails after its user's erase is not recorded: the entry is
    gone, so no acknowledgement or erase would ever delete that field of ``gw:err`` (a hash
    without expiry) if the worker then died before the retry that drops the entry. (Was a bug:
    the error stayed for good.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "erase-then-die",
        role="web",
        workers=1,
        RETRY_BASE_SECONDS="30",
        RETRY_MAX_SECONDS="30",
    )
    try:
        business = create_business(gw)
        wa_id = slow_message_in_flight(gw, fake_clouds, business, "slow 4 then boom")
        erase_the_one_queued_message(gw, business, wa_id)
        worker = gw.processes[1]
        assert wait_for(lambda: worker.log_events("message failed; will retry"), 20)
        worker.signal(signal.SIGKILL)  # before its retry, 30 s away
        worker.wait(10)
        assert attempt_records(gw) == {}
    finally:
        gw.stop()


def test_an_attempt_failing_for_good_after_its_user_is_erased_is_not_dead_lettered(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """An attempt under way at its user's erase that then fails for good writes no dead letter:
    the record would hold the erased user's words and number again, kept until someone deletes
    it. (Was a bug: a `max_attempts` record of the erased message.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "erase-then-dead",
        MAX_ATTEMPTS="1",
    )
    try:
        business = create_business(gw)
        wa_id = slow_message_in_flight(gw, fake_clouds, business, "slow 4 then boom")
        erase_the_one_queued_message(gw, business, wa_id)
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "hello again"))
        # Answered after the erased one's attempt has ended (one user's messages run in order).
        assert wait_for(lambda: fake_clouds.texts(wa_id), 30)
        assert fake_clouds.texts(wa_id) == ["echo: hello again #1"]
        assert dead_letters_of(gw, wa_id) == []
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("code", "message"),
    [(190, "Error validating access token"), (0, "(#0) Unable to authenticate the app user")],
)
def test_expired_token_marks_the_business_and_dead_letters(
    limited: Gateway, fake_clouds: FakeClouds, code: int, message: str
) -> None:
    """190, and 0 (AuthException: the token expired or was invalidated; Meta's advice is a new
    token). (Was a bug for 0: a plain send_error, the business never marked, so nobody was told
    to renew the token and every message of the business failed the same way.)"""
    business = create_business(limited)
    wa_id = new_wa_id()
    fake_clouds.failures.append((401, {"error": {"code": code, "message": message}}))
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "token?"))

    def status() -> str:
        with limited.admin() as admin:
            return str(admin.get(f"/admin/businesses/{business.id}").json()["access_token_status"])

    assert wait_for(lambda: status() == "needs_renewal", 20)
    assert any(
        d["reason"] == "token_expired" and (d["message"] or {}).get("user_id") == wa_id  # type: ignore[union-attr]
        for d in dead_letters(limited)
    )
    assert metric(limited, 'gateway_sends_total{outcome="token_expired"') >= 1
    # The worker's cached credentials hold the refused token: dropped at once.
    assert metric(limited, 'gateway_business_cache_invalidations_total{origin="token_expired"') >= 1


def test_a_business_whose_token_needs_renewal_is_not_sent_for_until_it_has_a_new_one(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """Once Meta has refused a business's token, its next messages are dead-lettered
    (`token_expired`, replayable) without a Graph API call, and without marking the business
    and emptying every worker's cache entry again; a new token lifts it. (Was a bug: each
    message was sent with the refused token and each refusal wrote the business again.)"""
    business = create_business(limited)
    first, second, third = new_wa_id(), new_wa_id(), new_wa_id()
    fake_clouds.failures.append((401, {"error": {"code": 190, "message": "expired"}}))
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, first, "one"))
    assert wait_for(lambda: dead_letters_of(limited, first), 20)
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, second, "two"))
    assert wait_for(lambda: dead_letters_of(limited, second), 20)
    [dead] = dead_letters_of(limited, second)
    assert dead["reason"] == "token_expired"
    assert fake_clouds.replies(second) == []  # not sent with the token Meta refused
    marked = "Cloud API token expired; business marked"
    events = [e for e in limited.processes[0].log_events() if e.get("business_id") == business.id]
    assert [e["event"] for e in events].count(marked) == 1
    with limited.admin() as admin:
        renewed = admin.put(
            f"/admin/businesses/{business.id}/token", json={"access_token": "EAAG-renewed"}
        )
        assert renewed.status_code == 200, renewed.text
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, third, "three"))
    assert wait_for(lambda: fake_clouds.texts(third) == ["echo: three #1"], 20)
    assert fake_clouds.replies(third)[0].authorization == "Bearer EAAG-renewed"


def test_a_graph_api_error_that_echoes_the_token_leaks_it_nowhere(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """The Graph API's error message can quote what it was sent (proxies and malformed-token
    errors do): the business's token must reach neither the retry's log line nor the dead
    letter. (Was a bug: both carried the provider's message as it came, token and all.)"""
    business = create_business(limited)
    token = business.access_token
    wa_id = new_wa_id()
    fake_clouds.failures += [
        (500, {"error": {"code": 1, "message": f"internal error for Bearer {token}"}}),
        (401, {"error": {"code": 190, "message": f"Malformed access token {token}"}}),
    ]
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "echo my token?"))
    assert wait_for(lambda: dead_letters_of(limited, wa_id), 20)
    (dead,) = dead_letters_of(limited, wa_id)
    assert dead["reason"] == "token_expired" and "Malformed access token ***" in dead["error"]
    log = limited.processes[0].log
    assert "internal error for Bearer ***" in log  # the retry's line was written...
    assert token not in log and token not in str(dead)  # ...without the token


def test_a_refused_send_keeps_what_meta_says_of_the_error(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """Meta's error message is a code's title (*Parameter value is not valid*); what was wrong
    is in `error_data.details`, which Meta says to go by, and `fbtrace_id` is what its support
    asks for. The dead letter keeps both, and the subcode. (Was a bug: only the title was kept,
    so nobody could tell which parameter Meta refused, nor trace the call with Meta.)"""
    business = create_business(limited)
    wa_id = new_wa_id()
    details = "Button title length invalid. Min length: 1, Max length: 20"
    fake_clouds.failures.append(
        (
            400,
            {
                "error": {
                    "message": "(#131009) Parameter value is not valid",
                    "type": "OAuthException",
                    "code": 131009,
                    "error_data": {"messaging_product": "whatsapp", "details": details},
                    "error_subcode": 2494010,
                    "fbtrace_id": "AbCdEf12345_-xyz",
                }
            },
        )
    )
    with limited.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "details?"))
    assert wait_for(lambda: dead_letters_of(limited, wa_id), 20)
    [dead] = dead_letters_of(limited, wa_id)
    assert dead["reason"] == "send_error"
    assert "(131009, subcode 2494010)" in dead["error"] and details in dead["error"]
    assert "fbtrace_id AbCdEf12345_-xyz" in dead["error"]


def test_a_refused_twilio_send_keeps_what_twilio_says_of_the_error(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """Twilio's error body has a `message` besides the `code`, which says what it refused, and
    the runbook says a refused send's dead letter carries both; it may quote the user's number,
    which is scrubbed. (Was a bug: a Twilio refusal kept its code alone, *Twilio answered 400
    (21211)*.)"""
    business = create_business(limited)
    user = "+" + new_wa_id()
    fake_clouds.failures.append(
        (
            400,
            {
                "code": 21211,
                "message": f"The 'To' number whatsapp:{user} is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400,
            },
        )
    )
    form = twilio_form(business.number, user, "valid?")
    body, headers = signed_twilio(f"{limited.url}/webhooks/twilio", form, business.twilio_token)
    with limited.http as client:
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    assert wait_for(lambda: dead_letters_of(limited, user), 20)
    [dead] = dead_letters_of(limited, user)
    assert dead["reason"] == "send_error" and "(21211)" in dead["error"]
    assert "The 'To' number whatsapp:*** is not a valid phone number." in dead["error"]


@pytest.mark.parametrize(
    ("code", "message"),
    [(3, "(#3) Capability or permissions issue"), (131045, "(#131045) Incorrect certificate")],
)
def test_a_permanent_graph_api_error_behind_a_500_is_not_retried(
    limited: Gateway, fake_clouds: FakeClouds, code: int, message: str
) -> None:
    """Meta answers some errors no retry can cure with HTTP 500 (3: the app lacks a permission;
    131045: the number's registration is wrong) and says to go by the code. Dead-lettered at
    once, tried once. (Was a bug: retried as an outage for RETRY_WINDOW_SECONDS, 5 minutes,
    holding up every user behind it on its partition, other businesses' included.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    fake_clouds.failures.append((500, {"error": {"code": code, "message": message}}))
    try:
        with limited.http as client:
            post_cloud(client, cloud_payload(limited.business.phone_number_id, wa_id, "perm"))
        assert wait_for(lambda: dead_letters_of(limited, wa_id), 10)
    finally:
        fake_clouds.failures.clear()
    [dead] = dead_letters_of(limited, wa_id)
    assert dead["reason"] == "send_error" and f"({code})" in dead["error"]
    assert fake_clouds.texts(wa_id) == ["echo: perm #1"]  # the refused try, and no other


def test_outside_the_24_hour_window_is_counted_and_saved(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """(Was a bug: the refused reply was counted in gateway_end_to_end_seconds, the time to the
    first reply the provider accepted, as if the user had been answered; and the message was
    counted `answered` in gateway_messages_processed_total, now `outside_window`.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    answered = 'gateway_end_to_end_seconds_count{channel="cloud_api"}'
    refused = 'gateway_messages_processed_total{outcome="outside_window"}'
    before, refused_before = metric(limited, answered), metric(limited, refused)
    fake_clouds.failures.append((400, {"error": {"code": 131047, "message": "Re-engagement"}}))
    with limited.http as client:
        post_cloud(client, cloud_payload(limited.business.phone_number_id, wa_id, "late"))
        post_cloud(client, cloud_payload(limited.business.phone_number_id, wa_id, "again"))
    # The refused reply is tried once, not retried; the turn is still saved (#2 follows #1).
    assert wait_for(lambda: len(fake_clouds.texts(wa_id)) >= 2, 20)
    assert fake_clouds.texts(wa_id) == ["echo: late #1", "echo: again #2"]
    assert metric(limited, 'gateway_sends_total{outcome="outside_window"') >= 1
    assert wait_for(lambda: metric(limited, answered) > before, 5)
    assert metric(limited, answered) == before + 1  # "again" only
    assert metric(limited, refused) == refused_before + 1  # "late" only


def test_a_message_older_than_the_reply_window_is_not_conversed(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """A message that reaches a worker more than 24 hours after the user wrote it (a backlog
    after a long outage, a dead letter replayed the next day) can have no reply: WhatsApp
    refuses it (131047). It is dead-lettered `outside_window`, with nothing sent and nothing
    saved. (Was a bug: the engine ran, a search was spent, and the turn was saved with a reply
    the user never saw, which the bot then took as said.) A day-old message within the window
    is answered."""
    assert limited.business is not None
    late, recent = new_wa_id(), new_wa_id()
    now = time.time()
    with limited.http as client:
        old = cloud_payload(
            limited.business.phone_number_id, late, "yesterday", timestamp=str(int(now - 90_000))
        )
        assert post_cloud(client, old).status_code == 200
        within = cloud_payload(
            limited.business.phone_number_id, recent, "today", timestamp=str(int(now - 82_800))
        )
        assert post_cloud(client, within).status_code == 200
    assert wait_for(lambda: fake_clouds.texts(recent) == ["echo: today #1"], 20)
    assert wait_for(lambda: dead_letters_of(limited, late), 20)
    [dead] = dead_letters_of(limited, late)
    assert dead["reason"] == "outside_window" and "24-hour" in dead["error"]
    assert fake_clouds.texts(late) == [] and not fake_clouds.read_receipts(
        old["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    )


def test_a_provider_outage_outlasting_max_attempts_is_answered(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """Graph API 5xx are the provider's trouble, not the message's: retried past MAX_ATTEMPTS
    (3 here) within RETRY_WINDOW_SECONDS. (Was a bug: they used up the attempts, so about 15 s
    of outage with the defaults dead-lettered the message.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    # The fake's failures go to whatever is sent next: nothing else of this gateway may be.
    assert wait_for(lambda: queue_lengths(limited.redis_url) == 0, 20)
    fake_clouds.failures.extend([(503, {"error": {"code": 131016, "message": "unavailable"}})] * 5)
    try:
        with limited.http as client:
            for text in ("outage", "after"):
                payload = cloud_payload(limited.business.phone_number_id, wa_id, text)
                assert post_cloud(client, payload).status_code == 200
        assert wait_for(lambda: "echo: after #2" in fake_clouds.texts(wa_id), 20)
    finally:
        fake_clouds.failures.clear()
    # Refused 5 times, more than MAX_ATTEMPTS, then answered: the turn was saved, so the next
    # message is the second.
    assert fake_clouds.texts(wa_id) == ["echo: outage #1"] * 6 + ["echo: after #2"]
    mine = [d for d in dead_letters(limited) if (d["message"] or {}).get("user_id") == wa_id]  # type: ignore[union-attr]
    assert mine == []


def test_user_rate_limit_acknowledges_and_notifies_once(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        for i in range(7):
            payload = cloud_payload(limited.business.phone_number_id, wa_id, f"n{i}")
            assert post_cloud(client, payload).status_code == 200
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) >= 5, 20)
    texts = fake_clouds.texts(wa_id)
    assert texts[:4] == [f"echo: n{i} #{i + 1}" for i in range(4)]
    assert texts[4:] == [
        "You are sending messages faster than we can answer. Please wait a minute."
    ]


def test_a_message_over_the_user_limit_is_not_answered_when_its_notice_fails(
    limited: Gateway, fake_clouds: FakeClouds
) -> None:
    """The one notice to a user over their rate limit is a courtesy: the Graph API refusing it
    for a moment (a 503) leaves the message acknowledged unanswered, as the limit says. (Was a
    bug: the failed notice made the message retry, and a retry does not count the limits again,
    so it was answered in full, a search spent on it, and the user never told.)"""
    assert limited.business is not None
    wa_id = new_wa_id()
    with limited.http as client:
        for i in range(4):
            payload = cloud_payload(limited.business.phone_number_id, wa_id, f"n{i}")
            assert post_cloud(client, payload).status_code == 200
        assert wait_for(lambda: len(fake_clouds.texts(wa_id)) == 4, 20)
        assert wait_for(lambda: queue_lengths(limited.redis_url) == 0, 20)
        fake_clouds.failures.append((503, {"error": {"code": 131016, "message": "unavailable"}}))
        try:
            payload = cloud_payload(limited.business.phone_number_id, wa_id, "over")
            assert post_cloud(client, payload).status_code == 200
            assert wait_for(lambda: len(fake_clouds.replies(wa_id)) == 5, 20)
            assert wait_for(lambda: queue_lengths(limited.redis_url) == 0, 20)
        finally:
            fake_clouds.failures.clear()
    notice = "You are sending messages faster than we can answer. Please wait a minute."
    assert fake_clouds.texts(wa_id) == [f"echo: n{i} #{i + 1}" for i in range(4)] + [notice]
    assert "echo: over #5" not in fake_clouds.texts(wa_id)


def test_sigterm_finishes_the_message_in_flight(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "sigterm",
        role="web",
        workers=1,
    )
    try:
        wa_id = slow_message_in_flight(gw, fake_clouds, create_business(gw), "slow 1 then stop")
        worker = gw.processes[1]
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        # Answered before the process exited, by that process, once.
        assert fake_clouds.texts(wa_id) == ["echo: slow 1 then stop #1"]
        assert "worker stopped" in worker.log
    finally:
        gw.stop()


def test_sigterm_stops_the_http_process_with_status_0(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """SIGTERM is how compose and Kubernetes stop a container. The gateway's HTTP process shut
    down gracefully, then died of the SIGTERM uvicorn raises again afterwards: status 143 (-15
    here), as if it had failed, where the services and the workers exit 0."""
    gw = start_gateway(
        services, fake_clouds, f"redis://127.0.0.1:{valkey.port}/{next_db()}", "sigterm-web"
    )
    try:
        web = gw.processes[0]
        web.signal(signal.SIGTERM)
        assert web.wait(20) == 0, web.log[-3000:]
        assert "gateway stopped" in web.log  # the graceful way: its runtime stopped first
    finally:
        gw.stop()


def test_sigterm_gives_a_request_in_flight_the_whole_fractional_grace(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A webhook still arriving at SIGTERM is answered if it ends within SHUTDOWN_GRACE_SECONDS.
    The grace went to uvicorn through int(): 0.9 s became 0, and the request was cut at once
    (uvicorn's own 0.1 s pause aside)."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "sigterm-grace",
        SHUTDOWN_GRACE_SECONDS="0.9",
    )
    try:
        business = create_business(gw)
        body, headers = signed_cloud(cloud_payload(business.phone_number_id, "15550009901", "hi"))
        port = int(gw.url.rsplit(":", 1)[1])
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                f"POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\n{head}"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            web = gw.processes[0]
            web.signal(signal.SIGTERM)
            assert wait_for(lambda: not _accepts(port), 10, 0.01)  # shutting down
            time.sleep(0.4)  # past uvicorn's 0.1 s pause, well within the 0.9 s grace
            conn.sendall(body[10:])
            answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), (answer, web.log[-3000:])
        assert web.wait(20) == 0
    finally:
        gw.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_business_whose_number_meta_throttles_holds_up_no_other_business(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """Meta refuses every message of one business's number for a while (130429, throughput
    reached: retried). A user of another business whose messages share the partition (one
    partition here, so every user shares it) is answered meanwhile; the throttled business's
    user is answered once Meta takes their number again, in order. (Was a bug: the partition
    waited out each retry of the throttled business's messages, up to RETRY_WINDOW_SECONDS
    each, so every other business's user on it waited as long.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "throttled",
        QUEUE_PARTITIONS="1",
        RETRY_BASE_SECONDS="6",
        RETRY_MAX_SECONDS="6",
    )
    throttled, other = create_business(gw), create_business(gw)
    fake_clouds.throttled.add(throttled.phone_number_id)
    try:
        waiting, answered = new_wa_id(), new_wa_id()
        with gw.http as client:
            for text in ("first", "second"):
                payload = cloud_payload(throttled.phone_number_id, waiting, text)
                assert post_cloud(client, payload).status_code == 200
            # Refused (the sender's own three tries): the message now waits for its retry.
            assert wait_for(lambda: len(fake_clouds.texts(waiting)) == 3, 10)
            started = time.monotonic()
            payload = cloud_payload(other.phone_number_id, answered, "hello")
            assert post_cloud(client, payload).status_code == 200
            assert wait_for(lambda: fake_clouds.texts(answered) == ["echo: hello #1"], 20)
            assert time.monotonic() - started < 4  # before the throttled message's retry
            assert fake_clouds.texts(waiting) == ["echo: first #1"] * 3  # "second" waits
        fake_clouds.throttled.clear()
        assert wait_for(lambda: "echo: second #2" in fake_clouds.texts(waiting), 30)
        assert fake_clouds.texts(waiting) == ["echo: first #1"] * 4 + ["echo: second #2"]
    finally:
        fake_clouds.throttled.clear()
        gw.stop()


def test_a_backlog_over_the_business_rate_limit_is_answered_within_it(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A backlog (the workers were down; or a broadcast's replies, thousands in a minute) holds
    more of one business's messages than its rate limit lets through at once: they wait for room
    in the window, in order, and every one is answered. (Was a bug: the limit was counted when a
    worker took the message, and each one past it was dead-lettered business_rate_limited, the
    user never answered: 300 of 1,500 replies to a broadcast with the default 1200/minute.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "business-limit",
        role="web",
        RATE_LIMIT_BUSINESS="20/4 seconds",
    )
    try:
        business = create_business(gw)
        users = [new_wa_id() for _ in range(20)]
        with gw.http as client:
            for n in range(3):
                for user in users:
                    payload = cloud_payload(business.phone_number_id, user, f"m{n}")
                    assert post_cloud(client, payload).status_code == 200
        started = time.monotonic()
        gw.processes.append(start_worker(gw.env, gw.processes[0].log_path.with_suffix(".w.log")))
        expected = [f"echo: m{n} #{n + 1}" for n in range(3)]
        assert wait_for(lambda: all(len(fake_clouds.texts(u)) >= 3 for u in users), 60, 0.2)
        assert {u: fake_clouds.texts(u) for u in users} == {u: expected for u in users}
        assert dead_letters(gw) == []
        # 60 messages, 20 per 4 s: the last 20 waited for the first 20 to leave the window twice.
        assert time.monotonic() - started >= 8
        sends = sorted(r.time for u in users for r in fake_clouds.replies(u))
        assert all(sends[i + 20] - sends[i] >= 3.5 for i in range(len(sends) - 20))
    finally:
        gw.stop()


def test_dead_letters_replayed_together_are_not_taken_for_a_user_over_their_limit(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A user writes within their limit while their business is off (each message a dead
    letter); once it is back, the operator replays them in a moment. Every one is answered.
    (Was a bug: a replay is queued anew, so the user's window counted each at its replay: those
    past the limit were acknowledged unanswered, gone from the dead letters, and the user told
    *You are sending messages faster than we can answer*, about messages written apart.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "replay-user-limit",
        RATE_LIMIT_USER="2/2 seconds",
    )
    try:
        business = create_business(gw)
        path = f"/admin/businesses/{business.id}"
        with gw.admin() as admin:
            assert admin.patch(path, json={"whatsapp_enabled": False}).status_code == 200
        wa_id = new_wa_id()
        with gw.http as client:
            for n in range(4):  # one every 1.1 s: never more than 2 in 2 s
                payload = cloud_payload(business.phone_number_id, wa_id, f"m{n}")
                assert post_cloud(client, payload).status_code == 200
                time.sleep(1.1)
        assert wait_for(lambda: len(dead_letters_of(gw, wa_id)) == 4, 20)
        heard = metric(gw, REMOTE_INVALIDATIONS)
        with gw.admin() as admin:
            assert admin.patch(path, json={"whatsapp_enabled": True}).status_code == 200
            # The workers' business cache hears of it before the replays, not in 1.5 s.
            assert wait_for(lambda: metric(gw, REMOTE_INVALIDATIONS) > heard, 20)
            for record in dead_letters_of(gw, wa_id):
                assert admin.post(f"/admin/dead-letters/{record['id']}/replay").status_code == 200
        expected = [f"echo: m{n} #{n + 1}" for n in range(4)]
        assert wait_for(lambda: queue_lengths(gw.redis_url) == 0, 30)
        assert wait_for(lambda: fake_clouds.texts(wa_id) == expected, 10), fake_clouds.texts(wa_id)
        assert dead_letters_of(gw, wa_id) == []
    finally:
        gw.stop()


def test_a_user_within_their_rate_limit_is_answered_in_full_after_a_backlog(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A user writes within their limit while the workers are down; the backlog is drained in
    a moment. Their window counts when they wrote, so every message is answered. (Was a bug:
    it counted when a worker took each message, so the drain found the user over the limit:
    the messages past it were acknowledged unanswered and the user told *You are sending
    messages faster than we can answer*, about messages written minutes apart.)"""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "user-limit-backlog",
        role="web",
        RATE_LIMIT_USER="4/2 seconds",
    )
    try:
        business = create_business(gw)
        wa_id = new_wa_id()
        with gw.http as client:
            for n in range(8):  # one every 0.6 s: never more than 4 in 2 s
                payload = cloud_payload(business.phone_number_id, wa_id, f"m{n}")
                assert post_cloud(client, payload).status_code == 200
                time.sleep(0.6)
        gw.processes.append(start_worker(gw.env, gw.processes[0].log_path.with_suffix(".w.log")))
        assert wait_for(lambda: queue_lengths(gw.redis_url) == 0 and fake_clouds.texts(wa_id), 30)
        time.sleep(0.5)
        assert fake_clouds.texts(wa_id) == [f"echo: m{n} #{n + 1}" for n in range(8)]
    finally:
        gw.stop()
