"""Extractors: the rules, and the optional language-model path in front of them.

With ``OPENAI_API_KEY`` set, each message first goes to an OpenAI-compatible chat-completions
endpoint (``OPENAI_BASE_URL``, ``OPENAI_MODEL``) asking for strict JSON under a short deadline;
the answer is validated with pydantic. A timeout, an HTTP or network error, an answer that is
not valid, or an open breaker falls back to the rules for that message, invisibly to the user.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from services.common.redact import mask_url
from services.gateway import metrics
from services.gateway.bot.extract import Extraction, extract
from services.gateway.bot.settings import BotSettings
from services.gateway.engine import time_left

log = structlog.get_logger()


class Extractor(Protocol):
    async def extract(self, text: str, today: date, locale: str) -> Extraction: ...

    def describe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


# Users repeat the same short messages ("NYC to London tomorrow", "yes", "2 adults"), and the
# rules are a pure function of (text, today, locale): short texts are memoized.
MEMO_MAX_TEXT = 200
_memo_extract = functools.lru_cache(maxsize=4096)(extract)


class RulesExtractor:
    async def extract(self, text: str, today: date, locale: str) -> Extraction:
        if len(text) > MEMO_MAX_TEXT:
            return extract(text, today, locale)
        found = _memo_extract(text, today, locale)
        return replace(found, places=list(found.places))  # the caller's own copy

    def describe(self) -> dict[str, Any]:
        return {"enabled": False}

    async def aclose(self) -> None:
        return None


class LLMAnswer(BaseModel):
    """The JSON the model must return; anything else is rejected."""

    model_config = ConfigDict(extra="forbid")

    origin: str | None = Field(max_length=100)
    destination: str | None = Field(max_length=100)
    place: str | None = Field(max_length=100)
    departure_date: date | None
    return_date: date | None
    nights: int | None = Field(ge=1, le=365)
    adults: int | None = Field(ge=1, le=9)
    cabin: Literal["economy", "premium_economy", "business", "first"] | None
    non_stop: bool | None
    one_way: bool | None

    @field_validator("origin", "destination", "place")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": list(LLMAnswer.model_fields),
    "properties": {
        "origin": _nullable("string"),
        "destination": _nullable("string"),
        "place": _nullable("string"),
        "departure_date": _nullable("string"),
        "return_date": _nullable("string"),
        "nights": _nullable("integer"),
        "adults": _nullable("integer"),
        "cabin": {"enum": ["economy", "premium_economy", "business", "first", None]},
        "non_stop": _nullable("boolean"),
        "one_way": _nullable("boolean"),
    },
}

PROMPT = (
    "You extract flight-search details from one WhatsApp message. Today is {today} ({weekday}). "
    "Answer with JSON only, following the schema. Use null for anything the message does not "
    "say. origin/destination: the place text as the user wrote it (city, airport or code), "
    "only when the message says which is which (from/to); a place whose role is unclear goes in "
    "'place'. Dates as YYYY-MM-DD, never in the past (prefer the future for dates without a "
    "year); null when the message names a stretch of days rather than one day (a month, a "
    "season, a week, the holidays). nights: length of stay when given instead of a return "
    "date. adults: number of travellers. non_stop: true for direct/non-stop. one_way: true "
    "when the user says one way."
)


class Breaker:
    """Opens after ``threshold`` failures in a row, or at once for as long as the endpoint's
    ``Retry-After`` says; lets one call through after ``cooldown`` (or that)."""

    def __init__(self, threshold: int = 3, cooldown: float = 30.0) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.hold = cooldown  # how long this opening lasts
        self.probing = False  # the one call let through when half open is running

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.hold else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self.probing:
            # Half open with its trial call running: the messages arriving meanwhile would each
            # wait out the deadline of a model that may still be down.
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self, retry_after: float | None = None) -> None:
        self.failures += 1
        self.probing = False
        if retry_after:
            self.opened_at, self.hold = time.monotonic(), min(retry_after, MAX_RETRY_AFTER)
        elif self.failures >= self.threshold:
            self.opened_at, self.hold = time.monotonic(), self.cooldown

    def done(self) -> None:
        """The call let through has ended, with a verdict or without one (cancelled): the next
        may try."""
        self.probing = False


# What the rules read about dates, beyond a day: the flags that say how it was written.
_DATE_FIELDS = (
    "depart",
    "return_date",
    "period",
    "no_such_date",
    "no_such_return",
    "depart_day_only",
    "depart_weekday",
    "return_weekday",
    "return_day_only",
    "shift_days",
    "return_shift_days",
    "unreadable_date",
    "either",
    "either_return",
)


def with_rules(model: Extraction, rules: Extraction) -> Extraction:
    """The model's reading, with the rules' where its schema cannot say what the rules read.

    Dates: the schema has room for a day only, so the model would turn "this summer" into a day
    of its choosing and "29 February 2027" into a neighbouring one, and cannot say that "the
    28th" answers "Which day at the end of December?". The rules know the calendar (periods,
    holidays, days that do not exist, the business's hemisphere): when they read a date, theirs
    stands and the user is asked what the rules would ask; the model's dates fill in when they
    read none. Travellers: the schema has adults only, up to 9, so a party with children or
    infants, or over 9 ("12 adults"), is the rules' reading, not a total of the model's.
    """
    if rules.too_many:
        model = replace(model, adults=None, too_many=rules.too_many)
    if rules.children or rules.infants or rules.some_children or rules.offspring:
        model = replace(
            model,
            adults=rules.adults,
            children=rules.children,
            infants=rules.infants,
            some_children=rules.some_children,
            offspring=rules.offspring,
        )
    if not (
        rules.depart
        or rules.return_date
        or rules.period
        or rules.no_such_date
        or rules.shift_days
        or rules.return_shift_days
        or rules.either
    ):
        return replace(model, unreadable_date=rules.unreadable_date)
    return replace(model, **{name: getattr(rules, name) for name in _DATE_FIELDS})


def _outcome(error: BaseException) -> str:
    """The ``gateway_llm_calls_total`` outcome of a failed call."""
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        if status == 429:
            return "rate_limited"
        if status in (401, 403):
            return "refused"
        return "server_error" if status >= 500 else "client_error"
    return "network" if isinstance(error, httpx.HTTPError) else "invalid"


def _passing(error: BaseException) -> bool:
    """Worth one more try inside the deadline: a 5xx that says nothing of when to come back
    (with Retry-After the breaker waits instead), or a connection that never carried the
    request (nothing was asked, so nothing is billed twice)."""
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        return response.status_code in (500, 502, 503, 504) and not _retry_after(error)
    return isinstance(error, httpx.ConnectError)


# A Retry-After longer than this (a misconfigured proxy, a date far ahead) is not believed.
MAX_RETRY_AFTER = 600.0


def _retry_after(error: BaseException) -> float | None:
    """Seconds until the endpoint takes calls again, when its answer (a 429, a 503) says so:
    ``Retry-After`` in seconds or as an HTTP date, or OpenAI's ``retry-after-ms``."""
    if not isinstance(error, httpx.HTTPStatusError):
        return None
    headers = error.response.headers
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif "retry-after" in headers:
            value = headers["retry-after"].strip()
            if value.isdigit():
                seconds = float(value)
            else:
                seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        else:
            return None
    except (ValueError, TypeError, OverflowError):
        return None  # unreadable: the usual count of failures decides
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _count_tokens(payload: Any) -> None:
    """The answer's ``usage``, when it reports one (it is billed whether or not it is valid)."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return
    for kind in ("prompt", "completion"):
        tokens = usage.get(f"{kind}_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 < tokens < 1_000_000:
            metrics.LLM_TOKENS.labels(kind).inc(tokens)


# An answer of max_tokens (4096 at most) is a few KiB of JSON with its envelope; a body past this
# is a broken or hostile endpoint's, not read into memory.
MAX_ANSWER_BYTES = 256 * 1024


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body, decoded, or a ValueError (counted ``invalid``) once it passes ``limit`` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ValueError(f"answer of {declared} bytes, over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class LLMExtractor:
    def __init__(self, settings: BotSettings, client: httpx.AsyncClient | None = None) -> None:
        assert settings.openai_api_key is not None
        self._settings = settings
        self._url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self._client = client or httpx.AsyncClient(
            headers={"Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"},
        )
        self._rules = RulesExtractor()
        self.breaker = Breaker()
        self.fallbacks = 0

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": True,
            # As /health/info shows it (a URL with credentials is refused at start-up).
            "base_url": mask_url(self._settings.openai_base_url),
            "model": self._settings.openai_model,
            "timeout_seconds": self._settings.openai_timeout_seconds,
            "max_tokens": self._settings.openai_max_tokens,
            "breaker": self.breaker.state,
            "fallbacks": self.fallbacks,
        }

    async def aclose(self) -> None:
        await self._client.aclose()

    async def extract(self, text: str, today: date, locale: str) -> Extraction:
        rules = await self._rules.extract(text, today, locale)  # memoized: ~free
        if rules.more_trips:
            # Two trips in one message: the model would read both as one; the rules know where
            # the first ends, and the user is told to send the next.
            return rules
        # The model only reads the message better than the rules do; the search it leads to is
        # what the user asked for, so it keeps its own deadline within the message's.
        own = self._settings.openai_timeout_seconds
        budget = time_left(own, after=self._settings.bot_search_timeout_seconds)
        if budget <= 0:
            metrics.LLM_CALLS.labels("no_time").inc()
            self.fallbacks += 1
        elif self.breaker.allow():
            started = time.perf_counter()
            try:
                answer = await self._ask(text, today, budget)
            except (
                TimeoutError,
                httpx.HTTPError,
                ValueError,
                KeyError,
                IndexError,
                TypeError,
                RecursionError,
            ) as error:
                # ValidationError and JSONDecodeError are ValueErrors; JSON nested deeper than
                # the parser's recursion limit ("[[[[…") is a RecursionError.
                metrics.LLM_CALL_SECONDS.observe(time.perf_counter() - started)
                metrics.LLM_CALLS.labels(_outcome(error)).inc()
                if not (isinstance(error, TimeoutError) and budget < own):
                    # Cut short by the message's deadline, not its own: no verdict on the model.
                    self.breaker.failure(_retry_after(error))
                self.fallbacks += 1
                log.warning("llm_fallback", reason=type(error).__name__, outcome=_outcome(error))
            else:
                metrics.LLM_CALL_SECONDS.observe(time.perf_counter() - started)
                self.breaker.success()
                result = self._to_extraction(answer, today)
                if result is not None:
                    metrics.LLM_CALLS.labels("ok").inc()
                    return with_rules(result, rules)
                metrics.LLM_CALLS.labels("implausible").inc()
                self.fallbacks += 1
                log.warning("llm_fallback", reason="implausible_answer")
            finally:
                # Cancelled (the message's own deadline, shutdown) or an error not foreseen: no
                # verdict on the model, and a half-open breaker must not wait on it for ever.
                self.breaker.done()
        else:
            metrics.LLM_CALLS.labels("breaker_open").inc()
            self.fallbacks += 1
        return rules

    async def _ask(self, text: str, today: date, seconds: float) -> LLMAnswer:
        body = {
            "model": self._settings.openai_model,
            "temperature": 0,
            # A cap on what we pay for: strict JSON can still run on in whitespace or a place
            # name repeated, billed in full after our deadline has given up on it. An answer
            # cut there is not valid JSON, and the rules answer.
            "max_tokens": self._settings.openai_max_tokens,
            "messages": [
                {
                    "role": "system",
                    "content": PROMPT.format(today=today.isoformat(), weekday=today.strftime("%A")),
                },
                {"role": "user", "content": text[:1000]},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "flight_request", "strict": True, "schema": JSON_SCHEMA},
            },
        }
        # httpx's timeout bounds each connect, write and read, not the call: an answer trickling
        # in a few bytes at a time would hold the message (up to ENGINE_TIMEOUT_SECONDS, then a
        # retry that asks again). The call as a whole, its retry too, has the deadline.
        retrying = AsyncRetrying(
            retry=retry_if_exception(_passing),
            stop=stop_after_attempt(2),
            wait=wait_exponential_jitter(multiplier=0.1, max=0.5, jitter=0.1),
            reraise=True,
        )
        async with asyncio.timeout(seconds):
            async for attempt in retrying:
                with attempt:
                    request = self._client.build_request(
                        "POST", self._url, json=body, timeout=seconds
                    )
                    response = await self._client.send(request, stream=True)
                    try:
                        response.raise_for_status()
                        data = await _read_bounded(response, MAX_ANSWER_BYTES)
                    finally:
                        await response.aclose()
        payload = json.loads(data)
        _count_tokens(payload)
        content = payload["choices"][0]["message"]["content"]
        try:
            return LLMAnswer.model_validate(json.loads(content))
        except ValidationError as error:
            raise ValueError(f"invalid answer: {error.error_count()} errors") from None

    @staticmethod
    def _to_extraction(answer: LLMAnswer, today: date) -> Extraction | None:
        depart, back = answer.departure_date, answer.return_date
        if depart and not today <= depart <= today + timedelta(days=366):
            return None
        if back and (back < (depart or today)):
            return None
        return Extraction(
            origin=answer.origin,
            destination=answer.destination,
            places=[answer.place] if answer.place else [],
            depart=depart,
            return_date=back,
            nights=answer.nights,
            adults=answer.adults,
            cabin=answer.cabin,
            non_stop=answer.non_stop,
            one_way=answer.one_way,
        )
