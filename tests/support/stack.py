"""The whole stack as real processes, for every test that drives it (gateway, bot, hostile input,
faults): Valkey, the three services, the gateway (one process or web + workers), and local fakes
of the Graph API and Twilio's REST API."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway.channels import cloud_api, twilio
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import (
    SHARED_DATABASES,
    ServiceProcess,
    Valkey,
    free_port,
    wait_for,
)

# Every secret the test run uses: none may appear in any captured log.
APP_SECRET = "app-secret-" + secrets.token_hex(8)
VERIFY_TOKEN = "verify-" + secrets.token_hex(6)
API_KEY = "admin-key-" + secrets.token_hex(8)
TWILIO_TOKEN = "twilio-env-token-" + secrets.token_hex(8)
TWILIO_SID = "AC" + secrets.token_hex(16)
ENCRYPTION_SECRET = "enc-secret-" + secrets.token_hex(12)
SECRETS = [APP_SECRET, VERIFY_TOKEN, API_KEY, TWILIO_TOKEN, ENCRYPTION_SECRET]

# 0-15 are the numbers tests and fixtures name by hand (the services' 0-2 here, the bot's search
# cache 5, the session tests' 8 and 11-13, ...).
_db = itertools.count(16)
_numbers = itertools.count(int(time.time()) % 100_000 * 100)


def next_db() -> int:
    """A database of the shared Valkey that nothing else in the run uses. Numbers were reused
    (cycling through 3-15, then 1 and 2, the session and search services' own): a gateway still
    running on one (a module's, or one a failed test left behind) took the next test's messages
    from the same queue, and each start flushed whatever that database held."""
    db = next(_db)
    if db >= SHARED_DATABASES:
        raise RuntimeError(f"all {SHARED_DATABASES} databases handed out: raise SHARED_DATABASES")
    return db


@dataclass
class Services:
    session: str
    business: str
    search: str
    processes: list[ServiceProcess]
    log_dir: Path


@dataclass
class Business:
    id: str
    phone_number_id: str
    number: str  # E.164, the Twilio "To"
    access_token: str
    twilio_sid: str
    twilio_token: str


@dataclass
class Gateway:
    url: str
    redis_url: str
    env: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)
    business: Business | None = None

    @property
    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": API_KEY})

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture(scope="session")
def fake_clouds() -> Iterator[FakeClouds]:
    fake = FakeClouds().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-logs")


@pytest.fixture(scope="session")
def services(
    valkey: Valkey, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    redis_base = f"redis://127.0.0.1:{valkey.port}"
    started = start_services(
        log_dir,
        common={"LOG_LEVEL": "DEBUG"},
        session={"REDIS_URL": f"{redis_base}/1", "SESSION_HISTORY_LIMIT": "100"},
        business={
            "BUSINESS_DB_PATH": str(tmp_path_factory.mktemp("business") / "b.db"),
            "ENCRYPTION_SECRET": ENCRYPTION_SECRET,
            "BUSINESS_NEGATIVE_CACHE_TTL": "0",
            # Publishes every change, as in production: the gateways' caches drop it.
            "REDIS_URL": f"{redis_base}/0",
        },
        search={"REDIS_URL": f"{redis_base}/2"},
        timeout=40,
    )
    try:
        yield started
    finally:
        for process in started.processes:
            process.stop()


def start_services(
    log_dir: Path,
    *,
    common: dict[str, str],
    session: dict[str, str],
    business: dict[str, str],
    search: dict[str, str],
    timeout: float,
) -> Services:
    """Session, business and search as processes on free ports, each with ``common`` and its
    own settings, none reaching outside (no MongoDB, no Amadeus); SERVING when this returns."""
    ports = {name: free_port() for name in ("session", "business", "search")}
    own = {"session": session, "business": business, "search": search}
    processes = [
        ServiceProcess(
            f"services.{name}.server",
            {
                **common,
                f"{name.upper()}_PORT": str(port),
                f"{name.upper()}_METRICS_PORT": "0",
                **own[name],
            },
            log_dir / f"{name}.log",
        )
        for name, port in ports.items()
    ]
    try:
        for process in processes:
            for var in ("MONGODB_URI", "AMADEUS_CLIENT_ID", "AMADEUS_CLIENT_SECRET"):
                process.env.pop(var, None)
            process.start()
        for process, port in zip(processes, ports.values(), strict=True):
            process.wait_serving(f"127.0.0.1:{port}", "", timeout)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return Services(
        *(f"127.0.0.1:{p}" for p in ports.values()), processes=processes, log_dir=log_dir
    )


def gateway_env(
    services: Services, fake: FakeClouds, redis_url: str, port: int, **extra: str
) -> dict[str, str]:
    return {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "SESSION_SERVICE_ADDR": services.session,
        "BUSINESS_SERVICE_ADDR": services.business,
        "SEARCH_SERVICE_ADDR": services.search,
        "GATEWAY_REDIS_URL": redis_url,
        "REDIS_URL": redis_url,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "API_KEY": API_KEY,
        "WHATSAPP_API_BASE_URL": fake.url,
        "TWILIO_API_BASE_URL": fake.url,
        "GATEWAY_ENGINE": "tests.gateway.engines:create_engine",
        "VISIBILITY_TIMEOUT_SECONDS": "2",
        "RETRY_BASE_SECONDS": "0.1",
        "RETRY_MAX_SECONDS": "0.5",
        "QUEUE_PARTITIONS": "8",
        "LOG_LEVEL": "DEBUG",
        "SHUTDOWN_GRACE_SECONDS": "5",
        **extra,
    }


def start_gateway(
    services: Services,
    fake: FakeClouds,
    redis_url: str,
    name: str,
    *,
    role: str = "all",
    workers: int = 0,
    **extra: str,
) -> Gateway:
    port = free_port()
    env = gateway_env(services, fake, redis_url, port, **extra)
    _flush(redis_url)  # whatever URL it is given (a test may give its own server's twice)
    gateway = Gateway(f"http://127.0.0.1:{port}", redis_url, env)
    web = ServiceProcess(
        "services.gateway.main", {**env, "GATEWAY_ROLE": role}, services.log_dir / f"{name}.log"
    ).start()
    gateway.processes.append(web)
    for i in range(workers):
        gateway.processes.append(start_worker(env, services.log_dir / f"{name}-worker{i}.log"))
    if not wait_for(lambda: _ready(gateway.url), 40, 0.2):
        gateway.stop()
        raise AssertionError(f"gateway not ready:\n{web.log[-3000:]}")
    return gateway


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def start_worker(env: dict[str, str], log: Path) -> ServiceProcess:
    return ServiceProcess("services.gateway.main", {**env, "GATEWAY_ROLE": "worker"}, log).start()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def create_business(gateway: Gateway, **extra: Any) -> Business:
    n = next(_numbers)
    business = Business(
        id="",
        phone_number_id=f"2{n:014d}",
        number=f"+1555{n % 10_000_000:07d}",
        access_token="graph-token-" + secrets.token_hex(8),
        twilio_sid="AC" + secrets.token_hex(16),
        twilio_token="biz-twilio-" + secrets.token_hex(8),
    )
    SECRETS.extend([business.access_token, business.twilio_token])
    with gateway.admin() as admin:
        response = admin.post(
            "/admin/businesses",
            json={
                "name": f"Test {n}",
                "subdomain": f"t{n}",
                "whatsapp_phone_number_ids": [business.phone_number_id],
                "whatsapp_numbers": [business.number],
                "access_token": business.access_token,
                "twilio_account_sid": business.twilio_sid,
                "twilio_auth_token": business.twilio_token,
                "timezone": "America/New_York",
                "locale": "en",
                **extra,
            },
        )
    assert response.status_code == 201, response.text
    business.id = response.json()["id"]
    return business


@pytest.fixture(scope="module")
def gateway(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """One gateway process (web and workers) for a test module, on a Redis database of its own."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        request.module.__name__.rsplit(".", 1)[-1],
    )
    gw.business = create_business(gw)
    yield gw
    gw.stop()


def dead_letters(gateway: Gateway) -> list[dict[str, Any]]:
    with gateway.admin() as admin:
        return list(admin.get("/admin/dead-letters").json()["dead_letters"])


# What a gateway has heard from the business service's change channel (its cache dropped them).
REMOTE_INVALIDATIONS = 'gateway_business_cache_invalidations_total{origin="remote"}'


def metric(gateway: Gateway, name: str) -> float:
    """The sum of the gateway's /metrics samples whose line starts with ``name``."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


# --- building webhooks ---------------------------------------------------------------------


USERS: list[str] = []  # every user id the run made up: none may appear unmasked in a log


def new_wa_id() -> str:
    wa_id = f"1{secrets.randbelow(10**10):010d}"
    USERS.append(wa_id)
    return wa_id


def meta_wamid(wa_id: str) -> str:
    """A Cloud API message id made as Meta's are (every real webhook's, e.g. the examples in
    AWS's End User Messaging Social guide): the base64 of a record that starts with the user's
    number, ``wamid.HBgL<base64 of the number>…``."""
    record = b"\x1c\x18" + bytes([len(wa_id)]) + wa_id.encode() + b"\x15\x02\x00\x11\x18\x12"
    return "wamid." + base64.b64encode(record + secrets.token_hex(9).upper().encode()).decode()


def cloud_payload(
    phone_number_id: str, wa_id: str, text: str, message_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    message = {
        "from": wa_id,
        "id": message_id or f"wamid.{secrets.token_hex(12)}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
        **extra,
    }
    contact = {"profile": {"name": "Test User"}, "wa_id": wa_id}
    return cloud_api.notification(phone_number_id, [message], [contact])


def signed_cloud(payload: dict[str, Any], secret: str = APP_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {
        "content-type": "application/json",
        cloud_api.SIGNATURE_HEADER: cloud_api.sign(body, secret),
    }


def post_cloud(client: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    body, headers = signed_cloud(payload)
    return client.post("/webhooks/whatsapp", content=body, headers=headers)


def twilio_form(to: str, sender: str, text: str, sid: str | None = None) -> list[tuple[str, str]]:
    return [
        ("MessageSid", sid or "SM" + secrets.token_hex(16)),
        ("AccountSid", TWILIO_SID),
        ("From", f"whatsapp:{sender}"),
        ("To", f"whatsapp:{to}"),
        ("Body", text),
        ("NumMedia", "0"),
        ("ProfileName", "Test User"),
        ("WaId", sender.lstrip("+")),
    ]


def twilio_status_form(
    business: Business, user: str, status: str, error_code: str = ""
) -> list[tuple[str, str]]:
    """A status callback as Twilio documents it: a subset of the message's parameters (``From``
    the business, ``To`` the user), ``MessageStatus`` and, for a failure, ``ErrorCode``."""
    sid = "SM" + secrets.token_hex(16)
    return [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", business.twilio_sid),
        ("From", f"whatsapp:{business.number}"),
        ("To", f"whatsapp:{user}"),
        ("MessageStatus", status),
        ("SmsStatus", status),
        *([("ErrorCode", error_code)] if error_code else []),
        ("ApiVersion", "2010-04-01"),
        ("ChannelPrefix", "whatsapp"),
        ("ChannelToAddress", user),
    ]


def signed_twilio(
    url: str, form: list[tuple[str, str]], token: str = TWILIO_TOKEN
) -> tuple[bytes, dict[str, str]]:
    from urllib.parse import urlencode

    return urlencode(form).encode(), {
        "content-type": "application/x-www-form-urlencoded",
        twilio.SIGNATURE_HEADER: twilio.sign(url, form, token),
    }


def queue_lengths(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.xlen(key)) for key in client.scan_iter("gw:q:*"))
    finally:
        client.close()
