"""Webhook parsing and signatures, and the senders' wire format against the local fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from services.gateway.channels import cloud_api, twilio
from services.gateway.engine import Button, ListRow, Reply
from services.gateway.senders.base import (
    ANSWER_LIMIT,
    HttpClient,
    Sender,
    SendError,
    Target,
    TokenExpired,
    split_text,
    utf16_units,
)
from services.gateway.senders.cloud_api import CloudApiSender
from services.gateway.senders.twilio import TwilioSender, render
from tests.support.fake_clouds import FakeClouds
from tests.support.proxy import ForwardProxy, RawAnswers


def change(
    messages: list[dict[str, object]], pnid: str = "111", **value: object
) -> dict[str, object]:
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
            "contacts": [
                {"profile": {"name": "Ana"}, "wa_id": "34600000001", "user_id": "US.123"},
                {"profile": {"name": "Bo"}, "wa_id": "34600000002"},
            ],
            "messages": messages,
            **value,
        },
    }


def msg(
    kind: str, body: dict[str, object] | None = None, sender: str = "34600000001", **extra: object
) -> dict[str, object]:
    data: dict[str, object] = {
        "from": sender,
        "id": f"wamid.{kind}",
        "timestamp": "1700000000",
        "type": kind,
    }
    if body is not None:
        data[kind] = body
    data.update(extra)
    return data


def test_every_entry_change_and_message_is_parsed() -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "A",
                "changes": [
                    change([msg("text", {"body": "hi"})]),
                    change(
                        [msg("text", {"body": "2nd"}, sender="34600000002", id="wamid.b")],
                        pnid="222",
                    ),
                ],
            },
            {
                "id": "B",
                "changes": [
                    change(
                        [
                            msg("reaction", {"emoji": "👍", "message_id": "wamid.x"}),
                            msg(
                                "location",
                                {
                                    "latitude": 40.4,
                                    "longitude": -3.7,
                                    "name": "Sol",
                                    "address": "Madrid",
                                },
                            ),
                        ]
                    )
                ],
            },
        ],
    }
    parsed = cloud_api.parse(payload)
    assert [(m.provider_message_id, m.channel_identity, m.type) for m in parsed.messages] == [
        ("wamid.text", "111", "text"),
        ("wamid.b", "222", "text"),
        ("wamid.reaction", "111", "reaction"),
        ("wamid.location", "111", "location"),
    ]
    first = parsed.messages[0]
    assert (first.user_id, first.profile_name, first.business_scoped_user_id, first.text) == (
        "34600000001",
        "Ana",
        "US.123",
        "hi",
    )
    assert first.timestamp.timestamp() == 1700000000
    assert parsed.messages[1].profile_name == "Bo"
    assert parsed.messages[2].payload == {"emoji": "👍", "message_id": "wamid.x"}
    assert parsed.messages[3].payload == {
        "latitude": 40.4,
        "longitude": -3.7,
        "name": "Sol",
        "address": "Madrid",
    }
    assert cloud_api.phone_number_ids(payload) == ["111", "222"]


def test_a_user_with_a_username_and_no_phone_keeps_their_profile_name() -> None:
    """Such a user's message has `from_user_id` and no `from`, their contact `user_id` and no
    `wa_id`. (Was a bug: contacts were found by `wa_id` only, so the profile name was lost and
    the bot greeted these users without it.)"""
    raw = {"from_user_id": "US.1349", "id": "wamid.u", "timestamp": "1700000000", "type": "text"}
    raw["text"] = {"body": "hi"}
    contact = {"profile": {"name": "Ana Díaz", "username": "@ana"}, "user_id": "US.1349"}
    parsed = cloud_api.parse(cloud_api.notification("111", [raw], [contact]))
    [message] = parsed.messages
    assert (message.user_id, message.business_scoped_user_id, message.profile_name) == (
        "US.1349",
        "US.1349",
        "Ana Díaz",
    )


def test_a_built_notification_is_what_the_parser_reads() -> None:
    message = {
        "from": "15551230000",
        "id": "wamid.built",
        "timestamp": "1763700000",
        "type": "text",
        "text": {"body": "hi"},
    }
    contact = {"profile": {"name": "Ann"}, "wa_id": "15551230000"}
    parsed = cloud_api.parse(cloud_api.notification("100000000000101", [message], [contact]))
    (inbound,) = parsed.messages
    assert (inbound.channel_identity, inbound.user_id, inbound.text, inbound.profile_name) == (
        "100000000000101",
        "15551230000",
        "hi",
        "Ann",
    )
    assert not parsed.unusable and not parsed.statuses


@pytest.mark.parametrize(
    ("raw", "kind", "text", "payload"),
    [
        (
            msg(
                "interactive",
                {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
            ),
            "interactive",
            "Yes",
            {"reply_id": "yes", "title": "Yes", "kind": "button_reply"},
        ),
        (
            msg(
                "interactive",
                {
                    "type": "list_reply",
                    "list_reply": {"id": "r1", "title": "Row", "description": "D"},
                },
            ),
            "interactive",
            "Row",
            {"reply_id": "r1", "title": "Row", "description": "D", "kind": "list_reply"},
        ),
        (
            msg("button", {"payload": "P", "text": "Go"}),
            "button",
            "Go",
            {"reply_id": "P", "title": "Go"},
        ),
        (
            msg("image", {"id": "m1", "mime_type": "image/jpeg", "caption": "look"}),
            "image",
            "look",
            {"media_id": "m1", "mime_type": "image/jpeg", "caption": "look", "filename": ""},
        ),
        (
            msg("document", {"id": "m2", "mime_type": "application/pdf", "filename": "a.pdf"}),
            "document",
            "",
            {"media_id": "m2", "mime_type": "application/pdf", "caption": "", "filename": "a.pdf"},
        ),
        (
            msg("audio", {"id": "m3", "mime_type": "audio/ogg"}),
            "audio",
            "",
            {"media_id": "m3", "mime_type": "audio/ogg", "caption": "", "filename": ""},
        ),
        (
            msg("video", {"id": "m4"}),
            "video",
            "",
            {"media_id": "m4", "mime_type": "", "caption": "", "filename": ""},
        ),
        (
            msg("sticker", {"id": "m5", "mime_type": "image/webp"}),
            "sticker",
            "",
            {"media_id": "m5", "mime_type": "image/webp", "caption": "", "filename": ""},
        ),
        (
            msg("unsupported", None, errors=[{"code": 131051}]),
            "unknown",
            "",
            {"raw_type": "unsupported", "unsupported_type": ""},
        ),
        (
            msg("unsupported", {"type": "poll_creation"}, errors=[{"code": 131051}]),
            "unknown",
            "",
            {"raw_type": "unsupported", "unsupported_type": "poll_creation"},
        ),
        (msg("order", {"catalog_id": "1"}), "unknown", "", {"raw_type": "order"}),
    ],
)
def test_message_types(
    raw: dict[str, object], kind: str, text: str, payload: dict[str, object]
) -> None:
    [message] = cloud_api.parse({"entry": [{"changes": [change([raw])]}]}).messages
    assert (message.type, message.text, message.payload) == (kind, text, payload)


def test_statuses_and_unusable_items() -> None:
    statuses = [
        {"id": "wamid.1", "status": "delivered", "timestamp": "1", "recipient_id": "346"},
        {"id": "wamid.2", "status": "failed", "recipient_id": "346", "errors": [{"code": 131047}]},
    ]
    payload = {
        "entry": [
            {"changes": [change([], statuses=statuses), {"field": "account_update", "value": {}}]},
            {"changes": [change([{"type": "text"}, "junk"])]},
            {"no": "changes"},
        ]
    }
    parsed = cloud_api.parse(payload)
    assert parsed.messages == []
    assert [(s.message_id, s.status, s.error_codes) for s in parsed.statuses] == [
        ("wamid.1", "delivered", ()),
        ("wamid.2", "failed", (131047,)),
    ]
    assert len(parsed.unusable) == 4  # account_update, two bad messages, entry without changes
    with pytest.raises(cloud_api.MalformedPayload):
        cloud_api.parse([1, 2])
    assert cloud_api.parse({"object": "x"}).unusable[0].reason == "no entry list"


def test_cloud_signature() -> None:
    body = b'{"a":1}'
    header = cloud_api.sign(body, "s3cret")
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert cloud_api.signature_matches(body, header, "s3cret")
    assert not cloud_api.signature_matches(body + b" ", header, "s3cret")
    assert not cloud_api.signature_matches(body, header, "other")
    assert not cloud_api.signature_matches(body, "sha256=zz", "s3cret")


def test_twilio_signature_matches_twilio_published_vectors() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    assert twilio.sign(url, params, "12345") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio.signature_matches(
        url, list(reversed(params)), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345"
    )
    repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    assert twilio.sign(url, repeated, "12345") == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert not twilio.signature_matches(
        url + "&x=1", params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345"
    )
    # With and without the default port are both what Twilio may have signed.
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert twilio.signature_matches(with_port, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
    # And without a non-default one: Twilio drops an HTTPS URL's port before signing.
    on_8443 = "https://mycompany.com:8443/myapp.php?foo=1&bar=2"
    assert twilio.signature_matches(on_8443, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
    assert twilio.public_url(
        "https://bot.example.com/", "/webhooks/twilio", "a=1", "http://10.0.0.1/x"
    ) == ("https://bot.example.com/webhooks/twilio?a=1")
    # Without PUBLIC_BASE_URL: also the URL a TLS-ending proxy forwards (its first values).
    seen = "http://gateway.parley.svc/webhooks/twilio?a=1"
    forwarded = {"x-forwarded-proto": "https, http", "x-forwarded-host": "bot.example.com"}
    assert twilio.public_urls(None, "/webhooks/twilio", "a=1", seen, forwarded) == [
        seen,
        "https://bot.example.com/webhooks/twilio?a=1",
    ]
    assert twilio.public_urls(None, "/webhooks/twilio", "a=1", seen, {}) == [seen]
    assert twilio.public_urls(
        "https://bot.example.com", "/webhooks/twilio", "", seen, {"x-forwarded-proto": "http"}
    ) == ["https://bot.example.com/webhooks/twilio"]


def test_twilio_form_parsing() -> None:
    base = [
        ("MessageSid", "SM1"),
        ("From", "whatsapp:+34600000001"),
        ("To", "whatsapp:+15550100001"),
    ]
    text = twilio.parse([*base, ("Body", "hola"), ("ProfileName", "Ana")])
    assert not isinstance(text, twilio.Status)
    assert (text.user_id, text.channel_identity, text.type, text.text, text.profile_name) == (
        "+34600000001",
        "+15550100001",
        "text",
        "hola",
        "Ana",
    )
    location = twilio.parse(
        [*base, ("Latitude", "40.4"), ("Longitude", "-3.7"), ("Address", "Madrid")]
    )
    assert not isinstance(location, twilio.Status) and location.type == "location"
    media = twilio.parse(
        [*base, ("NumMedia", "1"), ("MediaContentType0", "image/png"), ("MediaUrl0", "https://x/y")]
    )
    assert not isinstance(media, twilio.Status) and (media.type, media.payload["media_id"]) == (
        "image",
        "https://x/y",
    )
    button = twilio.parse([*base, ("ButtonText", "Yes"), ("ButtonPayload", "yes")])
    assert not isinstance(button, twilio.Status) and button.payload == {
        "reply_id": "yes",
        "title": "Yes",
    }
    status = twilio.parse([("MessageSid", "SM2"), ("MessageStatus", "delivered")])
    assert status == twilio.Status("SM2", "delivered", "")
    with pytest.raises(ValueError):
        twilio.parse([("From", "x")])
    with pytest.raises(twilio.MalformedForm):
        twilio.parse_form(b"\xff\xfe")
    with pytest.raises(twilio.MalformedForm):
        twilio.parse_form(b"no-equals-sign")


def test_split_text_keeps_every_character_under_the_limit() -> None:
    text = ("word " * 2000).strip()
    chunks = split_text(text, 4096)
    assert all(len(c) <= 4096 for c in chunks) and len(chunks) == 3
    assert " ".join(chunks).split() == text.split()
    assert split_text("x" * 5000, 4096) == ["x" * 4096, "x" * 904]
    assert split_text("", 10) == [""]
    # Measured another way (UTF-16, where an emoji is two), a chunk is cut before the limit.
    assert split_text("🙂" * 5, 4, utf16_units) == ["🙂🙂", "🙂🙂", "🙂"]
    assert split_text("ab🙂", 3, utf16_units) == ["ab", "🙂"]


def test_cloud_payloads_buttons_and_lists() -> None:
    buttons = CloudApiSender.payloads(
        "346", Reply("Pick", buttons=(Button("a", "A"), Button("b", "B")))
    )
    assert buttons == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "346",
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Pick"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "a", "title": "A"}},
                        {"type": "reply", "reply": {"id": "b", "title": "B"}},
                    ]
                },
            },
        }
    ]
    listing = CloudApiSender.payloads(
        "346", Reply("x" * 5000, list_button="Flights", rows=(ListRow("r", "Row", "desc"),))
    )
    assert [p["type"] for p in listing] == ["text", "interactive"]
    assert listing[1]["interactive"]["action"]["sections"][0]["rows"] == [
        {"id": "r", "title": "Row", "description": "desc"}
    ]
    long = CloudApiSender.payloads("346", Reply("y" * 9000))
    assert [len(p["text"]["body"]) for p in long] == [4096, 4096, 808]
    assert (
        render(Reply("Pick", rows=(ListRow("r", "Row", "desc"), ListRow("s", "Two"))))
        == "Pick\n1. Row - desc\n2. Two"
    )


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(5.0)
    yield client
    await client.aclose()


TARGET = Target("cloud_api", "b1", "34600000009", "123456", access_token="tok-1")


async def send(sender: Sender, target: Target, reply: Reply) -> None:
    """Every part of a reply, as the worker sends them."""
    for part in sender.parts(target, reply):
        await sender.post(target, part)


async def test_senders_go_through_the_egress_proxy_the_environment_names(
    fake_clouds: FakeClouds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network whose only way out is an HTTP proxy names it in ``HTTPS_PROXY``/``HTTP_PROXY``
    (``NO_PROXY`` the hosts reached directly), which the gateway's other HTTP clients (the
    language model's, and the search service's to Amadeus: httpx) follow. (Was a bug: the
    senders' aiohttp session ignored them, so every reply tried to go out directly and failed
    as "Graph API unreachable" until its retry window ended in a dead letter.)"""
    proxy = ForwardProxy().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # A client each: the proxy notes a connection's first request, and one client would
        # send both over one connection.
        through, through_too, direct = HttpClient(5.0), HttpClient(5.0), HttpClient(5.0)
        try:
            for sender in (
                CloudApiSender(through, fake_clouds.url),
                TwilioSender(through_too, fake_clouds.url, "AC1", "token-1"),
            ):
                await send(sender, TARGET, Reply("by the proxy"))
            assert [line.split(" ")[:2] for line in proxy.requests] == [
                ["POST", f"{fake_clouds.url}/123456/messages"],
                ["POST", f"{fake_clouds.url}/2010-04-01/Accounts/AC1/Messages.json"],
            ]
            assert fake_clouds.texts("34600000009")[-2:] == ["by the proxy"] * 2
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            await send(CloudApiSender(direct, fake_clouds.url), TARGET, Reply("directly"))
            assert len(proxy.requests) == 2
            assert fake_clouds.texts("34600000009")[-1] == "directly"
        finally:
            for client in (through, through_too, direct):
                await client.aclose()
    finally:
        proxy.stop()


