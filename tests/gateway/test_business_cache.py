"""The workers' business cache: one LookupBusiness per business, not per message, and changes
made through the admin API seen by the next message (pub/sub invalidation, not the TTL)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from parley.business.v1 import business_pb2, business_pb2_grpc
from services.business.core import to_proto
from services.business.model import validate_number
from services.common.business_keys import KeyKind, identity_key
from services.gateway.businesses import REPLICA_LAG_SECONDS, KnownBusiness
from tests.business.test_store_contract import record as business_record
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.proxy import ReplyCutter
from tests.support.stack import (
    SECRETS,
    TWILIO_SID,
    TWILIO_TOKEN,
    Business,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    dead_letters,
    metric,
    new_wa_id,
    next_db,
    post_cloud,
    signed_twilio,
    start_gateway,
    twilio_form,
)

# Far longer than any test here: only an invalidation can explain a change being seen.
TTL = "300"
REMOTE = 'gateway_business_cache_invalidations_total{origin="remote"'
MISSES = 'gateway_business_cache_lookups_total{result="miss"'


@pytest.fixture(scope="module")
def cached(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "business-cache",
        GATEWAY_BUSINESS_CACHE_TTL_SECONDS=TTL,
    )
    yield gw
    gw.stop()


def business_lookups(gateway: Gateway) -> int:
    """LookupBusiness calls the business service has answered (its own cache's figures)."""
    with gateway.admin() as admin:
        stats = admin.get("/health/detailed").json()["business_cache"]
    return int(stats["hits"]) + int(stats["misses"]) + int(stats["negative_hits"])


def send(gateway: Gateway, phone_number_id: str, wa_id: str, text: str) -> None:
    with gateway.http as client:
        assert post_cloud(client, cloud_payload(phone_number_id, wa_id, text)).status_code == 200


def dead_lettered(gateway: Gateway, wa_id: str, reason: str) -> bool:
    return any(
        d["reason"] == reason and (d["message"] or {}).get("user_id") == wa_id
        for d in dead_letters(gateway)
    )


def changed(gateway: Gateway, change: Callable[[httpx.Client], httpx.Response]) -> None:
    """Make a change through the admin API and wait until the gateway has been told (within
    seconds: the TTL is minutes). Every write publishes, in order, so counting works as long as
    each test waits for its own writes."""
    before = metric(gateway, REMOTE)
    with gateway.admin() as admin:
        response = change(admin)
    assert response.status_code in (200, 201), response.text
    assert wait_for(lambda: metric(gateway, REMOTE) > before, 10), "no invalidation arrived"


def new_business(gateway: Gateway) -> Business:
    before = metric(gateway, REMOTE)
    business = create_business(gateway)
    assert wait_for(lambda: metric(gateway, REMOTE) > before, 10), "no invalidation arrived"
    time.sleep(REPLICA_LAG_SECONDS + 0.2)  # and its repeat, so lookups after it can be counted
    return business


def test_gateway_and_business_service_compute_the_same_keys() -> None:
    record = business_record(
        subdomain="keys",
        pnids=("123456",),
        numbers=(validate_number("whatsapp:+1 (415) 555-0100", "n"),),
    )
    known = KnownBusiness.of(business_pb2.LookupBusinessResponse(business=to_proto(record)))
    # What the business service publishes when this business changes …
    assert known.lookup_keys == record.lookup_keys
    # … and what a worker looks it up by, from the webhook's raw identity.
    assert identity_key(KeyKind.PHONE_NUMBER_ID, " 123456") in record.lookup_keys
    assert identity_key(KeyKind.WHATSAPP_NUMBER, "whatsapp:+14155550100") in record.lookup_keys


def test_two_messages_of_one_business_make_one_lookup(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    business = new_business(cached)
    wa_id = new_wa_id()
    before = business_lookups(cached)
    send(cached, business.phone_number_id, wa_id, "first")
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) == 1, 20)
    send(cached, business.phone_number_id, wa_id, "second")
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) == 2, 20)
    assert fake_clouds.texts(wa_id) == ["echo: first #1", "echo: second #2"]
    assert business_lookups(cached) - before == 1
    with cached.admin() as admin:
        mine = admin.get("/health/detailed").json()["gateway_business_cache"]
    assert mine["enabled"] and mine["invalidation_subscribed"] and mine["hits"] >= 1
    assert metric(cached, 'gateway_business_cache_lookups_total{result="hit"') >= 1


