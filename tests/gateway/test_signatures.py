"""Whose secret vouches for a webhook: one business's never for another's numbers; in production
nothing is accepted unsigned. Real gateway processes and business service; found in an audit."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from services.gateway.channels import cloud_api, twilio
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.stack import (
    SECRETS,
    Business,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    dead_letters,
    metric,
    new_wa_id,
    next_db,
    queue_lengths,
    signed_cloud,
    signed_twilio,
    start_gateway,
    twilio_form,
    twilio_status_form,
)


def _start(services: Services, fake: FakeClouds, valkey: Valkey, name: str, **env: str) -> Gateway:
    return start_gateway(
        services, fake, f"redis://127.0.0.1:{valkey.port}/{next_db()}", name, role="web", **env
    )


@pytest.fixture(scope="module")
def open_gateway(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    """A dev gateway without global secrets: only businesses' own secrets apply."""
    no_secrets = {"WHATSAPP_APP_SECRET": "", "TWILIO_AUTH_TOKEN": ""}
    gw = _start(services, fake_clouds, valkey, "signatures-open", **no_secrets)
    yield gw
    gw.stop()


def _with_own_secret(gateway: Gateway) -> tuple[Business, str]:
    secret = "own-app-secret-" + secrets.token_hex(8)
    return create_business(gateway, webhook_app_secret=secret), secret


def _mixed(*businesses: Business) -> dict[str, Any]:
    """One notification with a change for each business's number."""
    payload = cloud_payload(businesses[0].phone_number_id, new_wa_id(), "hi")
    for business in businesses[1:]:
        payload["entry"] += cloud_payload(business.phone_number_id, new_wa_id(), "hi")["entry"]
    return payload


def _post(gateway: Gateway, payload: dict[str, Any], secret: str | None) -> httpx.Response:
    body, headers = signed_cloud(payload, secret or "unused")
    if secret is None:
        del headers[cloud_api.SIGNATURE_HEADER]
    with gateway.http as client:
        return client.post("/webhooks/whatsapp", content=body, headers=headers)


def test_a_business_secret_never_vouches_for_another_business(gateway: Gateway) -> None:
    victim, _ = _with_own_secret(gateway)
    attacker, attacker_secret = _with_own_secret(gateway)
    before = queue_lengths(gateway.redis_url)
    # The attacker signs its own change and slips the victim's in beside it.
    assert _post(gateway, _mixed(attacker, victim), attacker_secret).status_code == 403
    assert _post(gateway, _mixed(victim, attacker), attacker_secret).status_code == 403
    assert queue_lengths(gateway.redis_url) == before
    # Its own number alone is its own to sign; the platform's secret covers every number.
    assert _post(gateway, _mixed(attacker), attacker_secret).json()["queued"] == 1
    body, headers = signed_cloud(_mixed(attacker, victim))
    with gateway.http as client:
        answer = client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert answer.json()["queued"] == 2


def test_without_a_global_secret_every_named_business_must_have_signed(
    open_gateway: Gateway,
) -> None:
    gw = open_gateway
    victim, victim_secret = _with_own_secret(gw)
    plain = create_business(gw)  # no secret of its own
    unknown = [
        Business("", f"9{secrets.randbelow(10**14):014d}", "+15550000000", "", "", "")
        for _ in range(5)
    ]
    # Unknown ids ahead of the victim's no longer push it out of the check.
    padded = _mixed(*unknown, victim)
    assert _post(gw, padded, None).status_code == 401
    assert _post(gw, padded, victim_secret).status_code == 403  # the others did not sign
    assert _post(gw, _mixed(victim, plain), victim_secret).status_code == 403
    assert _post(gw, _mixed(victim), victim_secret).json()["queued"] == 1
    assert _post(gw, _mixed(victim), "another-secret").status_code == 403
    # Where no secret applies at all, a dev gateway still accepts (warned at start-up).
    assert _post(gw, _mixed(plain, *unknown), None).json()["queued"] == 6
    too_many = _mixed(
        *[
            Business("", f"8{secrets.randbelow(10**14):014d}", "+15550000000", "", "", "")
            for _ in range(21)
        ]
    )
    assert _post(gw, too_many, None).status_code == 403