async def test_cloud_sender_against_the_fake(fake_clouds: FakeClouds, http: HttpClient) -> None:
    sender = CloudApiSender(http, fake_clouds.url)
    await send(sender, TARGET, Reply("hello"))
    [sent] = fake_clouds.replies("34600000009")[-1:]
    assert (sent.path, sent.authorization, sent.body["text"]["body"]) == (
        "/123456/messages",
        "Bearer tok-1",
        "hello",
    )
    # 429 and 130429 are backed off and retried within the send.
    before = len(fake_clouds.replies("34600000009"))
    fake_clouds.failures += [(429, {"error": {"code": 130429, "message": "slow down"}})]
    await send(sender, TARGET, Reply("again"))
    assert len(fake_clouds.replies("34600000009")) == before + 2
    fake_clouds.failures += [(401, {"error": {"code": 190, "message": "expired"}})]
    with pytest.raises(TokenExpired):
        await send(sender, TARGET, Reply("x"))
    fake_clouds.failures += [(400, {"error": {"code": 131047, "message": "window"}})]
    with pytest.raises(SendError) as window:
        await send(sender, TARGET, Reply("x"))
    assert (window.value.outcome, window.value.retryable) == ("outside_window", False)
    fake_clouds.failures += [(503, {"error": {"code": 2, "message": "down"}})]
    with pytest.raises(SendError) as down:
        await send(sender, TARGET, Reply("x"))
    assert down.value.retryable
    with pytest.raises(SendError) as unreachable:
        await send(CloudApiSender(http, "http://127.0.0.1:9"), TARGET, Reply("x"))
    assert unreachable.value.retryable