def test_unknown_business_is_asked_once_and_still_dead_lettered(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    unknown = "888" + new_wa_id()
    users = [new_wa_id(), new_wa_id()]
    before = business_lookups(cached)
    for wa_id in users:
        send(cached, unknown, wa_id, "anyone there?")
    assert wait_for(lambda: all(dead_lettered(cached, u, "unknown_business") for u in users), 20)
    assert business_lookups(cached) - before == 1
    assert all(fake_clouds.replies(u) == [] for u in users)


def test_deactivation_and_disabling_are_seen_by_the_next_message(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    business = new_business(cached)
    pnid, path = business.phone_number_id, f"/admin/businesses/{business.id}"
    first = new_wa_id()
    send(cached, pnid, first, "cache me")
    assert wait_for(lambda: fake_clouds.texts(first) == ["echo: cache me #1"], 20)

    changed(cached, lambda admin: admin.patch(path, json={"whatsapp_enabled": False}))
    disabled = new_wa_id()
    send(cached, pnid, disabled, "disabled?")
    assert wait_for(lambda: dead_lettered(cached, disabled, "unknown_business"), 20)

    changed(cached, lambda admin: admin.patch(path, json={"whatsapp_enabled": True}))
    enabled = new_wa_id()
    send(cached, pnid, enabled, "back")
    assert wait_for(lambda: fake_clouds.texts(enabled) == ["echo: back #1"], 20)

    changed(cached, lambda admin: admin.delete(path))
    gone = new_wa_id()
    send(cached, pnid, gone, "still there?")
    assert wait_for(lambda: dead_lettered(cached, gone, "unknown_business"), 20)
    assert fake_clouds.replies(disabled) == [] and fake_clouds.replies(gone) == []


def test_a_new_token_is_used_by_the_next_reply(cached: Gateway, fake_clouds: FakeClouds) -> None:
    business = new_business(cached)
    wa_id = new_wa_id()
    send(cached, business.phone_number_id, wa_id, "old token")
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) == 1, 20)
    assert fake_clouds.replies(wa_id)[0].authorization == f"Bearer {business.access_token}"

    new_token = "graph-token-rotated-" + business.access_token[-8:]
    SECRETS.append(new_token)
    changed(
        cached,
        lambda admin: admin.put(
            f"/admin/businesses/{business.id}/token", json={"access_token": new_token}
        ),
    )
    send(cached, business.phone_number_id, wa_id, "new token")
    assert wait_for(lambda: len(fake_clouds.replies(wa_id)) == 2, 20)
    assert fake_clouds.replies(wa_id)[1].authorization == f"Bearer {new_token}"


def dead_letters_of(gateway: Gateway, wa_id: str) -> list[dict[str, Any]]:
    return [d for d in dead_letters(gateway) if (d["message"] or {}).get("user_id") == wa_id]


def token_status(gateway: Gateway, business: Business) -> str:
    with gateway.admin() as admin:
        return str(admin.get(f"/admin/businesses/{business.id}").json()["access_token_status"])


