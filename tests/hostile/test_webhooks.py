"""Hostile webhooks against the real gateway process (web role, real Redis, the real services).

Why a real process rather than the ASGI app in-process: a crash must be seen as a crash (a dead
process, not a caught exception turned into a 500 by the test client), the body limit and the
HTTP parsing are uvicorn's, and one example costs a few milliseconds over loopback either way.

While the examples run there is no worker, so everything the webhooks put in Redis stays there
to be inspected: every queue entry must decode into a well-formed message, and a webhook that is
unsigned or mis-signed must change nothing at all. Then a worker (with the real conversation
engine) takes the queue: no entry may fail its way into a dead letter, and the gateway still
answers a normal message.
"""

from __future__ import annotations

import math
import secrets
import select
import socket
from collections.abc import Iterator
from datetime import datetime
from typing import Any, get_args

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.engine import InboundMessage, MessageType
from services.gateway.http_protocol import MAX_REQUEST_HEAD_BYTES
from services.gateway.queue import decode_message
from tests.hostile.profile import hostile
from tests.hostile.strategies import cloud_bodies, twilio_forms
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.stack import (
    APP_SECRET,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    next_db,
    post_cloud,
    signed_twilio,
    start_gateway,
    start_worker,
)

MESSAGE_TYPES = set(get_args(MessageType))
SIGNING = ["signed", "unsigned", "wrong", "other_secret", "junk_header"]


@pytest.fixture(scope="module")
def gateway(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "hostile",
        role="web",
        GATEWAY_ENGINE="services.gateway.bot:create_engine",
        RATE_LIMIT_USER="100000/minute",
        RATE_LIMIT_BUSINESS="1000000/minute",
        LOG_LEVEL="INFO",
    )
    gw.business = create_business(gw)
    yield gw
    gw.stop()