async def test_twilio_sender_against_the_fake(fake_clouds: FakeClouds, http: HttpClient) -> None:
    sender = TwilioSender(http, fake_clouds.url, "ACenv", "env-token")
    target = Target("twilio", "b1", "+34600000010", "+15550100001")
    await send(sender, target, Reply("a" * 2000))
    sent = fake_clouds.replies("+34600000010")
    assert [len(s.body["Body"]) for s in sent] == [1600, 400]
    assert sent[0].path == "/2010-04-01/Accounts/ACenv/Messages.json"
    assert sent[0].basic_auth == ("ACenv", "env-token")
    assert sent[0].body["From"] == "whatsapp:+15550100001"
    own = Target(
        "twilio",
        "b1",
        "+34600000010",
        "+15550100001",
        twilio_account_sid="ACown",
        twilio_auth_token="own",
    )
    await send(sender, own, Reply("b"))
    assert fake_clouds.replies("+34600000010")[-1].basic_auth == ("ACown", "own")
    # A SID alone is a subaccount, for which the platform's credentials act; a token alone
    # means nothing. Never a mixed pair (Twilio answers 401 to it).
    for alone, account in (
        (replace(own, twilio_auth_token=""), "ACown"),
        (replace(own, twilio_account_sid=""), "ACenv"),
    ):
        await send(sender, alone, Reply("c"))
        last = fake_clouds.replies("+34600000010")[-1]
        assert last.path == f"/2010-04-01/Accounts/{account}/Messages.json"
        assert last.basic_auth == ("ACenv", "env-token")
    fake_clouds.failures += [(400, {"code": 21211, "message": "bad To"})]
    with pytest.raises(SendError) as bad:
        await send(sender, target, Reply("c"))
    assert not bad.value.retryable and bad.value.code == 21211
    # Emoji count twice against Twilio's 1,600 (21617): a reply of 1,590 characters with 30
    # of them is two messages, each within the limit, nothing lost.
    emoji_user = replace(target, user_id="+34600000011")
    text = ("Have a good trip 🛫 " * 30 + "x" * 1590)[:1590]
    await send(sender, emoji_user, Reply(text))
    bodies = [r.body["Body"] for r in fake_clouds.replies("+34600000011")]
    assert len(bodies) == 2 and all(utf16_units(b) <= 1600 for b in bodies)
    assert "".join(bodies).replace(" ", "") == text.replace(" ", "")
    # A refused pair (401, 20003) is a credentials outcome, naming whose pair and no token.
    fake_clouds.twilio_accounts = {"ACenv": "env-token", "ACown": "rotated"}
    stale = replace(own, twilio_auth_token="stale-secret")
    try:
        with pytest.raises(SendError) as refused:
            await send(sender, stale, Reply("d"))
        await send(sender, target, Reply("e"))  # the platform's pair is still good
    finally:
        fake_clouds.twilio_accounts = {}
    error = refused.value
    assert (error.outcome, error.retryable, error.code) == ("credentials_refused", False, 20003)
    assert "business's own" in str(error) and "ACown" in str(error)
    assert "stale-secret" not in str(error)