def rotated_while_answering(
    gateway: Gateway, fake_clouds: FakeClouds, business: Business, prefix: str, text: str
) -> tuple[str, str]:
    """A message of a new user (``text``, which should make the engine sleep: *slow 8*) whose
    reply is being made while the operator replaces the business's token (with one starting
    ``prefix``) and Meta revokes the old one. The user's id and the new token."""
    old, new = business.access_token, prefix + business.access_token[-8:]
    SECRETS.append(new)
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, text)
    message_id = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    with gateway.http as client:
        assert post_cloud(client, payload).status_code == 200
    # The worker has the business (and the old token) once it has sent the read receipt; the
    # engine then sleeps for 8 s, far longer than the change below takes on a busy machine.
    assert wait_for(lambda: fake_clouds.read_receipts(message_id), 20)
    changed(
        gateway,
        lambda admin: admin.put(
            f"/admin/businesses/{business.id}/token", json={"access_token": new}
        ),
    )
    fake_clouds.revoked_tokens.add(old)
    return wa_id, new


def test_a_reply_sent_with_a_token_replaced_meanwhile_is_sent_again_with_the_new_one(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    """An operator replaces a business's token and Meta invalidates the old one while a worker
    is answering with it: the Graph API refuses the old token (190). The business has a good
    token, so the reply goes out with it and the business stays `valid`. (Was a bug: the
    refusal of the old token marked the business `needs_renewal` over its new token, the
    message was dead-lettered, and every later message of the business too, without a call,
    until the operator set the same token a second time.)"""
    business = new_business(cached)
    wa_id, new = rotated_while_answering(
        cached, fake_clouds, business, "graph-token-replaced-", "slow 8 while rotating"
    )

    def with_new_token() -> list[str]:
        sent = fake_clouds.replies(wa_id)
        return [r.body["text"]["body"] for r in sent if r.authorization == f"Bearer {new}"]

    assert wait_for(lambda: with_new_token() or dead_letters_of(cached, wa_id), 20)
    assert dead_letters_of(cached, wa_id) == []
    assert with_new_token() == ["echo: slow 8 while rotating #1"]
    assert token_status(cached, business) == "valid"
    # The business goes on being answered with its new token.
    later = new_wa_id()
    send(cached, business.phone_number_id, later, "after the rotation")
    assert wait_for(lambda: fake_clouds.texts(later) == ["echo: after the rotation #1"], 20)
    assert fake_clouds.replies(later)[0].authorization == f"Bearer {new}"


def test_a_token_replaced_between_the_workers_read_and_its_mark_is_not_flagged(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """Meta refuses the old token (190); the worker reads the business (the old token still),
    and the operator stores a new token just before the worker's mark reaches the service. The
    mark is refused (the business changed since it was read), the worker reads it again and
    sends with the new token, and the business stays `valid`. (Was a bug: the new, good token
    was marked `needs_renewal` and the message dead-lettered.)"""
    cutter = ReplyCutter(services.business).start()
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "business-mark-race",
        BUSINESS_SERVICE_ADDR=cutter.address,
    )
    try:
        business = create_business(gw)
        new = "graph-token-raced-" + business.access_token[-8:]
        SECRETS.append(new)

        def operator_stores_a_new_token() -> None:  # straight to the service, not the proxy
            with grpc.insecure_channel(services.business) as channel:
                business_pb2_grpc.BusinessServiceStub(channel).SetChannelToken(
                    business_pb2.SetChannelTokenRequest(
                        business_id=business.id,
                        secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
                        value=new,
                    ),
                    timeout=10,
                )

        cutter.before_request(b"access_token_status", operator_stores_a_new_token)
        fake_clouds.revoked_tokens.add(business.access_token)
        wa_id = new_wa_id()
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "raced"))

        def with_new_token() -> list[str]:
            sent = fake_clouds.replies(wa_id)
            return [r.body["text"]["body"] for r in sent if r.authorization == f"Bearer {new}"]

        assert wait_for(lambda: with_new_token() or dead_letters_of(gw, wa_id), 20)
        assert dead_letters_of(gw, wa_id) == []
        assert with_new_token() == ["echo: raced #1"]
        assert token_status(gw, business) == "valid"
    finally:
        gw.stop()
        cutter.stop()


