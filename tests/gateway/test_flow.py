"""End to end with real processes: webhooks in, replies at the fake Graph API and Twilio."""

from __future__ import annotations

import base64
import concurrent.futures
import secrets
import time
from urllib.parse import parse_qsl, urlencode

import httpx
import redis

from services.common.redact import mask_message_id, mask_phone
from services.gateway.channels import cloud_api, twilio
from services.gateway.queue import dedupe_key
from services.gateway.settings import GatewaySettings
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import wait_for
from tests.support.stack import (
    APP_SECRET,
    TWILIO_TOKEN,
    VERIFY_TOKEN,
    Gateway,
    cloud_payload,
    dead_letters,
    meta_wamid,
    metric,
    new_wa_id,
    post_cloud,
    queue_lengths,
    signed_cloud,
    signed_twilio,
    twilio_form,
    twilio_status_form,
)


def test_signed_cloud_api_webhook_is_answered_at_the_graph_api(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "hello there")
    with gateway.http as client:
        response = post_cloud(client, payload)
    assert response.status_code == 200, response.text
    assert response.json()["queued"] == 1
    assert wait_for(lambda: fake_clouds.replies(wa_id), 20)
    [reply] = fake_clouds.replies(wa_id)
    assert reply.path == f"/{business.phone_number_id}/messages"
    assert reply.authorization == f"Bearer {business.access_token}"
    assert reply.body["to"] == wa_id
    assert reply.body["text"]["body"] == "echo: hello there #1"
    message_id = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert fake_clouds.read_receipts(message_id), "the user's message was not marked read"
    # The user's message and the reply are in the history, with the state change.
    with gateway.admin() as admin:
        assert wait_for(
            lambda: (
                len(admin.get(f"/admin/sessions/{business.id}/{wa_id}").json().get("history", []))
                == 2
            ),
            10,
        )
        conversation = admin.get(f"/admin/sessions/{business.id}/{wa_id}").json()
    assert [m["content"] for m in conversation["history"]] == [
        "hello there",
        "echo: hello there #1",
    ]
    assert conversation["history"][0]["provider_message_id"] == message_id
    assert conversation["state"]["count"] == 1
    # Answered and acknowledged: its sent log is gone with it (only its dedupe marker stays).
    # The acknowledgement follows the save by a moment: wait for the queue to be empty.
    assert wait_for(lambda: queue_lengths(gateway.redis_url) == 0, 10)
    redis_client = redis.Redis.from_url(gateway.redis_url)
    try:
        assert not redis_client.exists(f"gw:sent:cloud_api:{message_id}")
        # Named by a digest of the id: Meta's ids hold the user's number.
        markers = [key.decode() for key in redis_client.scan_iter("gw:dd:*")]
        digest = dedupe_key(0, "cloud_api", message_id).rsplit(":", 1)[1]
        assert [k for k in markers if k.endswith(f":cloud_api:{digest}")]
        assert [k for k in markers if message_id in k] == []
    finally:
        redis_client.close()


def test_the_engine_sees_the_time_left_of_the_message(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    # The engine's calls could not see the message's deadline (ENGINE_TIMEOUT_SECONDS, 20 s): a
    # search or model call started late ran its full timeout past it, and the whole message
    # failed (retried, then dead-lettered) instead of being answered as that call's timeout is.
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    with gateway.http as client:
        response = post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "time left"))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: fake_clouds.replies(wa_id), 20)
    [reply] = fake_clouds.replies(wa_id)
    left = float(reply.body["text"]["body"].removeprefix("time left: "))
    assert 0 < left < 20