async def test_a_provider_answer_is_read_no_further_than_its_bound(http: HttpClient) -> None:
    """An error page of megabytes (a proxy's, or a broken answer) is read to its first
    ``ANSWER_LIMIT`` bytes, which say what it was; the send fails as its status says. (Was a
    bug: the body was read whole into the worker's memory, however large: a 400 MiB page took
    1.5 GB, and a body without end was read until the send's deadline.)"""
    page = b"<html><body>Bad gateway</body></html>" + b" " * (32 << 20)
    head = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
    huge = RawAnswers(lambda _: (head + b"Content-Length: %d\r\n\r\n" % len(page) + page, True))
    huge.start()
    try:
        answer = await http.post(f"{huge.url}/123456/messages", json={"type": "text"})
        assert answer.status == 502 and len(answer.body) <= ANSWER_LIMIT
        with pytest.raises(SendError) as failed:
            await send(CloudApiSender(http, huge.url), TARGET, Reply("x"))
    finally:
        huge.stop()
    assert failed.value.retryable and "502 (None): <html><body>Bad gateway" in str(failed.value)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_a_failed_send_not_followed(http: HttpClient, status: int) -> None:
    """Neither the Graph API nor Twilio redirects; a 3xx comes from a wrong base URL or a proxy
    on the way. It is a failed send (dead-lettered, replayable), and nothing goes where it
    points. (Was a bug: aiohttp followed it: a 307 or 308 posted the reply, the user's number
    and words, to whatever host it named, a 301 or 302 made it a GET without the reply, and
    either one's 200 counted the reply sent though Meta never had it.)"""
    elsewhere = RawAnswers(lambda _: (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False))
    elsewhere.start()
    moved = f"HTTP/1.1 {status} Moved\r\nLocation: {elsewhere.url}/x\r\nContent-Length: 0\r\n\r\n"
    redirecting = RawAnswers(lambda _: (moved.encode(), False)).start()
    try:
        with pytest.raises(SendError) as failed:
            await send(CloudApiSender(http, redirecting.url), TARGET, Reply("where to?"))
        assert len(redirecting.requests) == 1 and elsewhere.requests == []
    finally:
        redirecting.stop()
        elsewhere.stop()
    assert not failed.value.retryable and f"answered {status}" in str(failed.value)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e400", "91", "abc"])
def test_non_finite_or_out_of_range_coordinates_are_not_messages(bad: str) -> None:
    raw = msg("location", {"latitude": bad, "longitude": "1"})
    parsed = cloud_api.parse({"entry": [{"changes": [change([raw])]}]})
    assert parsed.messages == [] and len(parsed.unusable) == 1
    base = [("MessageSid", "SM9"), ("From", "whatsapp:+346"), ("To", "whatsapp:+155")]
    twilio_message = twilio.parse([*base, ("Latitude", bad), ("Longitude", "1")])
    assert not isinstance(twilio_message, twilio.Status)
    assert twilio_message.type == "unknown" and "latitude" not in twilio_message.payload


def test_a_deeply_nested_unusable_item_can_still_be_recorded() -> None:
    from services.gateway.queue import _dump_raw

    deep: object = "x"
    for _ in range(1000):
        deep = [deep]
    assert _dump_raw(deep).startswith("(not serializable")
    assert _dump_raw({"a": 1}) == '{"a":1}'