def test_a_forged_body_naming_tens_of_thousands_of_numbers_is_refused_at_once(
    gateway: Gateway,
) -> None:
    """The numbers a body names are read before its signature is checked, to find the
    businesses whose own secrets may have signed it. They were kept in a list, each looked up
    in it: a forged 3 MB body naming 64,000 ids held the event loop for 17 s (every webhook and
    probe of the process waited), past this client's 10 s. (Was a bug.) Now read in one pass,
    and refused as naming more than 20."""
    change = [{"value": {"metadata": {"phone_number_id": i}}} for i in range(64_000)]
    body = json.dumps({"entry": [{"changes": change}]}, separators=(",", ":")).encode()
    assert len(body) < 3 * 1024 * 1024  # under MAX_BODY_BYTES: read, not a 413
    forged = {"content-type": "application/json", "x-hub-signature-256": "sha256=" + "0" * 64}
    with gateway.http as client:
        answer = client.post("/webhooks/whatsapp", content=body, headers=forged)
        assert answer.status_code == 403, answer.text
        assert "at most 20 phone number ids" in answer.json()["detail"]
        assert client.get("/health").status_code == 200


def _lookups(services: Services, request_id: str) -> int:
    """The business service's LookupBusiness calls made for one request (its access lines)."""
    (business,) = [p for p in services.processes if p.module == "services.business.server"]
    return sum(
        1
        for line in business.log_events("rpc")
        if line.get("request_id") == request_id and line.get("rpc") == "LookupBusiness"
    )


def test_a_forged_body_costs_one_business_lookup_not_one_per_number(
    gateway: Gateway, services: Services
) -> None:
    """Where the platform's secret does not verify a body, each business it names must have
    signed it with its own, and each was looked up at once: a forged body naming 20 unknown
    numbers cost 20 lookups (10 ms of the business service's CPU; twice the gateway's own) for
    anyone who sent it. (Was a bug.) They are looked up one at a time, to the first that did
    not sign it."""

    def forged(count: int) -> bytes:
        pnids = [f"9{secrets.randbelow(10**14):014d}" for _ in range(count)]
        change = [{"value": {"metadata": {"phone_number_id": pnid}}} for pnid in pnids]
        return json.dumps({"entry": [{"changes": change}]}).encode()

    rid, later = "forged-" + secrets.token_hex(8), "later-" + secrets.token_hex(8)
    headers = {"content-type": "application/json", "x-hub-signature-256": "sha256=" + "0" * 64}
    with gateway.http as client:
        answer = client.post(
            "/webhooks/whatsapp", content=forged(20), headers={**headers, "x-request-id": rid}
        )
        assert answer.status_code == 403
        answer = client.post(
            "/webhooks/whatsapp", content=forged(1), headers={**headers, "x-request-id": later}
        )
        assert answer.status_code == 403
    # The later request's line written, every line before it is too.
    assert wait_for(lambda: _lookups(services, later) == 1, 20)
    assert _lookups(services, rid) == 1
    # A business's own secret still verifies its own numbers, and only those.
    victim, _ = _with_own_secret(gateway)
    owner, owner_secret = _with_own_secret(gateway)
    assert _post(gateway, _mixed(owner, owner), owner_secret).json()["queued"] == 2
    assert _post(gateway, _mixed(owner, victim), owner_secret).status_code == 403


def test_the_runbooks_twilio_test_form_is_taken_and_the_travel_guides_is_a_dead_letter(
    open_gateway: Gateway,
) -> None:
    """What docs/gateway.md and the runbook say of a hand-made Twilio form on a dev gateway
    without a Twilio token (``make run``'s): the documented one is queued unsigned; the travel
    guide's ``curl -d``, without ``MessageSid``, is answered 200 and becomes a dead letter."""
    gw = open_gateway
    business = create_business(gw, twilio_account_sid=None, twilio_auth_token=None)
    sender = "+" + new_wa_id()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    before = queue_lengths(gw.redis_url)
    documented = urlencode(
        [
            ("MessageSid", "SM" + secrets.token_hex(16)),
            ("From", f"whatsapp:{sender}"),
            ("To", f"whatsapp:{business.number}"),
            ("Body", "NYC to London next Friday"),
        ]
    )
    guides = f"Body=NYC to London next Friday&From=whatsapp:{sender}&To=whatsapp:{business.number}"
    with gw.http as client:
        taken = client.post("/whatsapp/webhook", content=documented, headers=form)
        assert taken.status_code == 200, taken.text
        assert queue_lengths(gw.redis_url) == before + 1
        answered = client.post("/whatsapp/webhook", content=guides, headers=form)
        assert answered.status_code == 200, answered.text
    assert queue_lengths(gw.redis_url) == before + 1
    [dead] = [d for d in dead_letters(gw) if d["error"] == "form without MessageSid"]
    assert dead["reason"] == "unusable_payload"