def test_a_reaction_or_a_system_notice_gets_no_typing_indicator(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """Meta dismisses a typing indicator only at a reply or after 25 s, and asks to show it only
    when a reply will come; the conversation engine answers neither a reaction (nor its removal,
    an empty emoji) nor Meta's system notice. (Was a bug: every message was marked read with the
    typing indicator, so a 👍 on a reply had the user watch "typing…" for 25 s, then nothing.)"""
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "after the notices")
    value = payload["entry"][0]["changes"][0]["value"]
    text = value["messages"][0]
    notices = [
        {**text, "id": meta_wamid(wa_id), "type": "reaction", "reaction": reaction}
        for reaction in (
            {"message_id": meta_wamid(wa_id), "emoji": "\N{THUMBS UP SIGN}"},
            {"message_id": meta_wamid(wa_id), "emoji": ""},  # the reaction removed
        )
    ]
    notices.append(
        {
            **text,
            "id": meta_wamid(wa_id),
            "type": "system",
            "system": {"body": "changed", "wa_id": new_wa_id(), "type": "user_changed_number"},
        }
    )
    for notice in notices:
        del notice["text"]
    value["messages"] = [*notices, text]
    with gateway.http as client:
        assert post_cloud(client, payload).json()["queued"] == 4
    # One user's messages are handled in order: the text's reply comes after the notices.
    assert wait_for(lambda: "echo: after the notices #4" in fake_clouds.texts(wa_id), 20)
    [receipt] = fake_clouds.read_receipts(text["id"])
    assert receipt.body["typing_indicator"] == {"type": "text"}
    assert [fake_clouds.read_receipts(notice["id"]) for notice in notices] == [[], [], []]


def test_a_webhook_as_large_as_meta_sends_is_accepted(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """Meta's webhooks can be up to 3 MB (its Cloud API webhooks guide): a batch of a message
    and 2,000 status updates, ~630 KB, is queued and answered with the default `MAX_BODY_BYTES`.
    (Was a bug: the default was 256 KiB, so such a webhook was refused with 413 at every one of
    Meta's retries, and the messages in it were never answered.)"""
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "in a big batch")
    statuses = [
        {
            "id": f"wamid.{secrets.token_hex(24)}",
            "status": "delivered",
            "timestamp": "1750857384",
            "recipient_id": "15550009999",
            "conversation": {"id": secrets.token_hex(16), "origin": {"type": "service"}},
            "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
        }
        for _ in range(2000)
    ]
    payload["entry"][0]["changes"][0]["value"]["statuses"] = statuses
    body, headers = signed_cloud(payload)
    assert 500_000 < len(body) < 3_000_000
    with gateway.http as client:
        response = client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["queued"] == 1
    assert wait_for(lambda: fake_clouds.texts(wa_id) == ["echo: in a big batch #1"], 20)


