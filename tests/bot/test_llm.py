"""The language-model path against a local fake of the chat-completions contract: a good answer
is used; garbage, a schema violation, an error or a timeout fall back to the rules for that
message, invisibly; repeated failures open the breaker and stop calling the endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from parley.search.v1 import search_pb2_grpc
from services.gateway.bot import create_engine
from services.gateway.bot.dialogue import BotEngine
from services.gateway.bot.llm import LLMExtractor
from services.gateway.bot.settings import BotSettings
from services.gateway.engine import SearchPort, message_deadline
from tests.bot.chat import Chat
from tests.bot.fake_openai import FakeOpenAI


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


def in_days(days: int) -> str:
    today = datetime.now(UTC).astimezone(ZoneInfo("America/New_York")).date()
    return (today + timedelta(days=days)).isoformat()


def llm_engine(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI, timeout: float = 0.5
) -> BotEngine:
    settings = BotSettings(
        use_smart_handler="true",
        use_async_search="false",
        openai_api_key=SecretStr("sk-test-key"),
        openai_base_url=fake.base_url,
        openai_model="test-model",
        openai_timeout_seconds=timeout,
    )
    return create_engine(cast(SearchPort, search_stub), settings)


def answer(**values: Any) -> dict[str, Any]:
    empty = dict.fromkeys(
        (
            "origin",
            "destination",
            "place",
            "departure_date",
            "return_date",
            "nights",
            "adults",
            "cabin",
            "non_stop",
            "one_way",
        )
    )
    return {**empty, **values}


async def test_a_good_answer_is_used(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # A generous deadline: on a loaded machine the answer must not be mistaken for a timeout.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8), adults=2)
    # Nothing the rules could read: only the model's answer can produce this search.
    reply = await Chat(engine).say("somewhere warm from bean town, me and the mrs, in 8 days")
    assert "Boston (BOS) → Miami (MIA)" in reply and "2 adults" in reply
    request = fake.requests[-1]
    assert request["model"] == "test-model"
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert request["messages"][-1]["content"].startswith("somewhere warm")
    assert fake.headers[-1]["Authorization"] == "Bearer sk-test-key"
    assert engine.describe()["llm"]["fallbacks"] == 0
    await engine.aclose()


@pytest.mark.parametrize("mode", ["garbage", "invalid", "error", "slow"])
async def test_failures_fall_back_to_the_rules_invisibly(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI, mode: str
) -> None:
    # A short deadline for the slow answer; room for the 500's one retry on a loaded machine.
    engine = llm_engine(search_stub, fake, timeout=0.5 if mode == "slow" else 3.0)
    fake.mode, fake.delay = mode, 3.0
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    started = time.monotonic()
    reply = await Chat(engine).say("NYC to London next Friday")
    elapsed = time.monotonic() - started
    # The rules' reading, as if the model had never been asked.
    assert "New York (NYC) → London (LON)" in reply and "Reply *1*\u2013*3*" in reply
    assert len(fake.requests) == (2 if mode == "error" else 1)  # a 500 is tried once more
    assert engine.describe()["llm"]["fallbacks"] == 1
    if mode == "slow":
        assert elapsed < 2.5, "the deadline (0.5 s) must cut the 3 s answer short"
    await engine.aclose()


async def test_a_model_call_ends_with_the_message_deadline(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # Its own deadline (OPENAI_TIMEOUT_SECONDS) further away than the message's: the call ran
    # past the message's, and the worker gave up on the whole message (EngineTimeout: retried,
    # then dead-lettered) instead of the rules answering it. The search after it keeps its own
    # deadline (BOT_SEARCH_TIMEOUT_SECONDS, 10 s) within the message's.
    engine = llm_engine(search_stub, fake, timeout=6.0)
    breaker = cast(LLMExtractor, engine._extractor).breaker
    fake.mode, fake.delay = "slow", 8.0
    for left, asked in ((12.0, 1), (1.5, 0)):  # the model then has 1.5 s, then none at all
        token = message_deadline.set(time.monotonic() + left)  # as the worker sets it
        try:
            async with asyncio.timeout(4.5):  # the model's own deadline is 6 s
                reply = await Chat(engine).say("NYC to London next Friday")
        finally:
            message_deadline.reset(token)
        assert "New York (NYC) → London (LON)" in reply and "Reply *1*\u2013*3*" in reply
        assert len(fake.requests) == asked
        fake.requests.clear()
    assert engine.describe()["llm"]["fallbacks"] == 2
    assert breaker.state == "closed" and breaker.failures == 0, (
        "cut short: the model's not at fault"
    )
    await engine.aclose()


async def test_repeated_failures_open_the_breaker(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    engine = llm_engine(search_stub, fake)
    fake.mode = "error"
    chat = Chat(engine)
    for _ in range(3):
        assert "Where are you flying from?" in await chat.say("to Rome")
    assert engine.describe()["llm"]["breaker"] == "open"
    calls = len(fake.requests)
    assert "Where are you flying from?" in await chat.say("to Rome")
    assert len(fake.requests) == calls, "an open breaker must not call the endpoint"
    await engine.aclose()


async def test_the_rules_dates_stand_where_the_model_can_only_guess_a_day(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # A model that ignores the prompt's "null for a stretch of days" and picks a day: the
    # places are its reading (the rules can't read "bean town"), the date is the rules' period.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(9))
    chat = Chat(engine)
    reply = await chat.say("from bean town to Miami at the end of next month")
    assert "Boston (BOS) → Miami (MIA)" in reply and "Which day at the end of" in reply, reply
    # "the 28th" answers the question in that month, not a day the model might guess.
    fake.answer = answer(departure_date=in_days(2))
    reply = await chat.say("the 28th")
    assert "Boston (BOS) → Miami (MIA)" in reply and "28" in reply, reply
    # A day that does not exist is said so, not moved to a neighbour by the model.
    fake.answer = answer(departure_date="2027-03-01")
    reply = await chat.say("Boston to Miami on 29 February 2027")
    assert "There's no 29 February in 2027" in reply, reply
    assert engine.describe()["llm"]["fallbacks"] == 0
    await engine.aclose()


async def test_the_model_dates_stand_where_the_rules_read_none(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(12))
    reply = await Chat(engine).say("bean town to Miami the day after my birthday")
    day = date.fromisoformat(in_days(12))
    assert f"Boston (BOS) → Miami (MIA)* · {day:%a} {day.day} {day:%b}" in reply, reply
    await engine.aclose()


async def test_a_count_over_the_limit_is_the_rules_even_when_the_model_answers(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # A model that squeezes "12 adults" into its schema's 1-9: 9 would be searched silently.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8), adults=9)
    reply = await Chat(engine).say("12 adults from bean town to Miami in 8 days")
    assert "Boston (BOS) → Miami (MIA)" in reply and "so not 12" in reply, reply
    assert "9 adults" not in reply and engine.describe()["llm"]["fallbacks"] == 0
    await engine.aclose()


async def test_children_are_the_rules_reading_even_when_the_model_answers(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # The model's schema has adults only: it may count the child among them, or drop it.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8), adults=3)
    reply = await Chat(engine).say("2 adults and a child from bean town to Miami in 8 days")
    assert "Boston (BOS) → Miami (MIA)" in reply and "· 2 adults, 1 child" in reply, reply
    await engine.aclose()


async def test_json_nested_past_the_parser_s_limit_falls_back_to_the_rules(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # json.loads raises RecursionError (not a ValueError) on it: the message failed, was retried
    # and dead-lettered, and the breaker never counted the failure.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.mode = "nested"
    reply = await Chat(engine).say("NYC to London next Friday")
    assert "New York (NYC) → London (LON)" in reply and "Reply *1*\u2013*3*" in reply, reply
    assert engine.describe()["llm"]["fallbacks"] == 1
    assert engine.describe()["llm"]["breaker"] == "closed"  # one failure of three
    await engine.aclose()


async def test_an_answer_trickling_in_is_cut_at_the_call_s_deadline(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # Every byte comes well within the deadline, the whole answer long after it: httpx's timeout
    # bounds each read, not the call, so the model's answer was awaited and used.
    engine = llm_engine(search_stub, fake, timeout=0.5)
    fake.mode, fake.delay = "trickle", 0.05
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    reply = await Chat(engine).say("NYC to London next Friday")
    assert "New York (NYC) → London (LON)" in reply and "Reply *1*\u2013*3*" in reply, reply
    assert engine.describe()["llm"]["fallbacks"] == 1
    await engine.aclose()


async def test_an_answer_over_the_size_limit_falls_back_to_the_rules(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # A broken or hostile endpoint's body was read whole, however large, into the gateway's
    # memory: megabytes past anything max_tokens lets a model write were parsed and used.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    invalid = llm_calls("invalid")
    fake.mode = "huge"
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    reply = await Chat(engine).say("NYC to London next Friday")
    assert "New York (NYC) → London (LON)" in reply and "Reply *1*\u2013*3*" in reply, reply
    assert engine.describe()["llm"]["fallbacks"] == 1
    assert llm_calls("invalid") - invalid == 1
    # A body without Content-Length that never ends is cut at the limit too, not at the
    # deadline (it was read until the deadline, the message waiting all that while).
    fake.mode = "endless"
    reply = await Chat(engine).say("NYC to London next Friday")
    assert "New York (NYC) → London (LON)" in reply, reply
    assert llm_calls("invalid") - invalid == 2
    await engine.aclose()


async def test_each_call_caps_the_tokens_the_model_may_write(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # Without a cap a model stuck in a loop (OpenAI warns that JSON output can run to the token
    # limit in whitespace) is billed for thousands of tokens, after our deadline has given up.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    await Chat(engine).say("bean town to Miami in 8 days")
    assert fake.requests[-1]["max_tokens"] == 300
    assert engine.describe()["llm"]["max_tokens"] == 300
    await engine.aclose()


def llm_calls(outcome: str) -> float:
    return REGISTRY.get_sample_value("gateway_llm_calls_total", {"outcome": outcome}) or 0.0


async def test_metrics_count_the_calls_by_outcome_their_latency_and_tokens(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # The fallbacks were a number in one process's /health/detailed: no rate, no alert, and no
    # telling a revoked key from a slow model or a model answering garbage.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    before = {o: llm_calls(o) for o in ("ok", "invalid", "server_error", "breaker_open")}
    seconds = REGISTRY.get_sample_value("gateway_llm_call_seconds_count") or 0.0
    tokens = REGISTRY.get_sample_value("gateway_llm_tokens_total", {"kind": "completion"}) or 0.0
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    chat = Chat(engine)
    await chat.say("bean town to Miami in 8 days")
    fake.mode = "garbage"
    await chat.say("new")
    await chat.say("NYC to London next Friday")
    fake.mode = "error"
    for _ in range(3):
        await chat.say("to Rome")
    await chat.say("to Paris")  # the breaker is open: no call
    assert llm_calls("ok") - before["ok"] == 1
    assert llm_calls("invalid") - before["invalid"] == 1
    # The garbage answer was the first failure in a row: the second 500 opens the breaker.
    assert llm_calls("server_error") - before["server_error"] == 2
    assert llm_calls("breaker_open") - before["breaker_open"] == 2
    assert (REGISTRY.get_sample_value("gateway_llm_call_seconds_count") or 0.0) - seconds == 4
    completion = REGISTRY.get_sample_value("gateway_llm_tokens_total", {"kind": "completion"})
    # The fake reports 1 completion token per answer; the garbage one is billed too.
    assert (completion or 0.0) - tokens == 2
    await engine.aclose()


def test_a_base_url_with_credentials_is_refused_without_quoting_them() -> None:
    # A proxy's user:password in the URL: httpx sent them as Basic auth in place of the
    # Authorization header, so the key was never sent and every call was refused, silently
    # falling back to the rules. (/health/detailed showed the password whole before that.)
    with pytest.raises(ValidationError) as refused:
        BotSettings(
            openai_api_key=SecretStr("sk-test-key"),
            openai_base_url="http://parley:proxy-pw-1@127.0.0.1:8080/v1",
        )
    said = refused.value.errors()[0]["msg"]  # what start-up prints after the variable's name
    assert "must not hold a user name or password" in said and "proxy-pw-1" not in said


async def test_a_half_open_breaker_lets_one_call_through_not_every_message(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # After the cooldown every message arriving while the trial call ran was let through too: a
    # model still down held each of them for the whole deadline, every 30 s.
    engine = llm_engine(search_stub, fake, timeout=1.0)
    breaker = cast(LLMExtractor, engine._extractor).breaker
    fake.mode = "error"
    for _ in range(3):
        await Chat(engine).say("to Rome")
    assert breaker.state == "open"
    breaker.opened_at = time.monotonic() - breaker.cooldown  # the cooldown is over
    fake.mode, fake.delay = "slow", 3.0
    calls = len(fake.requests)
    users = [Chat(engine, user_id=f"155500001{n:02}") for n in range(5)]
    replies = await asyncio.gather(*(user.say("to Rome") for user in users))
    assert all("Where are you flying from?" in reply for reply in replies), replies
    assert len(fake.requests) == calls + 1, "one trial call, the other messages the rules'"
    assert breaker.state == "open", "the trial failed: open again"
    # A trial cut short by the message's own deadline (the worker's ENGINE_TIMEOUT_SECONDS)
    # says nothing of the model: the next message tries, rather than none ever again.
    breaker.opened_at = time.monotonic() - breaker.cooldown
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await Chat(engine).say("to Rome")
    fake.mode = "good"
    fake.answer = answer(destination="Rome")
    calls = len(fake.requests)
    assert "Where are you flying from?" in await Chat(engine).say("to Rome")
    assert len(fake.requests) == calls + 1 and breaker.state == "closed"
    await engine.aclose()


async def test_a_429_s_retry_after_holds_the_calls_until_then(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # The endpoint says when it will take calls again; each message asked it anyway (a wasted
    # round trip on the message's time, counted against the key's limit), and the breaker's
    # 30 s, after three, ignored the 120 s it was told.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    breaker = cast(LLMExtractor, engine._extractor).breaker
    fake.mode, fake.retry_after = "rate_limited", "120"
    assert "Where are you flying from?" in await Chat(engine).say("to Rome")
    assert breaker.state == "open" and len(fake.requests) == 1
    assert "Where are you flying from?" in await Chat(engine).say("to Paris")
    assert len(fake.requests) == 1, "no call before the Retry-After"
    breaker.opened_at = time.monotonic() - 119  # past the usual 30 s, not yet the 120 s
    assert breaker.state == "open"
    breaker.opened_at = time.monotonic() - 120
    fake.mode = "good"
    fake.answer = answer(destination="Rome")
    await Chat(engine).say("to Rome")
    assert len(fake.requests) == 2 and breaker.state == "closed"
    await engine.aclose()


async def test_a_passing_server_error_is_retried_within_the_deadline(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # One 500 (OpenAI's own advice: retry) cost the message the model's reading and counted
    # towards opening the breaker, though the deadline had room for another try.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.fail_first = 1
    fake.answer = answer(origin="Boston", destination="Miami", departure_date=in_days(8))
    reply = await Chat(engine).say("bean town to Miami in 8 days")
    assert "Boston (BOS) → Miami (MIA)" in reply, reply
    assert len(fake.requests) == 2 and engine.describe()["llm"]["fallbacks"] == 0
    await engine.aclose()


async def test_the_model_is_sent_the_message_and_the_date_only(
    search_stub: search_pb2_grpc.SearchServiceStub, fake: FakeOpenAI
) -> None:
    # What docs/engine.md says leaves for the model's provider: no number, name, business or
    # history, one call per message.
    engine = llm_engine(search_stub, fake, timeout=3.0)
    fake.answer = answer(destination="Rome")
    chat = Chat(engine, user_id="15557654321")
    await chat.say("hi")
    await chat.say("to Rome")
    await chat.say("from Boston " + "x" * 2000)
    sent = json.dumps(fake.requests)
    for private in ("15557654321", "7654321", "Ada", "Lovelace", "b-test", "Test Travel"):
        assert private not in sent, private
    assert {frozenset(r) for r in fake.requests} == {
        frozenset({"model", "temperature", "max_tokens", "messages", "response_format"})
    }
    # "hi" is a greeting, answered without the model.
    assert [[m["role"] for m in r["messages"]] for r in fake.requests] == [["system", "user"]] * 2
    said = [r["messages"][1]["content"][:12] for r in fake.requests]
    assert said == ["to Rome", "from Boston "]
    assert len(fake.requests[-1]["messages"][1]["content"]) == 1000
    await engine.aclose()
