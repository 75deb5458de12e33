"""Locust, as the migration guides use it, against a running Parley.

    make run        # in one terminal (see docs/performance.md for the rate-limit settings)
    locust -f bench/locustfile.py --users 500 --spawn-rate 50 --run-time 5m --headless

Every request is a signed, realistic webhook to one of the gateway's real paths:

- Cloud API JSON, ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app secret), to
  ``/webhooks/whatsapp`` and the guides' ``/whatsapp_response``;
- Twilio form posts, ``X-Twilio-Signature`` (HMAC-SHA1 of the target URL and the sorted form,
  with the auth token), to ``/webhooks/twilio`` and the guides' ``/whatsapp/webhook``.

The text of each message comes from the system benchmark's mix (:mod:`bench.system_load`): a
Zipf mix of route requests, the conversation tests' phrasings and follow-ups, from 10,000
WhatsApp users spread over the businesses. Each Locust user is a stream of such messages with a
think time between them (``PARLEY_THINK_SECONDS``, default 0.5 to 1.5 s: 500 Locust users offer
about 500 webhooks/s).

Settings (environment):

- host: ``--host``, else ``PARLEY_URL``, else http://127.0.0.1:8000 (``make run``'s gateway);
- ``WHATSAPP_APP_SECRET``: else ``var/dev-app-secret``, which ``make run`` writes (under
  ``PARLEY_VAR_DIR`` when that is set, as for ``make run``);
- ``TWILIO_AUTH_TOKEN``: else ``var/dev-twilio-auth-token`` if present; without either, Twilio
  posts go unsigned, which a gateway with no Twilio token configured accepts (``make run``'s);
- ``PARLEY_BUSINESSES``: ``phone_number_id:+number`` pairs, comma-separated; default the demo
  business of ``make run`` (``100000000000001:+15550100001``);
- ``PARLEY_USERS`` (10000), ``PARLEY_THINK_SECONDS`` ("0.5,1.5"), ``PARLEY_TWILIO_SHARE`` (0.2).
"""

from __future__ import annotations

import os
import random
import secrets
import sys
from pathlib import Path
from urllib.parse import urlencode

from locust import FastHttpUser, between, task

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # locust puts bench/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from bench.system_load import Message, Mix, cloud_body  # noqa: E402
from services.gateway.channels import cloud_api, twilio  # noqa: E402

VAR = Path(os.environ.get("PARLEY_VAR_DIR") or ROOT / "var")  # where make run keeps them
DEMO_BUSINESS = "100000000000001:+15550100001"


def _secret(variable: str, dev_file: str) -> str:
    value = os.environ.get(variable, "")
    if value:
        return value
    path = VAR / dev_file
    return path.read_text().strip() if path.exists() else ""


def businesses() -> list[tuple[str, str]]:
    pairs = []
    for item in os.environ.get("PARLEY_BUSINESSES", DEMO_BUSINESS).split(","):
        pnid, _, number = item.strip().partition(":")
        if pnid:
            pairs.append((pnid, number or "+15550100001"))
    return pairs


APP_SECRET = _secret("WHATSAPP_APP_SECRET", "dev-app-secret")
TWILIO_TOKEN = _secret("TWILIO_AUTH_TOKEN", "dev-twilio-auth-token")
TWILIO_SID = os.environ.get("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
BUSINESSES = businesses()
NUMBER_OF = dict(BUSINESSES)
THINK = [float(x) for x in os.environ.get("PARLEY_THINK_SECONDS", "0.5,1.5").split(",")]
TWILIO_SHARE = float(os.environ.get("PARLEY_TWILIO_SHARE", "0.2"))
MIX = Mix([pnid for pnid, _ in BUSINESSES], users=int(os.environ.get("PARLEY_USERS", "10000")))


def cloud_request(message: Message) -> tuple[bytes, dict[str, str]]:
    """A Cloud API webhook body and its headers (signed when an app secret is known)."""
    body = cloud_body(message)
    headers = {"Content-Type": "application/json"}
    if APP_SECRET:
        headers["X-Hub-Signature-256"] = cloud_api.sign(body, APP_SECRET)
    return body, headers


def twilio_request(message: Message, url: str) -> tuple[bytes, dict[str, str]]:
    """A Twilio WhatsApp webhook form and its headers, signed for ``url`` when a token is known."""
    form = [
        ("MessageSid", "SM" + secrets.token_hex(16)),
        ("AccountSid", TWILIO_SID),
        ("From", f"whatsapp:+{message.user}"),
        ("To", f"whatsapp:{NUMBER_OF.get(message.phone_number_id, '+15550100001')}"),
        ("Body", message.text),
        ("NumMedia", "0"),
        ("ProfileName", "Load Test"),
        ("WaId", message.user),
    ]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if TWILIO_TOKEN:
        headers["X-Twilio-Signature"] = twilio.sign(url, form, TWILIO_TOKEN)
    return urlencode(form).encode(), headers


class WhatsAppTraffic(FastHttpUser):
    """A stream of webhooks from many WhatsApp users, as Meta and Twilio would deliver them."""

    host = os.environ.get("PARLEY_URL", "http://127.0.0.1:8000")
    wait_time = between(THINK[0], THINK[-1])

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        with self.client.post(
            path, data=body, headers=headers, name=path, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")

    @task(int(100 * (1 - TWILIO_SHARE)) or 1)
    def cloud_api_message(self) -> None:
        message = MIX.next("locust" + secrets.token_hex(3))
        path = random.choice(("/webhooks/whatsapp", "/webhooks/whatsapp", "/whatsapp_response"))
        self._post(path, *cloud_request(message))

    @task(int(100 * TWILIO_SHARE) or 1)
    def twilio_message(self) -> None:
        message = MIX.next("locust" + secrets.token_hex(3))
        path = random.choice(("/webhooks/twilio", "/whatsapp/webhook"))
        url = (self.host or "").rstrip("/") + path
        self._post(path, *twilio_request(message, url))