def test_a_message_in_a_group_is_not_answered_in_the_users_own_chat(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """A message written in a WhatsApp group the business's number is in (Groups API) comes in
    the `messages` field like any other, with a `group_id`, `from` being the participant. The bot
    answers one-to-one chats: such a message is counted and logged, never queued. (Was a bug: it
    was taken for the participant's own chat with the bot, so whatever they said to the group
    was answered in their private chat, and changed their conversation with the bot.)"""
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    group_id = f"Y2FwaV9ncm91cDox{secrets.token_hex(8)}"
    payload = cloud_payload(business.phone_number_id, wa_id, "just me")
    value = payload["entry"][0]["changes"][0]["value"]
    own = value["messages"][0]
    in_group = {**own, "id": meta_wamid(wa_id), "group_id": group_id, "text": {"body": "hi all"}}
    value["messages"] = [in_group, own]
    only_group = cloud_payload(business.phone_number_id, wa_id, "hi again", group_id=group_id)
    before = metric(gateway, 'gateway_webhooks_total{channel="cloud_api",outcome="group_message"}')
    with gateway.http as client:
        assert post_cloud(client, payload).json()["queued"] == 1
        answer = post_cloud(client, only_group)
    assert answer.status_code == 200 and answer.json()["queued"] == 0
    # The user's own message is the first turn of their conversation with the bot.
    assert wait_for(lambda: fake_clouds.texts(wa_id) == ["echo: just me #1"], 20)
    assert fake_clouds.read_receipts(in_group["id"]) == []
    after = metric(gateway, 'gateway_webhooks_total{channel="cloud_api",outcome="group_message"}')
    assert after == before + 1
    rid = answer.json()["request_id"]
    lines = gateway.processes[0].log_events("webhook accepted")
    assert [line["group_messages"] for line in lines if line["request_id"] == rid] == [1]
    assert not [d for d in dead_letters(gateway) if group_id in str(d)]


def test_an_sms_to_the_twilio_number_is_not_answered_on_whatsapp(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """An SMS to the business's Twilio number comes to the same URL when the number's SMS
    webhook, or the Messaging Service holding the number and its WhatsApp sender, points here,
    as Twilio documents it (``From`` and ``To`` bare numbers, no ``whatsapp:``). The bot answers
    on WhatsApp only: such a message is counted and logged, never queued. (Was a bug: it was
    answered on WhatsApp, a chat the user did not write in, or refused there, 63016, after the
    engine and a search had run.)"""
    business = gateway.business
    assert business is not None
    user = "+" + new_wa_id()
    sid = "SM" + secrets.token_hex(16)
    sms = [
        ("ToCountry", "US"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("SmsSid", sid),
        ("SmsStatus", "received"),
        ("Body", "hello by sms"),
        ("To", business.number),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", business.twilio_sid),
        ("From", user),
        ("ApiVersion", "2010-04-01"),
    ]
    before = metric(gateway, 'gateway_webhooks_total{channel="twilio",outcome="not_whatsapp"}')
    with gateway.http as client:
        body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", sms, business.twilio_token)
        answer = client.post("/webhooks/twilio", content=body, headers=headers)
        assert answer.status_code == 200 and answer.text.endswith("<Response/>")
        # The same user on WhatsApp is answered: their first turn with the bot.
        form = twilio_form(business.number, user, "hello on whatsapp")
        body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form, business.twilio_token)
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    assert wait_for(lambda: fake_clouds.texts(user) == ["echo: hello on whatsapp #1"], 20)
    after = metric(gateway, 'gateway_webhooks_total{channel="twilio",outcome="not_whatsapp"}')
    assert after == before + 1
    rid = answer.headers["x-request-id"]
    lines = gateway.processes[0].log_events("webhook not for WhatsApp")
    logged = [(line["came_by"], line["message_id"]) for line in lines if line["request_id"] == rid]
    assert logged == [("sms", sid)]
    assert not [d for d in dead_letters(gateway) if sid in str(d)]


def test_a_user_known_only_by_a_business_scoped_id_is_answered_at_recipient(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """A user with a username who shares no phone number is known by a BSUID ("US.…"): the
    webhook has `from_user_id` and no `from`, the contact `user_id` and no `wa_id`. The reply
    must go to `recipient`; `to` is for phone numbers. (Was a bug: the BSUID went in `to`,
    Meta refused it, the message was dead-lettered and the user never had an answer.)"""
    business = gateway.business
    assert business is not None
    bsuid = f"US.{secrets.randbelow(10**19):019d}"
    message = {
        "from_user_id": bsuid,
        "id": f"wamid.{secrets.token_hex(12)}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": "hello from a username"},
    }
    contact = {"profile": {"name": "Ana", "username": "@ana"}, "user_id": bsuid}
    payload = cloud_api.notification(business.phone_number_id, [message], [contact])
    with gateway.http as client:
        assert post_cloud(client, payload).status_code == 200
    assert wait_for(lambda: fake_clouds.replies(bsuid), 20)
    [reply] = fake_clouds.replies(bsuid)
    assert reply.body["recipient"] == bsuid and "to" not in reply.body
    assert reply.body["text"]["body"] == "echo: hello from a username #1"


def test_twilio_webhook_is_answered_at_the_twilio_api(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    sender = "+" + new_wa_id()
    form = twilio_form(business.number, sender, "hola")
    url = f"{gateway.url}/webhooks/twilio"
    body, headers = signed_twilio(url, form)
    with gateway.http as client:
        response = client.post("/webhooks/twilio", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text.endswith("<Response/>")
    assert wait_for(lambda: fake_clouds.replies(sender), 20)
    [reply] = fake_clouds.replies(sender)
    assert reply.path == f"/2010-04-01/Accounts/{business.twilio_sid}/Messages.json"
    assert reply.basic_auth == (business.twilio_sid, business.twilio_token)
    assert reply.body == {
        "To": f"whatsapp:{sender}",
        "From": f"whatsapp:{business.number}",
        "Body": "echo: hola #1",
    }


def test_an_empty_reply_sends_nothing_on_either_channel(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """An engine with nothing to say (an empty reply) has nothing sent, and its turn is saved,
    on the Cloud API and on Twilio alike. (Was a bug on Twilio: the empty text was posted as an
    empty `Body`, which Twilio refuses (21602), so the message was dead-lettered `send_error`
    and its turn lost, while the Cloud API sent nothing and saved it.)"""
    business = gateway.business
    assert business is not None
    wa_id, sender = new_wa_id(), "+" + new_wa_id()
    with gateway.http as client:
        for text in ("say nothing", "again"):
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, text))
            form = twilio_form(business.number, sender, text)
            body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
            assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    for user in (wa_id, sender):
        assert wait_for(lambda user=user: fake_clouds.replies(user), 20)  # type: ignore[misc]
        assert fake_clouds.texts(user) == ["echo: again #2"]
    assert not [
        d for d in dead_letters(gateway) if d["message"] and d["message"]["user_id"] == sender
    ]


def test_twilio_guide_path_with_the_business_token(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    sender = "+" + new_wa_id()
    form = twilio_form(business.number, sender, "via the guide's path")
    body, headers = signed_twilio(f"{gateway.url}/whatsapp/webhook", form, business.twilio_token)
    with gateway.http as client:
        response = client.post("/whatsapp/webhook", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert wait_for(lambda: fake_clouds.texts(sender) == ["echo: via the guide's path #1"], 20)


def test_a_twilio_webhook_set_to_http_get_is_verified_queued_and_answered(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """Twilio lets a number's webhook and status callback use HTTP GET: the parameters come in
    the query string, and the signature is of the URL with that query, nothing appended. The
    same checks as a POST apply: signature, dedupe, the business's own token, status callbacks.
    (Was a bug: 405, and Twilio does not retry a 4xx: every message to such a number was lost.)"""
    business = gateway.business
    assert business is not None
    sender = "+" + new_wa_id()
    query = urlencode(twilio_form(business.number, sender, "by get & query"))
    path = f"/webhooks/twilio?{query}"
    statuses = 'gateway_message_statuses_total{channel="twilio",status="delivered"}'
    duplicates = 'gateway_duplicates_dropped_total{channel="twilio"}'
    before = (metric(gateway, statuses), metric(gateway, duplicates))
    signed = {twilio.SIGNATURE_HEADER: twilio.sign(gateway.url + path, [], TWILIO_TOKEN)}
    # Signed as a POST of the same parameters would be: not the URL Twilio called.
    as_post = twilio.sign(f"{gateway.url}/webhooks/twilio", parse_qsl(query), TWILIO_TOKEN)
    status = urlencode(twilio_status_form(business, sender, "delivered"))
    status_path = f"/whatsapp/webhook/?{status}"
    by_business = twilio.sign(gateway.url + status_path, [], business.twilio_token)
    with gateway.http as client:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={twilio.SIGNATURE_HEADER: as_post}).status_code == 403
        answer = client.get(path, headers=signed)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/xml")
        assert answer.text.endswith("<Response/>")
        assert client.get(path, headers=signed).status_code == 200  # a redelivery
        answer = client.get(status_path, headers={twilio.SIGNATURE_HEADER: by_business})
        assert answer.status_code == 200, answer.text
    assert wait_for(lambda: fake_clouds.texts(sender) == ["echo: by get & query #1"], 20)
    assert (metric(gateway, statuses), metric(gateway, duplicates)) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_a_signed_head_on_the_twilio_webhook_answers_as_get_and_queues_nothing(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """HEAD must have no side effects (RFC 9110): a signed HEAD of a Twilio GET webhook's URL is
    answered as the GET would be, headers only, and queues nothing. (Was a bug: it was handled
    as the GET, so the message was queued and answered, and Twilio's own GET then counted as a
    duplicate.)"""
    business = gateway.business
    assert business is not None
    sender = "+" + new_wa_id()
    path = f"/webhooks/twilio?{urlencode(twilio_form(business.number, sender, 'by head'))}"
    signed = {twilio.SIGNATURE_HEADER: twilio.sign(gateway.url + path, [], TWILIO_TOKEN)}
    duplicates = 'gateway_duplicates_dropped_total{channel="twilio"}'
    before = metric(gateway, duplicates)
    with gateway.http as client:
        assert client.head(path).status_code == 401
        answer = client.head(path, headers=signed)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/xml")
        assert answer.content == b""
        assert client.get(path, headers=signed).status_code == 200
    assert wait_for(lambda: fake_clouds.texts(sender) == ["echo: by head #1"], 20)
    assert metric(gateway, duplicates) == before  # the GET was the first the gateway queued


def test_a_failed_twilio_delivery_is_logged_with_its_error_code(gateway: Gateway) -> None:
    """Twilio reports most WhatsApp delivery failures only in a status callback (63016 outside
    the 24-hour window, other 63xxx channel errors): its ErrorCode is the one place an operator
    can learn why a user got no answer."""
    business = gateway.business
    assert business is not None
    user = "+" + new_wa_id()
    form = twilio_status_form(business, user, "failed", "63016")
    body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form, business.twilio_token)
    with gateway.http as client:
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    sid = dict(form)["MessageSid"]
    web = gateway.processes[0]

    def logged() -> list[dict[str, object]]:
        return [e for e in web.log_events("message status") if e.get("message_id") == sid]

    assert wait_for(logged, 10)
    [line] = logged()
    assert (line["status"], line["error_code"]) == ("failed", "63016")
    assert user not in str(line) and line["recipient"]  # masked, as every phone number


def test_a_cloud_api_status_is_logged_without_the_number_its_message_id_holds(
    gateway: Gateway,
) -> None:
    """Meta's message ids carry the user's number (base64: ``HBgLMTU1NTEyMzQ1Njc`` is
    ``\\x1c\\x18\\x0b15551234567``). Every status callback (sent, delivered, read: three per
    reply) logged its message id as it came, at INFO, beside the masked recipient: the number
    was one base64 decode away in every log line. (Was a bug.)"""
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    wamid = meta_wamid(wa_id)
    assert wa_id.encode() in base64.b64decode(wamid.removeprefix("wamid."))
    payload = cloud_api.notification(business.phone_number_id, [], [])
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"], value["contacts"]
    value["statuses"] = [
        {"id": wamid, "status": status, "timestamp": "1750857384", "recipient_id": wa_id}
        for status in ("sent", "delivered")
    ]
    with gateway.http as client:
        assert post_cloud(client, payload).status_code == 200
    web = gateway.processes[0]

    def logged() -> list[dict[str, object]]:
        return [e for e in web.log_events("message status") if e["recipient"] == mask_phone(wa_id)]

    assert wait_for(lambda: len(logged()) == 2, 10)
    assert wamid not in web.log and wamid[6:26] not in web.log
    # One digest for the lines of one message, as the id was.
    assert {e["message_id"] for e in logged()} == {mask_message_id(wamid)}
    assert wa_id not in web.log


def test_a_refused_twilio_token_is_dead_lettered_as_such_and_replayed_once_fixed(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    """A business's Twilio token rotated in Twilio's console (401, error 20003): the operator
    must learn that it is the credentials, and whose, not a plain send error. (Was a bug: no log
    line named the business, as one does for an expired Cloud API token: only the dead letter's
    account SID told whose.)"""
    business = gateway.business
    assert business is not None
    user = "+" + new_wa_id()
    form = twilio_form(business.number, user, "anyone there?")
    body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form, business.twilio_token)
    fake_clouds.twilio_accounts = {business.twilio_sid: "rotated-in-the-console"}
    try:
        with gateway.http as client:
            assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200

        def dead_letter() -> dict[str, object] | None:
            with gateway.admin() as admin:
                dead = admin.get("/admin/dead-letters").json()["dead_letters"]
            mine = [d for d in dead if (d["message"] or {}).get("user_id") == user]
            return mine[0] if mine else None

        assert wait_for(dead_letter, 20)
        record = dead_letter()
        assert record is not None
        assert record["reason"] == "send_credentials_refused"
        assert "business's own credentials" in str(record["error"])
        assert business.twilio_token not in str(record)
        # The log names the business whose pair to fix, as for an expired Cloud API token.
        refused = gateway.processes[0].log_events("Twilio refused the business's credentials")
        assert [line["business_id"] for line in refused] == [business.id]
    finally:
        fake_clouds.twilio_accounts = {}
    with gateway.admin() as admin:
        replayed = admin.post(f"/admin/dead-letters/{record['id']}/replay")
    assert replayed.status_code == 200, replayed.text
    # The fake records the refused request too: the replay's is the second, the same answer.
    assert wait_for(lambda: fake_clouds.texts(user) == ["echo: anyone there? #1"] * 2, 20)


def test_the_same_webhook_three_times_gets_one_reply(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "once only")
    with gateway.http as client:
        answers = [post_cloud(client, payload) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.json()["queued"] for a in answers] == [1, 0, 0]
        # A later message of the same user is handled after the first (same partition, in
        # order): once it is answered, any second answer to the first would have been sent.
        post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "after"))
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) >= 2, 20)
    assert fake_clouds.texts(wa_id) == ["echo: once only #1", "echo: after #2"]


def test_twenty_concurrent_messages_of_one_user_in_order(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    texts = [f"m{i:02d}" for i in range(20)]

    def send(text: str) -> int:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            return post_cloud(
                client, cloud_payload(business.phone_number_id, wa_id, text)
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert list(pool.map(send, texts)) == [200] * 20
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) >= 20, 40)
    replies = fake_clouds.texts(wa_id)
    assert len(replies) == 20
    # One at a time: the counter in state goes 1..20 with no repeat (no lost update) …
    assert [r.rsplit("#", 1)[1] for r in replies] == [str(i) for i in range(1, 21)]
    # … every message answered once …
    assert sorted(r.split()[1] for r in replies) == texts
    # … and the history holds all of them, in the order they were handled.
    with gateway.admin() as admin:
        history = admin.get(f"/admin/sessions/{business.id}/{wa_id}").json()["history"]
    users = [m["content"] for m in history if m["role"] == "MESSAGE_ROLE_USER"]
    assert users == [r.split()[1] for r in replies]
    assert len(history) == 40


def test_bad_signatures_and_bodies_get_the_right_status_and_queue_nothing(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "should never be queued")
    body, headers = signed_cloud(payload)
    before = queue_lengths(gateway.redis_url)
    _, stale_headers = signed_cloud(cloud_payload(business.phone_number_id, wa_id, "old"))
    form = twilio_form(business.number, "+" + wa_id, "nope")
    twilio_body, twilio_headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
    with gateway.http as client:
        missing = {"content-type": "application/json"}
        assert client.post("/webhooks/whatsapp", content=body, headers=missing).status_code == 401
        wrong = {**headers, "x-hub-signature-256": "sha256=" + "0" * 64}
        assert client.post("/webhooks/whatsapp", content=body, headers=wrong).status_code == 403
        # A signature made with a rotated-out secret, and one of another (older) body.
        _, old_secret = signed_cloud(payload, "the-previous-app-secret")
        assert (
            client.post("/webhooks/whatsapp", content=body, headers=old_secret).status_code == 403
        )
        assert (
            client.post("/whatsapp_response", content=body, headers=stale_headers).status_code
            == 403
        )
        not_json = b"{not json"
        _, signed_garbage = signed_cloud({})
        signed_garbage["x-hub-signature-256"] = cloud_api.sign(not_json, APP_SECRET)
        assert (
            client.post("/webhooks/whatsapp", content=not_json, headers=signed_garbage).status_code
            == 400
        )
        limit = GatewaySettings.model_fields["max_body_bytes"].default
        big = b"{" + b" " * limit + b"}"
        assert client.post("/webhooks/whatsapp", content=big, headers=headers).status_code == 413

        def chunks() -> object:
            for _ in range(limit // 1024 + 1):
                yield b" " * 1024

        chunked = client.post("/webhooks/whatsapp", content=chunks(), headers=headers)  # type: ignore[arg-type]
        assert chunked.status_code == 413
        # Twilio: missing, wrong, wrong token, not a form.
        plain = {"content-type": "application/x-www-form-urlencoded"}
        assert (
            client.post("/webhooks/twilio", content=twilio_body, headers=plain).status_code == 401
        )
        bad = {**twilio_headers, "x-twilio-signature": "AAAA"}
        assert client.post("/webhooks/twilio", content=twilio_body, headers=bad).status_code == 403
        _, other = signed_twilio(f"{gateway.url}/webhooks/twilio", form, "not-" + TWILIO_TOKEN)
        assert (
            client.post("/webhooks/twilio", content=twilio_body, headers=other).status_code == 403
        )
        tampered = twilio_body.replace(b"nope", b"nope!")
        assert (
            client.post("/webhooks/twilio", content=tampered, headers=twilio_headers).status_code
            == 403
        )
        # The subscription check.
        ok = client.get(
            "/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "42",
            },
        )
        assert (ok.status_code, ok.text, ok.headers["content-type"][:10]) == (
            200,
            "42",
            "text/plain",
        )
        no = client.get(
            "/webhooks/whatsapp",
            params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "42"},
        )
        assert no.status_code == 403
    assert queue_lengths(gateway.redis_url) == before
    assert fake_clouds.replies(wa_id) == []