def test_a_form_of_more_fields_than_twilio_sends_is_not_parsed(
    gateway: Gateway, open_gateway: Gateway
) -> None:
    """A Twilio form is parsed, then signed (its fields sorted) once per URL and token tried,
    before anything says it is Twilio's: a forged 3 MB form of 360,000 fields held the event
    loop for 4 s, 7 s with a forwarded host and a business's own token (two URLs, two tokens,
    each with and without a port). (Was a bug.) Twilio's forms have a few dozen fields; one of
    more than 1,000 is not read (so its signature cannot match), nor queued."""
    user = "+" + new_wa_id()
    form = twilio_form("+15550000000", user, "hi")  # a number no business has
    over = [*form, *((f"x{i}", "") for i in range(1001 - len(form)))]  # 1,001 fields
    url = f"{gateway.url}/webhooks/twilio"
    queued = 'gateway_messages_enqueued_total{channel="twilio"}'
    before = metric(gateway, queued)
    with gateway.http as client:
        body, headers = signed_twilio(url, over)
        answer = client.post("/webhooks/twilio", content=body, headers=headers)
        assert answer.status_code == 403, answer.text
        assert metric(gateway, queued) == before
        # Within the bound, the same form is Twilio's as ever.
        body, headers = signed_twilio(url, over[:-1])
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    assert metric(gateway, queued) == before + 1
    # Where no secret applies (a dev gateway), it is a 400 that says why.
    before = metric(open_gateway, queued)
    with open_gateway.http as client:
        answer = client.post("/webhooks/twilio", data=dict(over))
    assert answer.status_code == 400
    assert "at most 1000 fields" in answer.json()["detail"]
    assert metric(open_gateway, queued) == before