class RedisWatch:
    """What the gateway wrote: queue entries (by stream, after the last seen id), dead letters."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.seen: dict[str, str] = {}

    def total(self) -> int:
        keys = [*self.client.scan_iter("gw:q:*"), "gw:dead"]
        return sum(int(self.client.xlen(k)) for k in keys)

    def new_entries(self) -> list[tuple[str, str, dict[str, str]]]:
        found = []
        for key in self.client.scan_iter("gw:q:*"):
            start = f"({self.seen[key]}" if key in self.seen else "-"
            for entry_id, fields in self.client.xrange(key, min=start):
                found.append((key, entry_id, fields))
                self.seen[key] = entry_id
        return found


def invalid(fields: dict[str, str]) -> str | None:
    """Why a queue entry is not a well-formed message, or None."""
    if set(fields) != {"m", "rid", "rt"}:
        return f"fields {sorted(fields)}"
    try:
        message = decode_message(fields["m"])
        received = float(fields["rt"])
    except Exception as error:
        return f"does not decode: {error!r}"
    if not math.isfinite(received) or received <= 0:
        return f"bad receive time {fields['rt']!r}"
    return invalid_message(message)


def invalid_message(m: InboundMessage) -> str | None:
    if m.channel not in ("cloud_api", "twilio"):
        return f"channel {m.channel!r}"
    for name in ("provider_message_id", "channel_identity", "user_id"):
        value = getattr(m, name)
        if not isinstance(value, str) or not value:
            return f"{name} {value!r}"
    # What the session service takes (services/session/convert.py): a message it refuses can
    # never be answered.
    if len(m.user_id) > 128 or not m.user_id.isprintable():
        return f"user_id {m.user_id[:80]!r} (the session service refuses it)"
    if len(m.provider_message_id) > 256:
        return f"provider_message_id of {len(m.provider_message_id)} characters"
    if m.type not in MESSAGE_TYPES:
        return f"type {m.type!r}"
    if not isinstance(m.timestamp, datetime) or m.timestamp.tzinfo is None:
        return f"timestamp {m.timestamp!r}"
    for name in ("text", "profile_name", "business_scoped_user_id"):
        if not isinstance(getattr(m, name), str):
            return f"{name} {getattr(m, name)!r}"
    if not isinstance(m.payload, dict):
        return f"payload {m.payload!r}"
    if m.type == "location":
        for name in ("latitude", "longitude"):
            value = m.payload.get(name)
            if not isinstance(value, float | int) or not math.isfinite(value):
                return f"location {name} {value!r}"
    return None


def _headers_cloud(body: bytes, mode: str, draw: Any) -> dict[str, Any]:
    from services.gateway.channels import cloud_api

    headers: dict[str, Any] = {"content-type": "application/json"}
    if mode == "signed":
        headers[cloud_api.SIGNATURE_HEADER] = cloud_api.sign(body, APP_SECRET)
    elif mode == "wrong":
        headers[cloud_api.SIGNATURE_HEADER] = "sha256=" + secrets.token_hex(32)
    elif mode == "other_secret":
        headers[cloud_api.SIGNATURE_HEADER] = cloud_api.sign(body, "not-the-secret")
    elif mode == "junk_header":
        # Any value HTTP allows in a header (visible ASCII, spaces, obs-text as Latin-1).
        chars = st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f")
        value = draw(st.text(chars.filter(lambda c: not 0x80 <= ord(c) < 0xA0), max_size=80))
        headers[cloud_api.SIGNATURE_HEADER] = value.strip().encode("latin-1")  # type: ignore[assignment]
    return headers


def check_response(
    response: httpx.Response, mode: str, allowed: set[int], watch: RedisWatch, before: int
) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.status_code in allowed, (mode, response.status_code, response.text[:300])
    entries = watch.new_entries()
    if mode != "signed":
        assert not entries, "an unsigned or mis-signed webhook queued something"
        assert watch.total() == before, "an unsigned or mis-signed webhook changed Redis"
    for _, entry_id, fields in entries:
        reason = invalid(fields)
        assert reason is None, f"invalid entry {entry_id} queued: {reason}: {fields}"


@pytest.fixture(scope="module")
def watch(gateway: Gateway) -> Iterator[RedisWatch]:
    w = RedisWatch(gateway.redis_url)
    yield w
    w.client.close()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


@hostile(60)
@given(data=st.data())
def test_cloud_api_webhooks_never_5xx_nor_queue_garbage(
    data: st.DataObject, gateway: Gateway, client: httpx.Client, watch: RedisWatch
) -> None:
    assert gateway.business is not None
    _kind, body = data.draw(cloud_bodies(gateway.business.phone_number_id), label="body")
    mode = data.draw(st.sampled_from(SIGNING), label="signing")
    headers = _headers_cloud(body, mode, data.draw)
    path = data.draw(st.sampled_from(["/webhooks/whatsapp", "/whatsapp_response"]))
    before = watch.total()
    response = client.post(path, content=body, headers=headers)
    allowed = {"signed": {200, 400, 413}, "unsigned": {401, 413}}.get(mode, {403, 413})
    check_response(response, mode, allowed, watch, before)


@hostile(40)
@given(data=st.data())
def test_twilio_webhooks_never_5xx_nor_queue_garbage(
    data: st.DataObject, gateway: Gateway, client: httpx.Client, watch: RedisWatch
) -> None:
    from services.gateway.channels import twilio

    assert gateway.business is not None
    _kind, form = data.draw(twilio_forms(gateway.business.number), label="form")
    mode = data.draw(st.sampled_from(SIGNING), label="signing")
    path = data.draw(st.sampled_from(["/webhooks/twilio", "/whatsapp/webhook"]))
    url = f"{gateway.url}{path}"
    if isinstance(form, bytes):
        body, headers = form, {"content-type": "application/x-www-form-urlencoded"}
        headers[twilio.SIGNATURE_HEADER] = twilio.sign(url, [], "x")
        mode = "garbage"
        allowed = {400, 403, 413}
    else:
        body, headers = signed_twilio(url, form)
        if mode == "unsigned":
            del headers[twilio.SIGNATURE_HEADER]
        elif mode != "signed":
            headers[twilio.SIGNATURE_HEADER] = twilio.sign(url, form, "not-the-token")
        allowed = {"signed": {200, 413}, "unsigned": {401, 413}}.get(mode, {403, 413})
    before = watch.total()
    response = client.post(path, content=body, headers=headers)
    check_response(response, mode, allowed, watch, before)


@pytest.mark.parametrize("where", ["entry", "message"])
def test_signed_payload_nested_1000_deep_is_not_a_500(
    gateway: Gateway, client: httpx.Client, where: str
) -> None:
    """Between Python's recursion limit and orjson's parse limit. (Was a bug: the dead-letter
    record's json.dumps raised RecursionError, a 500.)"""
    from services.gateway.channels import cloud_api
    from tests.hostile.strategies import cloud_message, dump_deep, nested

    assert gateway.business is not None
    payload = cloud_api.notification(
        gateway.business.phone_number_id, [cloud_message("text", "15551230000", "hi")], []
    )
    if where == "entry":
        payload["entry"] = [nested(1000)]
    else:
        payload["entry"][0]["changes"][0]["value"]["messages"] = [nested(1000)]
    body = dump_deep(payload).encode()
    headers = {
        "content-type": "application/json",
        cloud_api.SIGNATURE_HEADER: cloud_api.sign(body, APP_SECRET),
    }
    response = client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert response.status_code in (200, 400), response.status_code


@pytest.mark.parametrize("channel", ["cloud_api", "twilio"])
@pytest.mark.parametrize("latitude", ["nan", "inf", "1e400"])
def test_non_finite_location_is_not_queued_with_null_coordinates(
    gateway: Gateway, client: httpx.Client, watch: RedisWatch, channel: str, latitude: str
) -> None:
    """(Was a bug: float() took 'nan', 'inf', '1e400' and the queue held null coordinates.)"""
    from tests.support.stack import twilio_form

    assert gateway.business is not None
    watch.new_entries()
    if channel == "twilio":
        form = twilio_form(gateway.business.number, "+15551230000", "")
        form += [("Latitude", latitude), ("Longitude", "1")]
        body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
        response = client.post("/webhooks/twilio", content=body, headers=headers)
    else:
        payload = cloud_payload(
            gateway.business.phone_number_id,
            "15551230000",
            "",
            type="location",
            location={"latitude": latitude, "longitude": "1"},
        )
        response = post_cloud(client, payload)
    assert response.status_code < 500
    for _, entry_id, fields in watch.new_entries():
        assert invalid(fields) is None, (entry_id, invalid(fields))


@pytest.mark.parametrize("channel", ["cloud_api", "twilio"])
@pytest.mark.parametrize("case", ["unprintable_sender", "long_sender", "long_message_id"])
def test_ids_the_session_service_refuses_are_not_queued(
    gateway: Gateway, client: httpx.Client, watch: RedisWatch, channel: str, case: str
) -> None:
    """(Was a bug: they were queued, then dead-lettered as invalid_message by a worker.)"""
    from tests.support.stack import twilio_form

    assert gateway.business is not None
    sender = {"unprintable_sender": "1555\x020000", "long_sender": "1" * 200}.get(case, "15550000")
    message_id = "wamid." + "x" * 300 if case == "long_message_id" else None
    watch.new_entries()
    if channel == "twilio":
        form = twilio_form(gateway.business.number, "+" + sender, "hi", sid=message_id)
        body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
        response = client.post("/webhooks/twilio", content=body, headers=headers)
    else:
        payload = cloud_payload(gateway.business.phone_number_id, sender, "hi", message_id)
        response = post_cloud(client, payload)
    assert response.status_code < 500
    entries = watch.new_entries()
    for key, entry_id, _ in entries:  # not left for the worker of the last test
        watch.client.xdel(key, entry_id)
    for _, entry_id, fields in entries:
        assert invalid(fields) is None, (entry_id, invalid(fields))


def test_what_was_queued_is_answered_and_the_gateway_still_works(
    gateway: Gateway, services: Services, fake_clouds: FakeClouds, watch: RedisWatch
) -> None:
    """Runs after the examples above: a worker takes everything they queued."""
    assert gateway.business is not None
    web = gateway.processes[0]
    assert web.process is not None and web.process.poll() is None, "the gateway died"
    for key in watch.client.scan_iter("gw:q:*"):
        for entry_id, fields in watch.client.xrange(key):
            assert invalid(fields) is None, (entry_id, invalid(fields), fields)
    gateway.processes.append(start_worker(gateway.env, services.log_dir / "hostile-worker.log"))

    def drained() -> bool:
        return all(int(watch.client.xlen(k)) == 0 for k in watch.client.scan_iter("gw:q:*"))

    assert wait_for(drained, 240, 0.5), "the worker did not finish the queue"
    reasons: dict[str, int] = {}
    failed = []
    for _, fields in watch.client.xrange("gw:dead"):
        reasons[fields["reason"]] = reasons.get(fields["reason"], 0) + 1
        if fields["reason"] not in ("unknown_business", "unusable_payload"):
            failed.append(fields)
    assert not failed, f"queued messages that could not be handled: {failed[:3]}"

    wa_id = f"1{secrets.randbelow(10**10):010d}"
    with gateway.http as client:
        response = post_cloud(client, cloud_payload(gateway.business.phone_number_id, wa_id, "hi"))
    assert response.status_code == 200
    assert wait_for(lambda: fake_clouds.texts(wa_id), 30), "no answer to a normal message"
    assert fake_clouds.texts(wa_id)[0].startswith("Hi")


def test_a_5000_digit_message_is_answered(
    gateway: Gateway, services: Services, fake_clouds: FakeClouds, watch: RedisWatch
) -> None:
    """(Was a bug: int() refused it on every attempt, so it was never answered.)"""
    assert gateway.business is not None
    if len(gateway.processes) == 1:  # the test above starts the worker; run alone, start it
        log = services.log_dir / "hostile-worker-digits.log"
        gateway.processes.append(start_worker(gateway.env, log))
    wa_id = f"1{secrets.randbelow(10**10):010d}"
    with gateway.http as client:
        payload = cloud_payload(gateway.business.phone_number_id, wa_id, "9" * 5000)
        assert post_cloud(client, payload).status_code == 200

    def dead() -> list[dict[str, str]]:
        return [f for _, f in watch.client.xrange("gw:dead") if wa_id in f.get("orig_m", "")]

    assert wait_for(lambda: fake_clouds.texts(wa_id) or dead(), 60)
    assert not dead(), dead()[0]["error"]
    assert fake_clouds.texts(wa_id)


def test_a_request_head_that_does_not_end_is_cut_off_at_its_bound(gateway: Gateway) -> None:
    """A client sending one header without end (megabytes) gets 431 once the head passes its
    bound, and the connection is closed. (Was a bug: httptools kept every byte, 20 MB and more
    per connection, with no bound but the client's patience.)"""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    chunk = b"a" * 65536
    answer, sent = b"", 0
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        while sent < 20 * 2**20:
            conn.sendall(chunk)
            sent += len(chunk)
            if select.select([conn], [], [], 0.05)[0]:
                while data := conn.recv(65536):  # to the end: the server closes
                    answer += data
                break
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent <= MAX_REQUEST_HEAD_BYTES + 8 * len(chunk)


def test_large_heads_within_the_bound_are_served_one_after_another(gateway: Gateway) -> None:
    """Two requests on one kept-alive connection, each with a head of 3/4 of the bound (more
    than the bound together), are both served: the bound is per request."""
    padding = {"X-Padding": "p" * (MAX_REQUEST_HEAD_BYTES * 3 // 4)}
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(2):
            assert client.get("/health", headers=padding).status_code == 200
        assert client.get("/health").status_code == 200