def test_signed_but_unusable_payload_is_200_and_dead_lettered(gateway: Gateway) -> None:
    """Recorded with the webhook's request id, so the record can be found with the webhook's
    lines. (Was a gap: such records had no request id.)"""
    marker = secrets.token_hex(6)
    with gateway.http as client:
        body, headers = signed_cloud({"object": "whatsapp_business_account", "odd": marker})
        rid = f"odd-cloud-{marker}"
        response = client.post(
            "/webhooks/whatsapp", content=body, headers={**headers, "x-request-id": rid}
        )
        assert response.status_code == 200
        form = [("MessageSid", "SM" + marker), ("Body", marker)]  # no From or To
        body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
        response = client.post(
            "/webhooks/twilio", content=body, headers={**headers, "x-request-id": f"odd-{marker}"}
        )
        assert response.status_code == 200
    with gateway.admin() as admin:
        dead = admin.get("/admin/dead-letters").json()["dead_letters"]
    mine = {d["request_id"] for d in dead if marker in (d["raw"] or "")}
    assert mine == {rid, f"odd-{marker}"}
    assert all(d["reason"] == "unusable_payload" for d in dead if marker in (d["raw"] or ""))


def test_an_errors_webhook_is_dead_lettered_with_what_meta_reported(gateway: Gateway) -> None:
    """Meta's documented errors webhook (the `messages` field, `value.errors`: a system-, app-
    or account-level problem kept a request from being processed) is recorded with its codes.
    (Was a gap: its dead letter said "change with neither messages nor statuses", as if the
    payload were malformed, and what Meta reported was only in the raw record.)"""
    business = gateway.business
    assert business is not None
    payload = cloud_api.notification(business.phone_number_id, [], [])
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"], value["contacts"]
    value["errors"] = [
        {
            "code": 130429,
            "title": "Rate limit hit",
            "message": "(#130429) Rate limit hit",
            "error_data": {"details": "Cloud API message throughput has been reached."},
            "href": "/docs/whatsapp/cloud-api/support/error-codes/",
        }
    ]
    with gateway.http as client:
        response = post_cloud(client, payload)
    assert response.status_code == 200
    rid = response.json()["request_id"]
    [record] = [d for d in dead_letters(gateway) if d["request_id"] == rid]
    assert record["reason"] == "unusable_payload"
    assert record["error"] == (
        "Meta reported errors: 130429 Rate limit hit (Cloud API message throughput has been "
        "reached.)"
    )