def test_a_token_mark_whose_answer_was_lost_is_not_taken_for_a_change(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """Meta refuses the token (190); the worker marks the business `needs_renewal` at the
    version it read, and the service's answer is lost on the way (a dropped connection): the
    channel sends the mark again. The business is marked once, and the worker says so. (Was a
    bug: the mark carried no request id, so its retry met the version the first had made and
    was ABORTED; the worker logged *its token not marked* for a business it had marked, and
    read it again for nothing.)"""
    cutter = ReplyCutter(services.business).start()
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "business-mark-lost",
        BUSINESS_SERVICE_ADDR=cutter.address,
    )
    try:
        business = create_business(gw)
        cutter.cut_reply_to(b"access_token_status")
        fake_clouds.revoked_tokens.add(business.access_token)
        wa_id = new_wa_id()
        with gw.http as client:
            post_cloud(client, cloud_payload(business.phone_number_id, wa_id, "lost mark"))
        assert wait_for(lambda: dead_letters_of(gw, wa_id), 20)
        assert cutter.cuts == 1
        assert token_status(gw, business) == "needs_renewal"
        events = [e for p in gw.processes for e in p.log_events() if e.get("business_id")]
        said = [e["event"] for e in events if e["business_id"] == business.id]
        assert "Cloud API token expired; business marked" in said
        assert "business changed since read; its token not marked" not in said
    finally:
        gw.stop()
        cutter.stop()


def test_a_long_reply_after_a_token_replaced_meanwhile_asks_for_the_new_one_once(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    """A reply of several provider messages (a text over 4,096 characters) sent with a token
    replaced while it was being made: the first refusal fetches the new token, and the other
    parts go out with it. (Was a bug: each part was sent with the refused token first, and
    each refusal read the business from the store again.)"""
    business = new_business(cached)
    old = business.access_token
    text = "slow 8 while rotating " + "word " * 900  # echoed: two Graph API messages
    wa_id, new = rotated_while_answering(
        cached, fake_clouds, business, "graph-token-long-reply-", text
    )

    def sent_with(token: str) -> list[Any]:
        return [r for r in fake_clouds.replies(wa_id) if r.authorization == f"Bearer {token}"]

    assert wait_for(lambda: len(sent_with(new)) == 2 or dead_letters_of(cached, wa_id), 20)
    assert dead_letters_of(cached, wa_id) == []
    assert len(sent_with(new)) == 2
    assert len(sent_with(old)) == 1  # the first part alone met the refusal


def test_a_twilio_reply_sent_with_a_token_replaced_meanwhile_is_sent_again_with_the_new_one(
    cached: Gateway, fake_clouds: FakeClouds
) -> None:
    """The same on Twilio: the auth token rotated in Twilio's console and stored with
    `PUT .../token` while a worker was answering with the old one (401, error 20003). (Was a
    bug: the message was dead-lettered `send_credentials_refused` though the business had the
    right pair.)"""
    business = new_business(cached)
    new = "biz-twilio-replaced-" + business.twilio_token[-8:]
    SECRETS.append(new)
    user = "+" + new_wa_id()
    form = twilio_form(business.number, user, "slow 8 while rotating")
    body, headers = signed_twilio(f"{cached.url}/webhooks/twilio", form, business.twilio_token)
    misses = metric(cached, MISSES)
    with cached.http as client:
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    # The worker has the business (and the old pair) once it has looked it up.
    assert wait_for(lambda: metric(cached, MISSES) > misses, 20)
    fake_clouds.twilio_accounts = {business.twilio_sid: new, TWILIO_SID: TWILIO_TOKEN}
    try:
        changed(
            cached,
            lambda admin: admin.put(
                f"/admin/businesses/{business.id}/token", json={"twilio_auth_token": new}
            ),
        )

        def with_new_token() -> list[str]:
            return [r.body["Body"] for r in fake_clouds.replies(user) if r.basic_auth[1] == new]

        assert wait_for(lambda: with_new_token() or dead_letters_of(cached, user), 20)
    finally:
        fake_clouds.twilio_accounts = {}
    assert dead_letters_of(cached, user) == []
    assert with_new_token() == ["echo: slow 8 while rotating #1"]
