"""Full conversations through the real gateway and services: signed Cloud API webhooks in, the
conversation engine (``services.gateway.bot``) in the gateway's worker, replies read from the
outbox. Session and business services come from the gateway tests' harness; search is this
package's own process, whose provider can be switched off (to open its breaker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.common.redact import mask_phone
from services.gateway.bot.messages import Texts
from services.gateway.bot.switches import Switch
from tests.bot.conftest import SearchServer, today
from tests.bot.fake_openai import FakeOpenAI
from tests.bot.test_dialogue import SPANISH_MONTHS
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.stack import (
    Business,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    meta_wamid,
    new_wa_id,
    next_db,
    post_cloud,
    signed_cloud,
    signed_twilio,
    start_gateway,
    twilio_form,
)

ENGINE = "services.gateway.bot:create_engine"


def run_gateway(
    services: Services,
    search_server: SearchServer,
    fake_clouds: FakeClouds,
    valkey: Valkey,
    name: str,
    *,
    role: str = "all",
    workers: int = 0,
    **env: str,
) -> Gateway:
    # The gateway harness's session and business services, with this package's search process.
    ours = Services(
        services.session, services.business, search_server.address, [], services.log_dir
    )
    gateway = start_gateway(
        ours,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        name,
        role=role,
        workers=workers,
        # mypy can't tell these str values from start_gateway's int keyword "workers".
        **{  # type: ignore[arg-type]
            "GATEWAY_ENGINE": ENGINE,
            "OUTBOX_ONLY": "true",
            "USE_ASYNC_SEARCH": "false",
            "OPENAI_API_KEY": "",  # never the developer's own key: no outside calls
            **env,
        },
    )
    gateway.business = create_business(gateway)
    return gateway


@pytest.fixture(scope="module")
def smart(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> Iterator[Gateway]:
    gateway = run_gateway(services, search_server, fake_clouds, valkey, "bot-smart")
    yield gateway
    gateway.stop()


class User:
    """One WhatsApp user of a gateway's test business."""

    def __init__(self, gateway: Gateway, wa_id: str | None = None) -> None:
        self.gateway = gateway
        self.wa_id = wa_id or new_wa_id()
        self.cursor: str | None = None
        assert gateway.business is not None
        self.business: Business = gateway.business

    def post(self, text: str = "", **extra: Any) -> None:
        with self.gateway.http as client:
            response = post_cloud(
                client, cloud_payload(self.business.phone_number_id, self.wa_id, text, **extra)
            )
        assert response.status_code == 200, response.text

    def replies(self, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next ``count`` replies from the outbox."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        with self.gateway.admin() as admin:
            while len(got) < count and time.monotonic() < deadline:
                params = {"user_id": self.wa_id, **({"after": self.cursor} if self.cursor else {})}
                data = admin.get("/admin/outbox", params=params).json()
                got.extend(data["messages"])
                self.cursor = data["next"]
                if len(got) < count:
                    time.sleep(0.1)
        assert len(got) >= count, f"{len(got)} of {count} replies: {[m['text'] for m in got]}"
        return got

    def say(self, text: str, count: int = 1) -> str:
        self.post(text)
        return "\n---\n".join(m["text"] for m in self.replies(count))


def offers_shown(text: str) -> int:
    return sum(1 for n in ("*1.*", "*2.*", "*3.*") if n in text)


def test_a_complete_request_gets_offers_in_the_first_reply(smart: Gateway) -> None:
    user = User(smart)
    reply = user.say("NYC to London next Friday")
    assert "New York (NYC) → London (LON)" in reply
    assert offers_shown(reply) == 3 and "Demo fares" in reply
    assert "*more* for more, *new* to start over" in reply
    time.sleep(0.3)
    assert user.replies(0) == [], "one message, one reply"
    detailed = httpx.get(f"{smart.url}/health/detailed", timeout=5).json()
    assert detailed["engine"]["use_smart_handler"] == "on"


def test_a_request_built_over_four_messages_and_corrected(smart: Gateway) -> None:
    user = User(smart)
    assert "I find flights" in user.say("hello")
    assert "Where are you flying from?" in user.say("fly me to rome")
    assert "When do you want to leave?" in user.say("from london")
    reply = user.say("next friday")
    assert "London (LON) → Rome (ROM)" in reply and offers_shown(reply) == 3
    # Corrections, each answered with a new search; the rest of the trip is kept.
    assert "2 adults" in user.say("make it 2 adults")
    reply = user.say("from Paris instead")
    assert "Paris (PAR) → Rome (ROM)" in reply and "2 adults" in reply
    assert user.say("2").startswith("*Offer 2*")


def test_an_ambiguous_city_comes_back_as_a_list(
    smart: Gateway, search_server: SearchServer
) -> None:
    user = User(smart)
    user.post("San Jose to Miami tomorrow")
    (question,) = user.replies()
    assert "Which “San Jose” do you mean?" in question["text"]
    rows = question["rows"]
    assert len(rows) >= 2 and all(len(r["title"]) <= 24 for r in rows)
    costa_rica = next(r for r in rows if "CR" in r["description"])
    user.post(
        type="interactive",
        interactive={
            "type": "list_reply",
            "list_reply": {
                "id": costa_rica["id"],
                "title": costa_rica["title"],
                "description": costa_rica["description"],
            },
        },
    )
    (answer,) = user.replies()
    assert "San Jose (SJO) → Miami (MIA)" in answer["text"] and offers_shown(answer["text"])
    # As many as the route has that day: the offline schedule varies with the date.
    tomorrow = today() + timedelta(days=1)
    assert offers_shown(answer["text"]) == search_server.first_page("SJO", "MIA", tomorrow)


def test_search_down_gets_an_apology_and_keeps_the_trip(
    smart: Gateway, search_server: SearchServer
) -> None:
    user = User(smart)
    search_server.fail(True)
    try:
        reply = user.say("Oslo to Helsinki in 20 days")
    finally:
        search_server.fail(False)
    assert "flight search isn't available right now" in reply and "*retry*" in reply
    assert "Oslo (OSL) → Helsinki (HEL)" in reply
    time.sleep(1.2)  # the search service's breaker recovers after 1 s in these tests
    shown = offers_shown(user.say("retry"))
    assert shown and shown == search_server.first_page("OSL", "HEL", today() + timedelta(20))


def test_location_and_media(smart: Gateway) -> None:
    user = User(smart)
    user.post(type="image", image={"id": "media-1", "mime_type": "image/jpeg"})
    assert "I can only read text messages" in user.replies()[0]["text"]
    assert "Where are you flying from?" in user.say("to Madrid")
    user.post(type="location", location={"latitude": 40.64, "longitude": -73.78})
    texts = [m["text"] for m in user.replies(2)]
    assert "Flying from New York (JFK)" in texts[0] and "When do you want to leave?" in texts[1]


@pytest.fixture(scope="module")
def quarter(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> Iterator[Gateway]:
    gateway = run_gateway(
        services, search_server, fake_clouds, valkey, "bot-quarter", USE_SMART_HANDLER="25%"
    )
    yield gateway
    gateway.stop()


def test_a_quarter_roll_out_over_1000_users(quarter: Gateway) -> None:
    """1,000 users greet the bot; the greeting says which engine each one got. Each must get
    exactly the stable per-user choice (a hash of business and user), and about a quarter the
    extract-everything engine. The business id is new on every run, so the share is a random
    draw here: it is held to ±6 points (4 standard deviations); the ±3-point check runs on fixed
    ids in test_switches.py, where it is deterministic."""
    assert quarter.business is not None
    users = [f"1444{n:07d}" for n in range(1000)]
    phone_number_id = quarter.business.phone_number_id
    with quarter.http as client:
        for batch in range(0, len(users), 100):
            payloads = [cloud_payload(phone_number_id, u, "hi") for u in users[batch : batch + 100]]
            # One webhook carrying 100 messages, as the Cloud API batches them.
            merged = payloads[0]
            value = merged["entry"][0]["changes"][0]["value"]
            for extra in payloads[1:]:
                other = extra["entry"][0]["changes"][0]["value"]
                value["messages"] += other["messages"]
                value["contacts"] += other["contacts"]
            assert post_cloud(client, merged).status_code == 200
    switch = Switch.parse("use_smart_handler", "25%")
    smart_users = 0
    deadline = time.monotonic() + 90
    with quarter.admin() as admin:
        for wa_id in users:
            messages: list[dict[str, Any]] = []
            while not messages and time.monotonic() < deadline:
                messages = admin.get("/admin/outbox", params={"user_id": wa_id}).json()["messages"]
                if not messages:
                    time.sleep(0.1)
            assert len(messages) == 1, f"{wa_id}: {messages}"
            is_smart = "in one message" in messages[0]["text"]
            assert is_smart == switch.enabled_for(quarter.business.id, wa_id)
            smart_users += is_smart
    share = smart_users / len(users)
    print(f"\nUSE_SMART_HANDLER=25% through the gateway: {share:.1%} of 1,000 users")
    assert abs(share - 0.25) <= 0.06
    detailed = httpx.get(f"{quarter.url}/health/detailed", timeout=5).json()
    assert detailed["engine"]["use_smart_handler"] == "25%"


@pytest.fixture(scope="module")
def stepwise(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> Iterator[Gateway]:
    gateway = run_gateway(
        services, search_server, fake_clouds, valkey, "bot-steps", USE_SMART_HANDLER="false"
    )
    yield gateway
    gateway.stop()


def test_step_by_step_with_the_smart_handler_off(stepwise: Gateway) -> None:
    user = User(stepwise)
    assert "Where are you flying from?" in user.say("hi")
    assert user.say("NYC to London next Friday") == "Where do you want to go?"
    assert "When do you want to leave?" in user.say("London")
    reply = user.say("next friday")
    assert "New York (NYC) → London (LON)" in reply and offers_shown(reply) == 3


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def with_llm(
    services: Services,
    search_server: SearchServer,
    fake_clouds: FakeClouds,
    valkey: Valkey,
    openai: FakeOpenAI,
) -> Iterator[Gateway]:
    gateway = run_gateway(
        services,
        search_server,
        fake_clouds,
        valkey,
        "bot-llm",
        OPENAI_API_KEY="sk-gateway-test",
        OPENAI_BASE_URL=openai.base_url,
        OPENAI_MODEL="fake-model",
        OPENAI_TIMEOUT_SECONDS="1.5",
    )
    yield gateway
    gateway.stop()


def _answer(**values: Any) -> dict[str, Any]:
    keys = ["origin", "destination", "place", "departure_date", "return_date", "nights"]
    keys += ["adults", "cabin", "non_stop", "one_way"]
    return {**dict.fromkeys(keys), **values}


@pytest.mark.parametrize("mode", ["good", "garbage", "slow"])
def test_the_language_model_path(with_llm: Gateway, openai: FakeOpenAI, mode: str) -> None:
    from datetime import date, timedelta

    openai.mode, openai.delay = mode, 4.0  # "slow" answers well after the 1.5 s deadline
    openai.answer = _answer(
        origin="Chicago",
        destination="Denver",
        departure_date=(date.today() + timedelta(15)).isoformat(),
    )
    before = len(openai.requests)
    reply = User(with_llm).say("Boston to Miami in 15 days")
    assert len(openai.requests) == before + 1, "the model is asked first"
    if mode == "good":
        assert "Chicago (CHI) → Denver (DEN)" in reply
    else:  # garbage or too slow: the rules answer, and the user can't tell
        assert "Boston (BOS) → Miami (MIA)" in reply
    assert offers_shown(reply) == 3


def test_logs_of_the_engine_carry_no_secrets(with_llm: Gateway) -> None:
    log = Path(with_llm.processes[0].log_path).read_text(errors="replace")
    assert "sk-gateway-test" not in log


@pytest.fixture(scope="module")
def channels(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> Iterator[Gateway]:
    """Replies really sent: to the local fakes of the Graph API and of Twilio's REST API."""
    gateway = run_gateway(
        services, search_server, fake_clouds, valkey, "bot-channels", OUTBOX_ONLY="false"
    )
    yield gateway
    gateway.stop()


def _sent(fake: FakeClouds, to: str, count: int) -> list[Any]:
    assert wait_for(lambda: len(fake.replies(to)) >= count, 20), fake.replies(to)
    return fake.replies(to)


def test_candidates_are_a_list_on_the_cloud_api_and_numbered_text_on_twilio(
    channels: Gateway, fake_clouds: FakeClouds, search_server: SearchServer
) -> None:
    business = channels.business
    assert business is not None
    # Cloud API: an interactive list message at the Graph API.
    wa_id = new_wa_id()
    with channels.http as client:
        payload = cloud_payload(business.phone_number_id, wa_id, "San Jose to Miami tomorrow")
        assert post_cloud(client, payload).status_code == 200
    (question,) = _sent(fake_clouds, wa_id, 1)
    assert question.body["type"] == "interactive"
    interactive = question.body["interactive"]
    assert interactive["type"] == "list"
    assert "Which “San Jose” do you mean?" in interactive["body"]["text"]
    rows = interactive["action"]["sections"][0]["rows"]
    assert [row["id"] for row in rows][:2] == ["place:1", "place:2"]

    # Twilio: the same question as numbered text; the user answers by typing the number.
    sender = "+" + new_wa_id()
    url = f"{channels.url}/webhooks/twilio"
    with channels.http as client:
        form = twilio_form(business.number, sender, "San Jose to Miami tomorrow")
        body, headers = signed_twilio(url, form)
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
        (numbered,) = _sent(fake_clouds, sender, 1)
        text = numbered.body["Body"]
        assert "Which “San Jose” do you mean?" in text
        costa_rica = next(line.split(".")[0].strip() for line in text.splitlines() if "SJO" in line)
        body, headers = signed_twilio(url, twilio_form(business.number, sender, costa_rica))
        assert client.post("/webhooks/twilio", content=body, headers=headers).status_code == 200
    results = _sent(fake_clouds, sender, 2)[1].body["Body"]
    assert "San Jose (SJO) → Miami (MIA)" in results and offers_shown(results)
    tomorrow = today() + timedelta(days=1)
    assert offers_shown(results) == search_server.first_page("SJO", "MIA", tomorrow)


def test_a_system_notice_is_not_answered(smart: Gateway) -> None:
    """Meta's system message (a user changed number: nothing the user wrote) got 'I can only
    read text messages'."""
    user = User(smart)
    user.post(
        type="system",
        system={
            "body": "User Test changed from 1 to 2",
            "wa_id": new_wa_id(),
            "type": "user_changed_number",
        },
    )
    # One user's messages are handled in order: the first reply after the notice is to "hi".
    reply = user.say("hi")
    assert reply.startswith("Hi Test! ✈️ I find flights."), reply


def test_a_reaction_or_pin_meta_passes_on_as_unsupported_is_not_answered(smart: Gateway) -> None:
    """Meta passes on some reactions, pins and poll votes as an `unsupported` message naming them
    (`unsupported.type`, documented in its unsupported messages webhook reference). Each got
    'I can only read text messages', as a poll the user created still does."""
    user = User(smart)
    unavailable = [{"code": 131051, "title": "Message type unknown"}]
    for acted in ("reaction", "pin", "keep_in_chat", "poll_update"):
        user.post(type="unsupported", unsupported={"type": acted}, errors=unavailable)
    # One user's messages are handled in order: the first reply after them is to "hi".
    reply = user.say("hi")
    assert reply.startswith("Hi Test! ✈️ I find flights."), reply
    user.post(type="unsupported", unsupported={"type": "poll_creation"}, errors=unavailable)
    assert "I can only read text messages" in user.replies()[0]["text"]


def test_a_deleted_or_edited_message_is_not_answered(smart: Gateway) -> None:
    """Meta's `revoke` (the user deleted a message they sent) and `edit` (they edited one)
    messages, documented for numbers also on the WhatsApp Business app: nothing new the user
    wrote to be answered. Each got 'I can only read text messages'."""
    user = User(smart)
    earlier = meta_wamid(user.wa_id)
    user.post(type="revoke", revoke={"original_message_id": earlier})
    edited = {"type": "text", "text": {"body": "NYC to London"}}
    user.post(type="edit", edit={"original_message_id": earlier, "message": edited})
    # One user's messages are handled in order: the first reply after them is to "hi".
    reply = user.say("hi")
    assert reply.startswith("Hi Test! ✈️ I find flights."), reply


def test_a_welcome_request_is_greeted(smart: Gateway) -> None:
    """request_welcome, sent when a user opens the chat for the first time, got 'I can only
    read text messages' before the user had written anything."""
    user = User(smart)
    user.post(type="request_welcome")
    (greeting,) = user.replies()
    assert greeting["text"].startswith("Hi Test! ✈️ I find flights."), greeting["text"]


def test_one_request_id_follows_each_message_through_every_process(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """Every line of one message's trip carries the request id its webhook came with, passed on
    in gRPC metadata: web and worker as separate processes, a new business (its lookup misses
    every cache) and complete requests (search is called), one per channel. An id that is not
    a sane one (spaces, too long) is replaced, and logged nowhere."""
    gateway = run_gateway(
        services, search_server, fake_clouds, valkey, "bot-trip", role="web", workers=1
    )
    try:
        business = gateway.business
        cloud_rid, twilio_rid = f"trip-cloud-{time.time_ns()}", f"trip-twilio-{time.time_ns()}"
        bad_rid = "not sane " + "x" * 100
        wa_id, sender = new_wa_id(), "+" + new_wa_id()
        with gateway.http as client:
            body = cloud_payload(business.phone_number_id, wa_id, "NYC to London next Friday")
            content, headers = signed_cloud(body)
            accepted = client.post(
                "/webhooks/whatsapp",
                content=content,
                headers={**headers, "x-request-id": cloud_rid},
            )
            assert accepted.headers["x-request-id"] == cloud_rid
            form = twilio_form(business.number, sender, "Paris to Rome next Monday")
            content, headers = signed_twilio(f"{gateway.url}/webhooks/twilio", form)
            accepted = client.post(
                "/webhooks/twilio", content=content, headers={**headers, "x-request-id": twilio_rid}
            )
            assert accepted.headers["x-request-id"] == twilio_rid
            body = cloud_payload(business.phone_number_id, new_wa_id(), "hello")
            content, headers = signed_cloud(body)
            replaced = client.post(
                "/webhooks/whatsapp", content=content, headers={**headers, "x-request-id": bad_rid}
            ).headers["x-request-id"]
        assert len(replaced) == 32 and int(replaced, 16) >= 0

        web, worker = gateway.processes
        processes = {
            "web": web,
            "worker": worker,
            **{p.log_path.stem: p for p in services.processes},  # session, business (search)
            "search": search_server.process,  # this package's search, the one the gateway calls
        }
        expected = {
            cloud_rid: {
                ("web", "webhook accepted"),
                ("worker", "message handled"),
                ("business", "LookupBusiness"),
                ("session", "GetConversation"),
                ("session", "UpdateConversation"),
                ("search", "SearchFlights"),
            },
            twilio_rid: {
                ("web", "webhook accepted"),
                ("worker", "message handled"),
                ("session", "GetConversation"),
                ("session", "UpdateConversation"),
                ("search", "SearchFlights"),
            },
        }

        def seen() -> dict[str, set[tuple[str, str]]]:
            found: dict[str, set[tuple[str, str]]] = {rid: set() for rid in expected}
            for name, process in processes.items():
                for line in process.log_events():
                    if line.get("request_id") in found:
                        found[line["request_id"]].add((name, line.get("rpc") or line["event"]))
            return found

        def complete() -> bool:
            return all(seen()[rid] >= lines for rid, lines in expected.items())

        assert wait_for(complete, 30), seen()
        # The worker's lines about each message carry its id, whatever else they say.
        for line in worker.log_events():
            if line.get("user") in (mask_phone(wa_id), mask_phone(sender)):
                assert line.get("request_id") in (cloud_rid, twilio_rid), line
        assert not [name for name, process in processes.items() if "not sane" in process.log]
    finally:
        gateway.stop()


def test_a_spanish_business_through_the_gateway(smart: Gateway) -> None:
    """A business whose locale is es-MX: its users are answered in Spanish end to end, and
    what they write the Spanish way is understood (route with a hyphen, 'el sábado 5'-style
    dates, 'siguiente', 'la opción 2')."""
    user = User(smart)
    user.business = create_business(smart, locale="es-MX", timezone="America/Mexico_City")
    assert "Busco vuelos" in user.say("buen día")
    today = datetime.now(ZoneInfo("America/Mexico_City")).date()
    first = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    month = SPANISH_MONTHS[first.month - 1]
    weekday = Texts("es").words("weekdays")[first.weekday()]
    reply = user.say(f"CDMX-Cancún el 1º de {month}, 2 adultos")
    assert f"Ciudad de México (MEX) → Cancún (CUN)* · {weekday} 1 {month[:3]} · 2 adultos" in reply
    assert offers_shown(reply) == 3 and "Tarifas de demostración" in reply
    assert "*más* para ver más" in reply
    assert "*4.*" in user.say("siguiente")
    assert user.say("la opción 2").startswith("*Oferta 2*")
    assert "Cancelado" in user.say("borrar")


def test_the_rate_limit_notice_is_in_the_business_s_language(
    services: Services, search_server: SearchServer, fake_clouds: FakeClouds, valkey: Valkey
) -> None:
    """(Was a bug: the one notice a user over their rate limit gets came from the worker in
    English, so a Spanish business's users, answered in Spanish until then, were told *You are
    sending messages faster than we can answer* on either channel.)"""
    gateway = run_gateway(
        services, search_server, fake_clouds, valkey, "bot-limited", RATE_LIMIT_USER="2/minute"
    )
    try:
        for locale, notice in (
            ("es-MX", Texts("es")("rate_notice")),
            ("en", "You are sending messages faster than we can answer. Please wait a minute."),
        ):
            user = User(gateway)
            user.business = create_business(gateway, locale=locale)
            for _ in range(3):
                user.post("ayuda")
            texts = [m["text"] for m in user.replies(3)]
            assert texts[2] == notice, texts
    finally:
        gateway.stop()