def test_unknown_business_is_dead_lettered_without_reply(
    gateway: Gateway, fake_clouds: FakeClouds
) -> None:
    wa_id = new_wa_id()
    with gateway.http as client:
        assert post_cloud(client, cloud_payload("999999999999999", wa_id, "hi")).status_code == 200

    def dead_lettered() -> bool:
        with gateway.admin() as admin:
            dead = admin.get("/admin/dead-letters").json()["dead_letters"]
        return any(
            d["reason"] == "unknown_business" and (d["message"] or {}).get("user_id") == wa_id
            for d in dead
        )

    assert wait_for(dead_lettered, 20)
    assert fake_clouds.replies(wa_id) == []


def status_series(gateway: Gateway) -> set[str]:
    """The ``status`` label values of gateway_message_statuses_total in /metrics."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return {
        line.split('status="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("gateway_message_statuses_total{")
    }


def test_a_redelivered_status_is_counted_and_logged_once_naming_the_business(
    gateway: Gateway,
) -> None:
    """Meta delivers a webhook again when our 200 is lost or late, and Twilio retries a
    callback: each redelivery counted its statuses again in gateway_message_statuses_total, and
    the status lines named no business (a tenant's failures could not be told from another's).
    Now a status (message id and status) counts and logs once, with the business's number."""
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    wamid = meta_wamid(wa_id)
    payload = cloud_api.notification(business.phone_number_id, [], [])
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"], value["contacts"]
    value["statuses"] = [
        {"id": wamid, "status": status, "timestamp": "1750857384", "recipient_id": wa_id}
        for status in ("delivered", "read")
    ]
    cloud = 'gateway_message_statuses_total{channel="cloud_api",status="delivered"}'
    cloud_read = 'gateway_message_statuses_total{channel="cloud_api",status="read"}'
    twilio_delivered = 'gateway_message_statuses_total{channel="twilio",status="delivered"}'
    before = [metric(gateway, name) for name in (cloud, cloud_read, twilio_delivered)]
    form = twilio_status_form(business, "+" + new_wa_id(), "delivered")
    body, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form, business.twilio_token)
    with gateway.http as client:
        assert post_cloud(client, payload).status_code == 200
        del value["statuses"][1]  # Meta's redelivery of the first status
        assert post_cloud(client, payload).status_code == 200
        for _ in range(2):
            assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    after = [metric(gateway, name) for name in (cloud, cloud_read, twilio_delivered)]
    assert after == [n + 1 for n in before]
    web = gateway.processes[0]
    sid = dict(form)["MessageSid"]
    assert wait_for(lambda: [e for e in web.log_events("message status") if e["message_id"] == sid])
    # The Twilio lines come after the Cloud API ones: all are written by now.
    lines = [
        e for e in web.log_events("message status") if e["message_id"] == mask_message_id(wamid)
    ]
    assert [(e["status"], e["phone_number_id"]) for e in lines] == [
        ("delivered", business.phone_number_id),
        ("read", business.phone_number_id),
    ]
    [line] = [e for e in web.log_events("message status") if e["message_id"] == sid]
    assert line["business_number"] == mask_phone(business.number)


