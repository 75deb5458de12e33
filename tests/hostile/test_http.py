"""The gateway's HTTP face at the protocol's edges, against a real gateway process over real
sockets: bodies that never end, clients that go away, methods a webhook path does not take.

Raw sockets where the point is what goes over the wire (a body cut short, bytes left unsent);
httpx elsewhere. Every answer is checked for its status and its body, and the gateway's log for
errors: a client's behaviour is never the gateway's error.
"""

from __future__ import annotations

import gzip
import json
import secrets
import select
import socket
import time
import zlib
from collections.abc import Iterator

import pytest

from services.gateway.channels import cloud_api, twilio
from services.gateway.http_protocol import MAX_REQUEST_HEAD_BYTES
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.stack import (
    APP_SECRET,
    TWILIO_TOKEN,
    VERIFY_TOKEN,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    metric,
    new_wa_id,
    next_db,
    queue_lengths,
    signed_cloud,
    signed_twilio,
    start_gateway,
    twilio_form,
)

WEBHOOKS = {"/webhooks/whatsapp": "cloud_api", "/webhooks/twilio": "twilio"}
READ_TIMEOUT = 3  # REQUEST_READ_TIMEOUT_SECONDS of this module's gateway


@pytest.fixture(scope="module")
def gateway(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "http-edges",
        role="web",
        LOG_LEVEL="INFO",
        REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
    )
    gw.business = create_business(gw)
    yield gw
    gw.stop()


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def read_to_end(conn: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (the socket's own timeout,
    far longer than the gateway's, fails the test if it never does)."""
    answer = b""
    while data := conn.recv(65536):
        answer += data
    return answer


def read_response(conn: socket.socket) -> bytes:
    """One response (a head and its Content-Length's worth of body) read off the connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += receive(conn, answer)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(answer) < len(head) + 4 + length:
        answer += receive(conn, answer)
    return answer


def receive(conn: socket.socket, so_far: bytes) -> bytes:
    data = conn.recv(65536)
    assert data, f"closed after {so_far[:200]!r}"
    return data


def signed_head(gateway: Gateway, length: int | None = None) -> tuple[bytes, bytes]:
    """A signed Cloud API webhook for a new user: its head (with ``length`` as its
    Content-Length, the body's own by default) and its body."""
    assert gateway.business is not None
    body, headers = signed_cloud(cloud_payload(gateway.business.phone_number_id, new_wa_id(), "hi"))
    headers["content-length"] = str(len(body) if length is None else length)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode(), body


def incomplete(gateway: Gateway, channel: str) -> float:
    return metric(gateway, f'gateway_webhooks_total{{channel="{channel}",outcome="incomplete"}}')


@pytest.mark.parametrize("path", sorted(WEBHOOKS))
def test_a_client_gone_before_its_body_ended_is_counted_not_an_error(
    gateway: Gateway, path: str
) -> None:
    """A webhook whose sender closes the connection 40 bytes into a body of 100 is counted
    (``outcome="incomplete"``) and logged as what it is. (Was a bug: Starlette's
    ClientDisconnect escaped the endpoint and uvicorn logged *Exception in ASGI application*
    at error level, for something any client can do.)"""
    channel = WEBHOOKS[path]
    before = incomplete(gateway, channel)
    with connect(gateway) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b"a" * 40
        )
    assert wait_for(lambda: incomplete(gateway, channel) == before + 1, 10)
    web = gateway.processes[0]
    assert any(line.get("path") == path for line in web.log_events("webhook body cut short"))
    assert [line for line in web.log_events() if line.get("level") == "error"] == []


def test_a_body_shorter_than_its_content_length_is_answered_408_and_nothing_queued(
    gateway: Gateway,
) -> None:
    """A signed webhook whose sender stops 40 bytes short of its Content-Length and waits gets
    408 and its connection closed once REQUEST_READ_TIMEOUT_SECONDS have passed; the webhook
    counts as cut short and nothing is queued. (Was a bug: uvicorn has no such bound, so the
    connection and the request's task were held for as long as the client liked: enough of
    them and the gateway runs out of descriptors.)"""
    queued = queue_lengths(gateway.redis_url)
    before = incomplete(gateway, "cloud_api")
    head, body = signed_head(gateway)
    with connect(gateway) as conn:
        conn.sendall(head + body[:-40])
        answer = read_to_end(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert answer.endswith(b'\r\n\r\n{"detail": "the request did not arrive in time"}'), answer
    assert b"connection: close" in answer.lower()
    assert wait_for(lambda: incomplete(gateway, "cloud_api") == before + 1, 10)
    assert queue_lengths(gateway.redis_url) == queued


def test_a_head_past_its_bound_is_431_also_when_it_arrives_whole(gateway: Gateway) -> None:
    """A signed webhook whose head is past the bound (64 KiB), sent with its body in one write
    and so read whole, is refused as a head still arriving is: 431, the connection closed,
    nothing queued. (Was a bug: the bound was checked only on a head still unfinished at the end
    of a read, so this webhook was queued and answered 200, while the same bytes split over two
    reads were 431.)"""
    queued = queue_lengths(gateway.redis_url)
    head, body = signed_head(gateway)
    padding = b"X-Padding: " + b"p" * (MAX_REQUEST_HEAD_BYTES + 4096) + b"\r\n"
    with connect(gateway) as conn:
        conn.sendall(head.replace(b"Host: x\r\n", b"Host: x\r\n" + padding, 1) + body)
        answer = read_to_end(conn)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b'\r\n\r\n{"detail": "request line and headers too large"}'), answer
    assert queue_lengths(gateway.redis_url) == queued


def test_a_body_sent_a_byte_at_a_time_does_not_extend_the_bound(gateway: Gateway) -> None:
    """Bytes that keep coming do not reset the bound: it is on the whole request."""
    head, body = signed_head(gateway)
    with connect(gateway) as conn:
        conn.sendall(head)
        answer = b""
        for byte in body:
            conn.sendall(bytes([byte]))
            if select.select([conn], [], [], 0.25)[0]:
                answer = read_to_end(conn)
                break
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


@pytest.mark.parametrize("sent", [b"", b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nX-A: "])
def test_a_silent_connection_or_an_unfinished_head_is_closed(gateway: Gateway, sent: bytes) -> None:
    """A connection opened and left silent is closed without a word (as an idle kept-alive one
    is); a head that stops halfway is answered 408. (Was a bug: both held their connection for
    good; uvicorn's keep-alive timeout only starts after a first answer.)"""
    with connect(gateway) as conn:
        conn.sendall(sent)
        answer = read_to_end(conn)
    if sent:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    else:
        assert answer == b""


def test_a_chunked_body_that_goes_on_after_its_413_is_cut_off(gateway: Gateway) -> None:
    """A chunked body past MAX_BODY_BYTES is answered 413 while it streams; a sender that keeps
    sending after it has its connection closed at the bound instead of being read for ever.
    (Was a bug: uvicorn read and dropped whatever came, gigabytes, for as long as it came.)"""
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    with connect(gateway) as conn:
        conn.sendall(
            b"POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while not select.select([conn], [], [], 0)[0]:
            conn.sendall(chunk)
        answer = read_response(conn)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        closed = False
        give_up = time.monotonic() + 10 * READ_TIMEOUT
        while not closed and time.monotonic() < give_up:
            try:
                conn.sendall(chunk)
                closed = bool(select.select([conn], [], [], 0.1)[0]) and conn.recv(65536) == b""
            except TimeoutError:  # still open, only no longer reading: not closed
                break
            except OSError:  # reset: closed while the chunk was on its way
                closed = True
    assert closed


def test_requests_that_arrive_in_time_are_served_one_after_another(gateway: Gateway) -> None:
    """The bound is per request, from its first byte: on one kept-alive connection, requests
    whose bodies come in two parts (a pause between them) are each answered 200, however long
    the connection has been open."""
    with connect(gateway) as conn:
        # Four pauses of a third of the bound: the connection outlives it, each request has
        # two thirds of it to spare for a busy machine.
        for _ in range(4):
            head, body = signed_head(gateway)
            conn.sendall(head + body[:10])
            time.sleep(READ_TIMEOUT / 3)
            conn.sendall(body[10:])
            answer = read_response(conn)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/webhooks/whatsapp", "GET, HEAD, POST"),
        ("/whatsapp_response", "GET, HEAD, POST"),
        ("/webhooks/twilio", "GET, HEAD, POST"),
        ("/whatsapp/webhook", "GET, HEAD, POST"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_a_method_a_webhook_path_does_not_take_is_405_naming_those_it_does(
    gateway: Gateway, path: str, allowed: str, method: str
) -> None:
    """(Was a bug: the Cloud API paths answered ``Allow: POST``, leaving out the subscription
    check's GET: the POST route, served ahead of FastAPI's, answered for the path alone.)"""
    with gateway.http as client:
        response = client.request(method, path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == set(allowed.split(", "))
    assert response.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("path", ["/webhooks/whatsapp", "/whatsapp_response"])
def test_head_on_a_subscription_check_answers_as_its_get_does(gateway: Gateway, path: str) -> None:
    """HEAD is GET without the body (RFC 9110 asks every server for both). (Was a bug: 405.)"""
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    with gateway.http as client:
        get = client.get(path, params=query)
        head = client.head(path, params=query)
        wrong = client.head(path, params={**query, "hub.verify_token": "not-it"})
    assert (get.status_code, get.text) == (200, "1158201444")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    assert wrong.status_code == 403


@pytest.mark.parametrize(
    "path",
    ["/health", "/ready", "/health/ready", "/ready?checks=redis", "/health/info", "/metrics"],
)
def test_head_on_health_and_metrics_answers_as_get_does(gateway: Gateway, path: str) -> None:
    """Uptime monitors (updown, Montastic, Wasitup) probe with HEAD. (Was a bug: 405 on every
    health endpoint and /metrics, a service down to them, while the webhook paths took it.)"""
    with gateway.http as client:
        get = client.get(path)
        head = client.head(path)
    assert (head.status_code, head.content) == (get.status_code, b"")
    assert head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    [
        "/health/",
        "/ready/",
        "/health/ready/?checks=redis",
        "/health/info/",
        "/metrics/",
        "/admin/businesses/",
        "/admin/dead-letters/",
    ],
)
def test_a_path_with_a_trailing_slash_is_served_as_without_it(gateway: Gateway, path: str) -> None:
    """A probe, a monitor or a script written with a trailing slash (``/health/``) got
    Starlette's 307 to the path without it, built from the Host it was sent to: behind an
    ingress, ``http://`` and the inside name; and ``curl -X POST`` does not follow one. The
    webhooks were served with the slash already (session 18); every other path is now too, and
    one that does not exist either way is the JSON 404. (Was a bug: 307.)"""
    bare = path.replace("/?", "?").rstrip("/")
    with gateway.admin() as client:
        slashed, plain = client.get(path), client.get(bare)
        heads = client.head(path), client.head(bare)
        unknown = client.get("/no-such-path/")
        created = client.post(
            "/admin/businesses/",
            json={"name": "Slash", "subdomain": "slash" + secrets.token_hex(4), "locale": "en"},
        )
    assert (slashed.status_code, plain.status_code) == (200, 200), slashed.text
    assert heads[0].status_code == heads[1].status_code  # 200, or 405 where GET alone is taken
    assert slashed.headers["content-type"] == plain.headers["content-type"]
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("path", sorted(WEBHOOKS))
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("signed", ["decoded", "encoded"])
def test_a_compressed_webhook_is_415_naming_its_encoding(
    gateway: Gateway, path: str, encoding: str, signed: str
) -> None:
    """Neither provider compresses a webhook, and the gateway reads bodies as they come. A body
    with a Content-Encoding is 415 naming it, whichever bytes it was signed over, and nothing
    is queued. (Was a bug: 403 *signature does not match*, counted as a bad signature, the
    sign of a rotated secret, when signed over the decoded body; 400 when over the encoded.)"""
    assert gateway.business is not None
    if path == "/webhooks/twilio":
        form = twilio_form(gateway.business.number, "+" + new_wa_id(), "hi")
        body, headers = signed_twilio(f"{gateway.url}{path}", form)
    else:
        payload = cloud_payload(gateway.business.phone_number_id, new_wa_id(), "hi")
        body, headers = signed_cloud(payload)
    compress = {"gzip": gzip.compress, "deflate": zlib.compress}[encoding]
    encoded = compress(body)
    if signed == "encoded":
        if path == "/webhooks/twilio":  # Twilio signs the parameters, which are not readable
            headers[twilio.SIGNATURE_HEADER] = twilio.sign(f"{gateway.url}{path}", [], TWILIO_TOKEN)
        else:
            headers[cloud_api.SIGNATURE_HEADER] = cloud_api.sign(encoded, APP_SECRET)
    queued = queue_lengths(gateway.redis_url)
    with gateway.http as client:
        response = client.post(
            path, content=encoded, headers={**headers, "content-encoding": encoding}
        )
    assert response.status_code == 415, response.text
    assert encoding in response.json()["detail"]
    assert queue_lengths(gateway.redis_url) == queued


@pytest.mark.parametrize("encoding", ["identity", "Identity"])
def test_an_identity_content_encoding_is_taken(gateway: Gateway, encoding: str) -> None:
    assert gateway.business is not None
    payload = cloud_payload(gateway.business.phone_number_id, new_wa_id(), "hi")
    body, headers = signed_cloud(payload)
    with gateway.http as client:
        response = client.post(
            "/webhooks/whatsapp", content=body, headers={**headers, "content-encoding": encoding}
        )
    assert response.status_code == 200
    assert response.json()["queued"] == 1


def test_every_refusal_has_one_body_shape(gateway: Gateway) -> None:
    """Every error the gateway answers is JSON ``{"detail": "…"}``, whichever layer refuses.
    (Was a bug: a body over MAX_BODY_BYTES by its Content-Length got Starlette's plain-text
    413 "Content Too Large", the same found while streaming the JSON one; the subscription
    check's 403 was the text "forbidden", the protocol's 400, 408 and 431 plain text.)"""
    from services.gateway.settings import GatewaySettings

    limit = GatewaySettings.model_fields["max_body_bytes"].default
    big = b"{" + b" " * limit + b"}"

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    json_type = {"content-type": "application/json"}
    with gateway.http as client:
        answers = {
            "413 by Content-Length": client.post("/webhooks/whatsapp", content=big),
            "413 while streaming": client.post("/webhooks/whatsapp", content=chunks()),
            "413 Twilio": client.post("/webhooks/twilio/", content=big),
            "413 admin": client.post("/admin/businesses", content=big, headers=json_type),
            "403 subscription check": client.get("/webhooks/whatsapp", params={"hub.mode": "x"}),
            "401 unsigned": client.post("/webhooks/whatsapp", content=b"{}"),
            "404": client.get("/no-such-path"),
            "405": client.put("/webhooks/twilio"),
        }
    for case, answer in answers.items():
        assert answer.status_code == int(case[:3]), case
        assert answer.headers["content-type"] == "application/json", case
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and detail, case
    with connect(gateway) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000)
        head, _, body = read_to_end(conn).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert b"content-type: application/json" in head
    assert isinstance(json.loads(body)["detail"], str)
    with connect(gateway) as conn:  # one uvicorn cannot parse
        conn.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        head, _, body = read_to_end(conn).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head
    assert json.loads(body) == {"detail": "Invalid HTTP request received."}


def test_nothing_a_client_did_here_is_logged_as_an_error(gateway: Gateway) -> None:
    """Runs last: whatever the clients above did, the gateway wrote no error line and lives."""
    web = gateway.processes[0]
    assert web.process is not None and web.process.poll() is None, "the gateway died"
    assert [line for line in web.log_events() if line.get("level") == "error"] == []