def test_production_refuses_twilio_webhooks_no_token_can_verify(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    gw = _start(
        services, fake_clouds, valkey, "signatures-prod", APP_ENV="production", TWILIO_AUTH_TOKEN=""
    )
    try:
        without = create_business(gw, twilio_account_sid=None, twilio_auth_token=None)
        with_token = create_business(gw)
        url = f"{gw.url}/webhooks/twilio"
        with gw.http as client:
            form = twilio_form(without.number, "+34600000077", "forged")
            body, headers = signed_twilio(url, form, "any-token")
            del headers[twilio.SIGNATURE_HEADER]
            refused = client.post("/webhooks/twilio", content=body, headers=headers)
            assert refused.status_code == 403, refused.text
            assert "auth token" in refused.json()["detail"]
            form = twilio_form(with_token.number, "+34600000078", "genuine")
            body, headers = signed_twilio(url, form, with_token.twilio_token)
            assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
            metrics = client.get("/metrics").text
        assert 'gateway_webhooks_total{channel="twilio",outcome="no_secret"} 1.0' in metrics
        assert queue_lengths(gw.redis_url) == 1
    finally:
        gw.stop()


def test_a_disabled_businesss_webhooks_are_verified_with_its_own_secret_and_dead_lettered(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """A business that is deactivated (or has WhatsApp turned off) still gets its users'
    messages: they are taken when its own secret verifies them and dead-lettered, as a Cloud API
    message signed with the global app secret is, so an operator sees them and can replay them
    once it is back. (Was a bug: the lookup of its secret found no business, so a Twilio message
    with no TWILIO_AUTH_TOKEN set was refused 403 (Twilio does not retry a 4xx: lost unseen),
    and one signed with its own Cloud API app secret 403 too.) A wrong signature is still 403."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "signatures-disabled",
        APP_ENV="production",
        TWILIO_AUTH_TOKEN="",
    )
    try:
        by_twilio = create_business(gw)
        by_cloud, own_secret = _with_own_secret(gw)
        with gw.admin() as admin:
            assert admin.delete(f"/admin/businesses/{by_twilio.id}").status_code == 200
            off = {"whatsapp_enabled": False}
            assert admin.patch(f"/admin/businesses/{by_cloud.id}", json=off).status_code == 200
        url = f"{gw.url}/webhooks/twilio"
        form = twilio_form(by_twilio.number, "+" + new_wa_id(), "anyone there?")
        payload = cloud_payload(by_cloud.phone_number_id, new_wa_id(), "anyone there?")
        assert _post(gw, payload, "not-" + own_secret).status_code == 403
        answer = _post(gw, payload, own_secret)
        assert answer.status_code == 200, answer.text
        with gw.http as client:
            body, headers = signed_twilio(url, form, "not-" + by_twilio.twilio_token)
            assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 403
            body, headers = signed_twilio(url, form, by_twilio.twilio_token)
            answer = client.post("/webhooks/twilio", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
        assert wait_for(lambda: len(dead_letters(gw)) == 2, 20), dead_letters(gw)
        assert {d["reason"] for d in dead_letters(gw)} == {"unknown_business"}
    finally:
        gw.stop()


def test_the_guides_callback_url_answers_metas_subscription_check(gateway: Gateway) -> None:
    from tests.support.stack import VERIFY_TOKEN

    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
    with gateway.http as client:
        for path in ("/webhooks/whatsapp", "/whatsapp_response"):
            answer = client.get(path, params=query)
            assert (answer.status_code, answer.text) == (200, "42")
            wrong = client.get(path, params={**query, "hub.verify_token": "nope"})
            assert wrong.status_code == 403


def test_twilio_status_callbacks_are_verified_with_the_sending_business_token(
    gateway: Gateway,
) -> None:
    """A status callback reports on a reply the business sent: ``From`` is the business's number
    and ``To`` the user's, and Twilio signs it with the token of the account that sent it."""
    business = create_business(gateway)
    user = "+" + new_wa_id()
    url = f"{gateway.url}/webhooks/twilio"
    form = twilio_status_form(business, user, "failed", "63016")
    before = queue_lengths(gateway.redis_url)
    with gateway.http as client:
        body, headers = signed_twilio(url, form, business.twilio_token)
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
        # Another business's token still vouches for nothing of this one's.
        other = create_business(gateway)
        body, headers = signed_twilio(url, form, other.twilio_token)
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 403
        metrics = client.get("/metrics").text
    assert 'gateway_message_statuses_total{channel="twilio",status="failed"} 1.0' in metrics
    assert queue_lengths(gateway.redis_url) == before


def test_twilio_signatures_behind_a_tls_terminating_proxy(gateway: Gateway) -> None:
    """An ingress or load balancer ends TLS and forwards over plain HTTP with X-Forwarded-Proto
    (and the public host): Twilio signed the https URL it called, as its docs say to rebuild it.
    The connection comes from the proxy's address, not 127.0.0.1 (uvicorn trusts forwarded
    headers only from there), as in a cluster."""
    business = gateway.business
    assert business is not None
    user = "+" + new_wa_id()
    form = twilio_form(business.number, user, "through the ingress")
    body, headers = signed_twilio("https://bot.example.com/webhooks/twilio", form)
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=gateway.url, transport=proxy, timeout=10) as client:
        forwarded = {"host": "bot.example.com", "x-forwarded-proto": "https"}
        answer = client.post("/webhooks/twilio", content=body, headers={**headers, **forwarded})
        assert answer.status_code == 200, answer.text
        # As Kubernetes' ingress-nginx sends it: the Service's host, the public one forwarded.
        form = twilio_form(business.number, user, "through the ingress, again")
        body, headers = signed_twilio("https://bot.example.com/webhooks/twilio", form)
        forwarded = {
            "host": "gateway.parley.svc",
            "x-forwarded-host": "bot.example.com",
            "x-forwarded-proto": "https",
        }
        answer = client.post("/webhooks/twilio", content=body, headers={**headers, **forwarded})
        assert answer.status_code == 200, answer.text
        # The forwarded URL is one more URL the signature may be for, never a way around it.
        body, headers = signed_twilio("https://bot.example.com/webhooks/twilio", form, "not-it")
        answer = client.post("/webhooks/twilio", content=body, headers={**headers, **forwarded})
        assert answer.status_code == 403


def test_twilio_signatures_of_a_url_with_a_port_with_it_or_without(gateway: Gateway) -> None:
    """A webhook URL on a non-default HTTPS port (``https://bot.example.com:8443/…``): Twilio
    drops the port before signing (its security notes), though not for every callback, and its
    own validators accept either. Only the port given was tried: every such webhook was 403,
    and Twilio does not retry a 4xx. (Was a bug.)"""
    business = gateway.business
    assert business is not None
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "bot.example.com:8443"}
    with gateway.http as client:
        for signed_url, status in [
            ("https://bot.example.com/webhooks/twilio", 200),
            ("https://bot.example.com:8443/webhooks/twilio", 200),
            ("https://bot.example.com:9443/webhooks/twilio", 403),  # another port is another URL
        ]:
            form = twilio_form(business.number, "+" + new_wa_id(), "on port 8443")
            body, headers = signed_twilio(signed_url, form)
            answer = client.post("/webhooks/twilio", content=body, headers={**headers, **forwarded})
            assert answer.status_code == status, (signed_url, answer.text)