def test_status_values_the_provider_never_sends_do_not_become_metric_series(
    gateway: Gateway,
) -> None:
    """The status of a delivery report was a label as it came: every new string in a signed
    webhook (a tenant's own app secret signs too) was one more Prometheus series in every
    gateway process, for ever. Statuses the providers document keep their name; anything else is
    counted as ``other`` (and logged as it came)."""
    business = gateway.business
    assert business is not None
    statuses = [
        {"id": f"wamid.{secrets.token_hex(8)}", "status": status, "recipient_id": "15550001"}
        for status in ["delivered", *(f"made-up-{n}" for n in range(30))]
    ]
    payload = cloud_api.notification(business.phone_number_id, [], [])
    payload["entry"][0]["changes"][0]["value"]["statuses"] = statuses
    del payload["entry"][0]["changes"][0]["value"]["messages"]
    with gateway.http as client:
        assert post_cloud(client, payload).status_code == 200
    series = status_series(gateway)
    assert "delivered" in series and "other" in series
    assert not any(s.startswith("made-up-") for s in series), sorted(series)


def webhook_count(gateway: Gateway, channel: str, outcome: str) -> float:
    """gateway_webhooks_total{channel, outcome} in /metrics (0 when the series is not there)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    prefix = f'gateway_webhooks_total{{channel="{channel}",outcome="{outcome}"}} '
    return next(
        (float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0
    )


def test_a_webhook_refused_for_its_size_is_counted(gateway: Gateway) -> None:
    """A webhook over MAX_BODY_BYTES is answered 413 (the provider retries, then gives up): it
    was counted nowhere and logged nowhere, so ParleyWebhooksRejected and the dashboard never
    saw a limit set too low refusing the provider's real webhooks. Now outcome="too_large"."""
    limit = GatewaySettings.model_fields["max_body_bytes"].default
    big = b"{" + b" " * limit + b"}"
    before = {
        channel: webhook_count(gateway, channel, "too_large") for channel in ("cloud_api", "twilio")
    }
    with gateway.http as client:
        json_type = {"content-type": "application/json"}
        assert client.post("/webhooks/whatsapp", content=big, headers=json_type).status_code == 413

        def chunks() -> object:
            for _ in range(limit // 1024 + 1):
                yield b" " * 1024

        chunked = client.post("/webhooks/whatsapp", content=chunks(), headers=json_type)  # type: ignore[arg-type]
        assert chunked.status_code == 413
        form_type = {"content-type": "application/x-www-form-urlencoded"}
        assert client.post("/webhooks/twilio", content=big, headers=form_type).status_code == 413
    assert webhook_count(gateway, "cloud_api", "too_large") == before["cloud_api"] + 2
    assert webhook_count(gateway, "twilio", "too_large") == before["twilio"] + 1