@pytest.mark.parametrize("host", ["bot.example.com:abc", "bot.example.com:99999", "[::1"])
def test_a_forwarded_host_that_is_no_host_is_refused_not_a_500(gateway: Gateway, host: str) -> None:
    """X-Forwarded-Host is anyone's to send: one with a port that is not a number, past 65535,
    or an unclosed IPv6 bracket made the Twilio check's URL parsing raise, a 500 with a
    traceback logged as an error. (Was a bug.) It is one more URL the signature is not for."""
    business = gateway.business
    assert business is not None
    form = twilio_form(business.number, "+" + new_wa_id(), "hi")
    body, headers = signed_twilio("https://bot.example.com/webhooks/twilio", form, "not-it")
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": host}
    with gateway.http as client:
        answer = client.post("/webhooks/twilio", content=body, headers={**headers, **forwarded})
    assert answer.status_code == 403, answer.text
    assert answer.json() == {"detail": "X-Twilio-Signature does not match"}


def test_a_twilio_subaccount_without_its_auth_token_is_refused_saying_which_token_signs(
    gateway: Gateway,
) -> None:
    """A business with only its Twilio account SID is a subaccount of the platform's account: its
    replies go out with the platform's credentials, but Twilio signs the subaccount's webhooks
    with the subaccount's own auth token, so none of them verifies with `TWILIO_AUTH_TOKEN`.
    The refusal says so and what to store. (Was a bug: a bare *does not match*, read as a
    rotated token, and the docs offered the SID alone as a way to run a subaccount.)"""
    business = create_business(gateway, twilio_auth_token=None)
    subaccount_token = "subaccount-token-" + secrets.token_hex(8)
    SECRETS.append(subaccount_token)
    url = f"{gateway.url}/webhooks/twilio"
    user = "+" + new_wa_id()
    with gateway.http as client:
        body, headers = signed_twilio(
            url, twilio_form(business.number, user, "hi"), subaccount_token
        )
        refused = client.post("/webhooks/twilio", content=body, headers=headers)
        assert refused.status_code == 403
        detail = refused.json()["detail"]
        assert "subaccount" in detail and "twilio_auth_token" in detail
        # A business with its own pair is refused as before: nothing names subaccounts.
        assert gateway.business is not None
        body, headers = signed_twilio(url, twilio_form(gateway.business.number, user, "hi"), "x")
        other = client.post("/webhooks/twilio", content=body, headers=headers)
        assert other.json()["detail"] == "X-Twilio-Signature does not match"
    with gateway.admin() as admin:
        stored = admin.put(
            f"/admin/businesses/{business.id}/token",
            json={"twilio_auth_token": subaccount_token},
        )
        assert stored.status_code == 200, stored.text
    with gateway.http as client:
        body, headers = signed_twilio(
            url, twilio_form(business.number, user, "hi"), subaccount_token
        )
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200


def test_webhook_urls_registered_with_a_trailing_slash_are_served_not_redirected(
    gateway: Gateway,
) -> None:
    """A callback URL registered as ``…/webhooks/whatsapp/`` got Starlette's 307 to the path
    without the slash, for the subscription check and every webhook: neither Meta nor Twilio
    follows a redirect, so each was lost, with only a redirect in our logs. Both forms are the
    same routes now, signatures and all."""
    from tests.support.stack import VERIFY_TOKEN, metric

    business = gateway.business
    assert business is not None
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"}
    accepted = 'gateway_webhooks_total{channel="twilio",outcome="accepted"}'
    twilio_before = metric(gateway, accepted)
    with gateway.http as client:
        for path in ("/webhooks/whatsapp/", "/whatsapp_response/"):
            answer = client.get(path, params=query)
            assert (answer.status_code, answer.text) == (200, "7")
            body, headers = signed_cloud(cloud_payload(business.phone_number_id, new_wa_id(), "hi"))
            answer = client.post(path, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["queued"] == 1
            del headers[cloud_api.SIGNATURE_HEADER]
            assert client.post(path, content=body, headers=headers).status_code == 401
            assert client.put(path).status_code == 405
        for path in ("/webhooks/twilio/", "/whatsapp/webhook/"):
            # Twilio signs the URL it was given: the slash is part of it.
            form = twilio_form(business.number, "+" + new_wa_id(), "hi")
            body, headers = signed_twilio(gateway.url + path, form)
            answer = client.post(path, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            body, headers = signed_twilio(gateway.url + path.rstrip("/"), form)
            assert client.post(path, content=body, headers=headers).status_code == 403
    assert metric(gateway, accepted) == twilio_before + 2
