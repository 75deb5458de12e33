"""The conversation engine: one turn in, replies and state changes out.

State (JSON, in the session service, so it survives restarts and moves between workers):

- ``trip``: the slots: ``origin`` / ``destination`` (``{"code", "name", "city", "country",
  "kind"}``, and ``"subdivision"`` where known), ``depart`` / ``return`` (ISO dates),
  ``nights``, ``adults``, ``children``, ``infants``, ``cabin``, ``non_stop``; ``round_trip``
  once the user said so (the return is asked until given); ``period`` (``{"kind", "month",
  "year", "week"}``) while the user has named a stretch of days ("end of the month") and not
  yet the day; ``too_many`` (a count over 9) while the user has asked for more travellers
  than one search takes and not yet said how many to search; ``some_children`` while the user
  has said children come ("with the kids") and not yet how many; ``either`` (``{"leg":
  "depart"|"return", "days": [two ISO dates]}``) while the user has named two days ("Friday or
  Saturday") and not yet chosen one; ``offspring`` (a count) while the user has said sons or
  daughters come ("con mis 2 hijos") and not yet how many of them are under 12.
- ``ask``: what the last reply asked for: ``{"slot": "origin"|"destination"|"date"|"return"|
  "travellers"|"adults"|"children"|"offspring"}`` (``adults`` while there are more lap infants than
  adults), with
  ``"choices"`` (places) when it asked the user to pick one.
- ``results``: the last search's offers in compact form, how many were shown and ``party``
  (``{"adults", "children", "infants"}``, who they were priced for). The offers
  are stored as one JSON string, not a nested object: Python's protobuf builds and reads
  ``Struct`` values in Python, and nine nested offers cost ~0.4 ms at each of the four
  conversions a turn makes (gateway and session, both ways). A list (older state) still loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import grpc
import orjson
import regex
import structlog

from parley.search.v1 import search_pb2
from services.common.errors import field_violations
from services.gateway import metrics
from services.gateway.bot import offers as fmt
from services.gateway.bot.extract import (
    MAX_DAYS_AHEAD,
    MAX_TRAVELLERS,
    NUMBER_WORDS,
    SEASONS,
    STATE_EDGE_WORDS,
    Extraction,
    NoSuchDate,
    Period,
    as_written,
    day_after,
    extract,
    normalize,
    number,
    weekday_after,
)
from services.gateway.bot.llm import Extractor
from services.gateway.bot.messages import Texts
from services.gateway.bot.places import (
    PHRASE_LIMIT,
    Candidate,
    PlaceResolver,
    decide,
    same_city,
    split_phrase,
)
from services.gateway.bot.recent_searches import RecentSearches
from services.gateway.bot.settings import BotSettings
from services.gateway.bot.switches import Switch
from services.gateway.engine import (
    ListRow,
    Reply,
    SearchPort,
    Turn,
    TurnResult,
    is_notice,
    time_left,
)

log = structlog.get_logger()

STATE_KEYS = ("trip", "ask", "results")
# What comes before a state or country answering a place list: "the one in Missouri", "la de
# Argentina", "en España".
REGION_ANSWER = re.compile(
    r"^(?:(?:the )?one (?:in|from) |(?:the )?(?:in|from) |(?:el|la) (?:de|en|que esta en) |"
    r"(?:en|de) )"
)
# WhatsApp's limits for a list row (characters); Twilio's numbered lines show the same rows.
ROW_TITLE_LIMIT, ROW_DESCRIPTION_LIMIT = 24, 72
STRICT_SCORE = 85.0  # a place written alone, unasked, must resolve at least this well
ONE_NAME_SCORE = 85.0  # "X de Y" read as one name resolves at least this well (see _apply)
# Older message timestamps are not trusted (providers retry for a day or so).
MAX_MESSAGE_AGE = timedelta(days=7)
CABIN_CODES = {
    "economy": search_pb2.CABIN_ECONOMY,
    "premium_economy": search_pb2.CABIN_PREMIUM_ECONOMY,
    "business": search_pb2.CABIN_BUSINESS,
    "first": search_pb2.CABIN_FIRST,
}
# The slots a request need not say (their defaults: one way, 1 adult, economy, any stops),
# cleared when a message says a whole new trip.
REQUEST_DEFAULTS = (
    "return",
    "nights",
    "round_trip",
    "period",
    "adults",
    "children",
    "infants",
    "too_many",
    "some_children",
    "offspring",
    "either",
    "cabin",
    "non_stop",
)
# Status codes that mean "search can't answer now" rather than "the request was wrong".
UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}

EMOJI_VARIANTS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0e\ufe0f]")
GREETINGS = {
    "👋",
    "hi",
    "hello",
    "hey",
    "hiya",
    "yo",
    "good morning",
    "good afternoon",
    "good evening",
    "hola",
    "buenas",
    "buenos dias",
    "buenas tardes",
    "buenas noches",
    "shalom",
    "start",
    "buen dia",
    "saludos",
    "que tal",
    "empezar",
    "comenzar",
}
COMMANDS = {
    "help": "help",
    "ayuda": "help",
    "menu": "help",
    "?": "help",
    "new": "new",
    "reset": "new",
    "restart": "new",
    "start over": "new",
    "start again": "new",
    "start over again": "new",
    "new trip": "new",
    "new search": "new",
    "nuevo": "new",
    "nueva": "new",
    "nueva busqueda": "new",
    "empezar de nuevo": "new",
    "volver a empezar": "new",
    "otra busqueda": "new",
    "reiniciar": "new",
    "cancel": "cancel",
    "cancel that": "cancel",
    "cancel it": "cancel",
    "never mind": "cancel",
    "nevermind": "cancel",
    "forget it": "cancel",
    "stop": "cancel",
    "cancelar": "cancel",
    "borrar": "cancel",
    "salir": "cancel",
    "thanks": "thanks",
    "thank you": "thanks",
    "thank you very much": "thanks",
    "thx": "thanks",
    "ty": "thanks",
    "cheers": "thanks",
    "gracias": "thanks",
    "muchas gracias": "thanks",
    "more": "more",
    "mas": "more",
    "show more": "more",
    "ver mas": "more",
    "siguiente": "more",
    "siguientes": "more",
    "mas opciones": "more",
    "next": "more",
    "ok": "ack",
    "okay": "ack",
    "great": "ack",
    "cool": "ack",
    "perfect": "ack",
    "nice": "ack",
    "sure": "ack",
    "yes": "ack",
    "👍": "ack",
    "👌": "ack",
    "🙏": "thanks",
    "vale": "ack",
    "genial": "ack",
    "perfecto": "ack",
    "si": "ack",
    "swap": "swap",
    "swap them": "swap",
    "swap it": "swap",
    "reverse": "swap",
    "reverse it": "swap",
    "the reverse": "swap",
    "vice versa": "swap",
    "other way": "swap",
    "the other way": "swap",
    "other way round": "swap",
    "the other way round": "swap",
    "other way around": "swap",
    "the other way around": "swap",
    "other direction": "swap",
    "the other direction": "swap",
    "al reves": "swap",
    "retry": "retry",
    "try again": "retry",
    "reintentar": "retry",
    "otra vez": "retry",
}


@dataclass
class Dialogue:
    """The state of one conversation while a turn is handled."""

    trip: dict[str, Any]
    ask: dict[str, Any]
    results: dict[str, Any]
    changed: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, state: dict[str, Any]) -> Dialogue:
        def part(key: str) -> dict[str, Any]:
            value = state.get(key)
            return dict(value) if isinstance(value, dict) else {}

        results = part("results")
        if isinstance(results.get("offers"), str):
            results["offers"] = _unpacked_offers(results["offers"])
        return cls(_valid_trip(part("trip")), part("ask"), results)

    def set(self, key: str, value: dict[str, Any]) -> None:
        setattr(self, key, value)
        self.changed.add(key)

    def update_trip(self, **values: Any) -> None:
        self.set("trip", {**self.trip, **values})

    def result(self, replies: list[Reply]) -> TurnResult:
        outcome = TurnResult(replies=replies)
        for key in sorted(self.changed):
            value = getattr(self, key)
            if value:
                outcome.set_state[key] = _packed(key, value)
            else:
                outcome.remove_state.append(key)
        return outcome


def _packed(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """The value as stored: the results' offers as one JSON string (see the module's doc)."""
    if key == "results" and isinstance(value.get("offers"), list):
        return {**value, "offers": orjson.dumps(value["offers"]).decode()}
    return value


def _unpacked_offers(text: str) -> list[Any]:
    try:
        offers = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    return offers if isinstance(offers, list) else []


POLITE = re.compile(r"^(?:please|pls|plz|por favor) | (?:please|pls|plz|por favor)$")

# A choice by its number: "2", "la 2", "la opción 2", "option 2" ("el 2" stays a date), the
# number in words too ("four", answering "How many travellers?"; "option two", "dos"), but
# not the articles "a" and "un".
_WORD_NUMBERS = "|".join(
    sorted((w for w in NUMBER_WORDS if w not in ("a", "an", "un", "una")), key=len, reverse=True)
)
# With the words around a choice ("I'll take number 2", "details of 3", "details 3", "quiero la
# 2"), or as an ordinal that says it is one ("the second one", "2nd option", "la segunda"; "the
# second" alone, like "the 5", may be a day).
_CHOOSING = (
    r"(?:(?:i'?ll take|i will take|i'?d like|i want|i choose|i pick|take|give me|show me|"
    r"details?(?: (?:of|for|on|about))?|more (?:on|about)|info(?: (?:on|about))?|tell me about|"
    r"quiero|me quedo con|dame|muestrame|ver|detalles?(?: de)?) )?"
)
CHOICE = re.compile(
    _CHOOSING + rf"(?:(?:la|opcion|option|oferta|offer|numero|number|no|#) ?)*(\d+|{_WORD_NUMBERS})"
    r"(?: (?:one|please|pls|por favor))?"
)
ORDINAL_CHOICE = re.compile(
    _CHOOSING
    + r"(?:(?:the|la) )?(?P<nth>first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|"
    r"1st|2nd|3rd|[4-9]th|primera|segunda|tercera|cuarta|quinta|sexta|septima|octava|novena)"
    r"(?P<noun> (?:one|option|offer|flight|fare|opcion|oferta))?(?: (?:please|pls|por favor))?"
)
_ORDINAL_NUMBERS = {
    word: n
    for n, words in enumerate(
        (
            ("first", "1st", "primera"),
            ("second", "2nd", "segunda"),
            ("third", "3rd", "tercera"),
            ("fourth", "4th", "cuarta"),
            ("fifth", "5th", "quinta"),
            ("sixth", "6th", "sexta"),
            ("seventh", "7th", "septima"),
            ("eighth", "8th", "octava"),
            ("ninth", "9th", "novena"),
        ),
        start=1,
    )
    for word in words
}


def _chosen(plain: str) -> int | None:
    """The number of a choice the message makes, if it makes one."""
    nth = ORDINAL_CHOICE.fullmatch(plain)
    if nth and (nth["noun"] or not nth["nth"].isascii() or nth["nth"][-1] == "a"):
        return _ORDINAL_NUMBERS[nth["nth"]]  # "the second one", "la segunda"
    chosen = CHOICE.fullmatch(plain)
    value = chosen.group(1) if chosen else ""
    # \d is decimal digits only (int() refuses "²"); and a menu choice is a few digits,
    # while int() refuses more than 4300 (any longer number is just not understood).
    return number(value) if value and not (value.isdecimal() and len(value) > 4) else None


# The leg whose day a question asks for: "date" the departure's, "return" the return's.
SLOT_LEG = {"date": "depart", "return": "return"}

# "none", answering "How many children are travelling?".
NO_CHILDREN = re.compile(
    r"(?:(?:no|nope) )?(?:none|zero|cero|no|nope|nah|ninguno|ninguna|nadie|no (?:kids|children)|"
    r"ningun (?:niño|nino)|sin (?:niños|ninos|hijos)|no hay (?:niños|ninos))"
)

# "all of them", answering "How many of your 2 children are under 12?".
ALL_OFFSPRING = re.compile(
    r"(?:yes|yeah|yep|si|all|both|todos|todas|los dos|las dos|ambos|ambas)"
    r"(?: (?:of them|de ellos|de ellas|are|son))?(?: (?:under 12|menores(?: de 12)?))?"
)

# "either", answering "Which day do you want to leave, Fri 27 Nov or Sat 28 Nov?".
ANY_DAY = re.compile(
    r"(?:either|either one|either day|any|anyone|any day|whichever|whichever one|"
    r"whichever is cheaper|whatever|whatever is cheaper|(?:it )?(?:doesn'?t|does not) matter|"
    r"(?:i )?(?:don'?t|do not) (?:care|mind)|no preference|both|both are (?:fine|ok)|"
    r"cualquiera|cualquier dia|me da igual|da igual|el que sea|el mas barato|"
    r"el que sea mas barato|los dos|ambos)(?: (?:is|are) (?:fine|ok|good))?"
)

# Asking about price once offers are shown: "the cheapest" is offer 1 (they are sorted cheapest
# first); "anything cheaper?" is answered with what could cost less. Never a place ("mas" is
# Momote's code, MAS).
CHEAPEST = re.compile(
    r"(?:the |el |la |lo )?(?:very )?cheapest(?: one| option| offer| flight| fare)?"
    r"|(?:el|la|lo)(?: (?:opcion|vuelo|oferta))? mas barat[oa]"
)
CHEAPER = re.compile(
    r"(?:(?:is there|are there|got|have you got|do you have|any|anything|something|nothing|"
    r"hay|tienes|algo|alguno|algun|alguna|nada|no) )*"
    r"(?:cheaper|less expensive|more affordable|mas barat[oa]s?|mas economic[oa]s?)"
    r"(?: (?:ones?|options?|flights?|fares?|deals?|prices?|opciones|vuelos|tarifas))?"
    r"(?: (?:than (?:that|this|these|those)|que (?:eso|esto|estos|esos|estas|esas)))?"
)

# A message that only closes the conversation ("ok thanks", "great, thank you!", "bye",
# "vale, gracias", "adiós 👋", "no thanks", "nope, that's all", "thanks for nothing"):
# acknowledgements, thanks, goodbyes and declines, with at least one thanks, goodbye or
# "that's all". Never read for places: "thanks for nothing" once offered Hanksville.
_ACK = (
    r"ok|okay|great|cool|perfect|nice|sure|yes|awesome|excellent|all good|"
    r"vale|genial|perfecto|si|bueno|de acuerdo"
)
_THANKS = (
    r"thanks?(?: you)?(?: (?:very|so) much| a lot| again)?"
    r"(?: for (?:the help|your help|all your help|all the help|everything|your time))?|"
    r"many thanks|thx|ty|cheers|much appreciated|"
    r"(?:muchas |mil |muchisimas )?gracias(?: de nuevo| por (?:todo|tu ayuda|su ayuda|la ayuda))?"
)
_BYE = (
    r"(?:good ?)?bye(?: bye)?|see (?:you|ya)(?: later| soon)?|adios|chao|chau|"
    r"hasta (?:luego|pronto|la proxima)|nos vemos"
)
# A decline or "that's all" ends the conversation as a goodbye does: "You're welcome!" is no
# answer to "no thanks", nor to "thanks for nothing" or "thanks anyway".
_DECLINE = r"no|nope|nah|nop"
_DONE = (
    r"that'?s (?:all|it)|that will do|that'?ll do|nothing else|nothing more|"
    r"i'?m (?:good|fine|all set)|we'?re (?:good|fine|all set)|all set|"
    r"eso es todo|es todo|nada mas|no hace falta|estoy bien|estamos bien"
)
_NO_HELP = (
    r"thanks?(?: you)? (?:for nothing|anyway|anyways|all the same)|"
    r"gracias (?:por nada|de todos modos|de todas formas|igual)|igual gracias"
)
# Each word or phrase is taken once, with the space after it (an atomic group): "bye bye" can
# be one goodbye or two, and trying every split of "bye bye bye … x" doubled the work with
# each word (40 of them held the worker for minutes). Longer phrases that begin with a shorter
# one come first ("no hace falta" before "no", "thanks for nothing" before "thanks").
CLOSING = re.compile(rf"(?>(?:{_NO_HELP}|{_DONE}|{_ACK}|{_THANKS}|{_BYE}|{_DECLINE})(?: |$))+")


def _says(alternatives: str, words: str) -> bool:
    return re.search(rf"(?:^| )(?:{alternatives})(?: |$)", words) is not None


def _unthanked(text: str) -> str:
    return re.sub(rf" (?:{_THANKS})$", "", text)


def _closes(words: str) -> bool:
    """A closing says more than "ok" or "no": thanks, a goodbye or "that's all"."""
    return bool(CLOSING.fullmatch(words)) and _says(f"{_THANKS}|{_BYE}|{_DONE}|{_NO_HELP}", words)


def _says_bye(words: str) -> bool:
    """A closing answered as a goodbye rather than "You're welcome!" ("that's all, thanks" is
    thanks)."""
    return _says(f"{_BYE}|{_DECLINE}|{_NO_HELP}", words) or (
        _says(_DONE, words) and not _says(_THANKS, words)
    )


GREETING_WORDS = {"hi", "hello", "hey", "hiya", "hola", "shalom", "buenas", "yo", "howdy", "👋"}
GREETING_TAIL = {"again", "there", "bot", "team", "all", "everyone", "friend", "amigo", "y"}


def _is_greeting(plain: str) -> bool:
    words = plain.split()
    return plain in GREETINGS or (
        bool(words) and words[0] in GREETING_WORDS and all(w in GREETING_TAIL for w in words[1:])
    )


def _valid_trip(trip: dict[str, Any]) -> dict[str, Any]:
    """Drop slots that can't be used (state written by an older version, or edited by hand),
    so one bad value costs a question rather than a message that fails on every retry."""
    for key in ("origin", "destination"):
        place = trip.get(key)
        if place is not None and not (isinstance(place, dict) and place.get("code")):
            trip.pop(key)
    for key in ("depart", "return"):
        value = trip.get(key)
        if value is not None:
            try:
                date.fromisoformat(str(value))
            except ValueError:
                trip.pop(key)
    if "period" in trip and Period.from_state(trip["period"]) is None:
        trip.pop("period")
    for key in ("adults", "nights"):
        value = trip.get(key)
        if value is not None and not (isinstance(value, int | float) and 1 <= value <= 365):
            trip.pop(key)
    for key in ("children", "infants"):
        value = trip.get(key)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 99):
            trip.pop(key)
    for key in ("round_trip", "some_children"):
        if trip.get(key) not in (None, True):
            trip.pop(key)
    for key in ("too_many", "offspring"):
        value = trip.get(key)
        if value is not None and not (isinstance(value, int | float) and value > 0):
            trip.pop(key)
    if "either" in trip and _either(trip) is None:
        trip.pop("either")
    return trip


def _either(trip: dict[str, Any]) -> tuple[str, date, date] | None:
    """The two days the user named for a leg ("Friday or Saturday"), not yet chosen from."""
    either = trip.get("either")
    if not isinstance(either, dict) or either.get("leg") not in ("depart", "return"):
        return None
    days = either.get("days")
    if not isinstance(days, list) or len(days) != 2:
        return None
    try:
        first, second = (date.fromisoformat(str(day)) for day in days)
    except ValueError:
        return None
    return str(either["leg"]), first, second


def _tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@functools.cache
def _southern_zones() -> frozenset[str]:
    """The time zones whose reference city is south of the equator, from the tz database's
    zone1970.tab (the system's, or the tzdata package's). A zone it does not list (an alias
    such as America/Buenos_Aires, or no table at all) counts as northern."""
    tables = [Path(path, "zone1970.tab") for path in TZPATH]
    with contextlib.suppress(ModuleNotFoundError):  # the tzdata package, if installed
        tables.append(Path(str(resources.files("tzdata.zoneinfo").joinpath("zone1970.tab"))))
    for table in tables:
        try:
            lines = table.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        rows = [line.split("\t") for line in lines if not line.startswith("#")]
        return frozenset(row[2] for row in rows if len(row) >= 3 and row[1].startswith("-"))
    return frozenset()


@dataclass
class Context:
    turn: Turn
    texts: Texts
    today: date  # when the message is handled: what has passed, what is too far ahead
    written: date  # when the user wrote it: what "tomorrow" or "Friday" meant
    smart: bool
    async_search: bool

    @property
    def locale(self) -> str:
        return self.turn.business.locale


class BotEngine:
    """The engine the gateway's workers call (see :mod:`services.gateway.engine`)."""

    def __init__(
        self,
        search: SearchPort,
        settings: BotSettings,
        places: PlaceResolver,
        extractor: Extractor,
    ) -> None:
        self._search = search
        self._settings = settings
        self._places = places
        self._extractor = extractor
        self._smart: Switch = settings.smart_handler()
        self._async: Switch = settings.async_search()
        self._recent = RecentSearches(settings.bot_search_cache_seconds)

    def describe(self) -> dict[str, Any]:
        return {
            "use_smart_handler": self._smart.describe(),
            "use_async_search": self._async.describe(),
            "searching_notice_after_ms": self._settings.bot_searching_notice_ms,
            "search_timeout_seconds": self._settings.bot_search_timeout_seconds,
            "llm": self._extractor.describe(),
        }

    async def aclose(self) -> None:
        await self._extractor.aclose()

    def rate_notice(self, locale: str) -> str:
        """The worker's notice to a user over their rate limit, in the business's language."""
        return Texts(locale)("rate_notice")

    # --- one turn ---------------------------------------------------------------------

    async def handle(self, turn: Turn) -> TurnResult:
        business, message = turn.business, turn.message
        zone = _tz(business.time_zone)
        # A message handled after the business's midnight (behind an outage or a retry, or
        # redelivered by the provider) means "tomorrow" from the day it was written. A
        # timestamp from the future or from long ago (a skewed or missing clock) counts for
        # nothing.
        written = message.timestamp
        if written.tzinfo is None or not turn.now - MAX_MESSAGE_AGE <= written <= turn.now:
            written = turn.now
        ctx = Context(
            turn=turn,
            texts=Texts(business.locale),
            today=turn.now.astimezone(zone).date(),
            written=written.astimezone(zone).date(),
            smart=self._smart.enabled_for(business.id, message.user_id),
            async_search=self._async.enabled_for(business.id, message.user_id),
        )
        dialogue = Dialogue.load(turn.conversation.state)
        replies = await self._dispatch(ctx, dialogue)
        return dialogue.result(replies)

    async def _dispatch(self, ctx: Context, d: Dialogue) -> list[Reply]:
        message, t = ctx.turn.message, ctx.texts
        if message.type == "location":
            return await self._location(ctx, d)
        if is_notice(message):
            return []  # a 👍 on a reply, Meta's notice that the user changed number: no answer
        if message.type == "unknown" and message.payload.get("raw_type") == "request_welcome":
            return self._greet(ctx, d)  # the user opened the chat for the first time
        if message.type in ("interactive", "button"):
            reply_id = str(message.payload.get("reply_id", ""))
            chosen = re.fullmatch(r"place:(\d+)", reply_id)
            if chosen:
                title = str(message.payload.get("title", ""))
                return await self._tapped_place(ctx, d, int(chosen.group(1)), title)
            return await self._text(ctx, d, message.text or str(message.payload.get("title", "")))
        if message.type != "text" and not message.text.strip():
            return [Reply(t("non_text"))]
        if not message.text.strip():
            return [Reply(t("not_understood"))]
        return await self._text(ctx, d, message.text)

    async def _text(self, ctx: Context, d: Dialogue, text: str) -> list[Reply]:
        t = ctx.texts
        # A skin tone or a variation selector changes no emoji's meaning ("👍🏽" is "👍").
        plain = EMOJI_VARIANTS.sub("", normalize(text)).strip(" .")
        polite = POLITE.sub("", plain)
        command = COMMANDS.get(polite)  # "start over please"
        if _is_greeting(plain):
            return self._greet(ctx, d)
        if command == "help":
            return [Reply(t("help"))]
        if command in ("new", "cancel"):
            for key in STATE_KEYS:
                d.set(key, {})
            if command == "cancel":
                return [Reply(t("cancel"))]
            if not ctx.smart:
                d.set("ask", {"slot": "origin"})
            return [Reply(t("new" if ctx.smart else "new_step"))]
        words = " ".join(re.sub(r"[^\w\s']", " ", polite).split())  # no emoji, no commas
        # An answer with thanks after it ("4 thanks", "none, thanks") is the answer; and "no
        # thanks" answering "How many children are travelling?" is none, not a goodbye.
        if d.ask.get("slot") == "children" and NO_CHILDREN.fullmatch(_unthanked(words)):
            return await self._apply(ctx, d, Extraction(children=0))
        if d.ask.get("slot") == "offspring" and d.trip.get("offspring"):
            answer = _unthanked(words)
            if NO_CHILDREN.fullmatch(answer) or ALL_OFFSPRING.fullmatch(answer):
                under = int(d.trip["offspring"]) if ALL_OFFSPRING.fullmatch(answer) else 0
                return await self._offspring_under_12(ctx, d, under)
        either = _either(d.trip)
        asked_leg = SLOT_LEG.get(str(d.ask.get("slot")))
        if either is not None and either[0] == asked_leg and ANY_DAY.fullmatch(_unthanked(words)):
            # "either", "whichever is cheaper": the first day, and how to see the other.
            leg, first, second = either
            found = Extraction(depart=first) if leg == "depart" else Extraction(return_date=first)
            other = fmt.day(t, second)
            typed = other if leg == "depart" else t("return_on", date=other)  # "back Mon 30 Nov"
            notice = Reply(t("either_first", first=fmt.day(t, first), second=other, typed=typed))
            return [notice, *await self._apply(ctx, d, found)]
        if command == "thanks" or _closes(words):
            return [Reply(t("bye" if _says_bye(words) else "thanks"))]
        if command == "more":
            return self._more(ctx, d)
        if command == "ack":
            return [Reply(self._whats_next(ctx, d))]  # "ok", "great": nothing to change
        if command == "swap" and (d.trip.get("origin") or d.trip.get("destination")):
            # "the other way round": the same trip in the opposite direction.
            origin, destination = d.trip.get("origin"), d.trip.get("destination")
            d.update_trip(origin=destination, destination=origin)
            if d.ask.get("slot") in ("origin", "destination") and not d.ask.get("choices"):
                d.set("ask", {})
            return await self._advance(ctx, d, [])
        if command == "retry":
            if self._missing(d) is None:
                return await self._advance(ctx, d, [])  # dates checked again: time has passed
            return [Reply(t("nothing_to_retry"))]
        if CHEAPEST.fullmatch(polite) or CHEAPER.fullmatch(polite):
            return self._cheaper(ctx, d, cheapest=bool(CHEAPEST.fullmatch(polite)))
        n = _chosen(_unthanked(plain))
        if n is not None:
            picked = await self._number(ctx, d, n)
            if picked is not None:
                return picked
            if d.ask.get("slot") in ("origin", "destination"):
                # "one" answering "Where are you flying from?" is no place: resolved, it was
                # Oneonta (ONH), and "two" a date.
                return [Reply(t("number_for_place", question=self._whats_next(ctx, d)))]
        if d.ask.get("choices"):
            picked = await self._choice_by_region(ctx, d, plain)
            if picked is not None:
                return picked

        if ctx.smart:
            found = await self._extractor.extract(text, ctx.written, ctx.locale)
            if found.period and ctx.turn.business.time_zone in _southern_zones():
                # "en verano" to a business in Buenos Aires is December to February.
                found = replace(found, period=found.period.in_south(ctx.written))
        else:
            found = self._step_answer(ctx, d, text)
        if found.is_empty():
            if found.unreadable_date:
                return [Reply(t("date_not_understood"))]
            return self._not_understood(ctx, d)
        replies = await self._apply(ctx, d, found)
        if found.more_trips:  # "... then London to Paris on Sunday": said, not mixed in
            replies.append(Reply(t("one_trip_at_a_time")))
        return replies

    async def _choice_by_region(self, ctx: Context, d: Dialogue, answer: str) -> list[Reply] | None:
        """ "Missouri" or "the one in Illinois" answering "Which “Springfield” do you mean?",
        whose rows show each place's state or country: the name asked about with it
        ("springfield missouri"), which the search service reads as a name and its region,
        finds one of the rows, scored as the name alone scores it (so the answer was read as
        its region, not as more words of a name: "Chicago" is a new place). Only a short
        answer: a new message is read as one."""
        region = REGION_ANSWER.sub("", answer).strip()
        asked = normalize(str(d.ask.get("text", "")))
        if not region or not asked or len(region.split()) > 3:
            return None
        try:
            found = await self._places.resolve(f"{asked} {region}")
            alone = {c.code: c.score for c in await self._places.resolve(asked)}
        except grpc.aio.AioRpcError:
            return None
        codes = [c.get("code") for c in d.ask.get("choices") or []]
        if not found or found[0].code not in codes or alone.get(found[0].code) != found[0].score:
            return None
        return await self._number(ctx, d, codes.index(found[0].code) + 1)

    def _greet(self, ctx: Context, d: Dialogue) -> list[Reply]:
        profile_name = ctx.turn.message.profile_name
        name = profile_name.split(" ")[0] if profile_name else ""
        if ctx.smart and (d.ask.get("choices") or (d.ask.get("slot") and d.trip)):
            # "hi" while a question waits (a place list, "Where are you flying from?"): the
            # question again, with what is kept, not an introduction that drops it.
            hello = ctx.texts("greeting_again", name=f" {name}" if name else "")
            if d.ask.get("choices"):
                reply = self._choices_again(ctx, d, summary=True)
                return [replace(reply, text=f"{hello} {reply.text}")]
            return [Reply(f"{hello} {self._so_far(ctx, d, self._whats_next(ctx, d))}")]
        d.set("ask", {"slot": "origin"} if not ctx.smart else {})
        key = "greeting" if ctx.smart else "greeting_step"
        return [Reply(ctx.texts(key, name=f" {name}" if name else ""))]

    def _not_understood(self, ctx: Context, d: Dialogue) -> list[Reply]:
        # "Hello! Can I get more info on this?" (what a Click-to-WhatsApp ad fills in), "Hi, I
        # saw your ad": a greeting with nothing we can use is answered as a greeting.
        plain = normalize(ctx.turn.message.text)
        words = plain.split()
        if words and (
            words[0] in GREETING_WORDS or any(plain.startswith(f"{g} ") for g in GREETINGS)
        ):
            return self._greet(ctx, d)
        return [Reply(ctx.texts("not_understood"))]

    def _whats_next(self, ctx: Context, d: Dialogue) -> str:
        """What the user can do now: the pending question, else the shown offers."""
        t = ctx.texts
        if d.ask.get("choices"):
            key = "choose_place_unsure" if d.ask.get("unsure") else "choose_place"
            return t(key, text=d.ask.get("text", ""))
        if d.ask.get("slot") == "return" and d.trip.get("depart"):
            return self._slot_question(ctx, d, "return")
        if d.ask.get("slot") == "travellers" and d.trip.get("too_many"):
            return self._travellers_question(ctx, d)
        if d.ask.get("slot") == "adults" and _too_few_laps(d.trip):
            return self._laps_question(ctx, d)
        if d.ask.get("slot") == "children" and d.trip.get("some_children"):
            return t("ask_children")
        if d.ask.get("slot") == "offspring" and d.trip.get("offspring"):
            return t("ask_offspring", n=int(d.trip["offspring"]))
        missing = self._missing(d)
        if missing is not None and (d.trip or not ctx.smart):
            d.set("ask", {"slot": missing})
            return self._slot_question(ctx, d, missing)
        shown = int(d.results.get("shown", 0))
        if shown:
            return t("pick_offer", last=shown)
        return t("greeting" if ctx.smart else "greeting_step", name="")

    async def _tapped_place(self, ctx: Context, d: Dialogue, n: int, title: str) -> list[Reply]:
        """A row of a place list we sent. Only the list the dialogue waits on counts: a row of
        an older one (already answered, or asked about another place) read as a number would
        choose for the current question or open offer N. The row's title, which the Cloud API
        sends back with its id, tells which list it was (ids are place:N, see _choices_reply)."""
        choices = d.ask.get("choices") or []
        if 1 <= n <= len(choices):
            choice = choices[n - 1]
            city, code = str(choice.get("city", "")), str(choice.get("code", ""))
            country = str(choice.get("country", ""))
            # The untranslated title too, and either cut from the end: the list may come from
            # a release that sent it so.
            names = {ctx.texts.place(city, country), city}
            expected = {"", *(_row_title(name, code) for name in names)}
            expected |= {_clip(f"{name} ({code})", ROW_TITLE_LIMIT) for name in names}
            if title in expected:
                return await self._number(ctx, d, n) or []
        return [Reply(f"{ctx.texts('list_outdated')} {self._whats_next(ctx, d)}")]

    # --- numbers: a place choice or an offer ------------------------------------------

    async def _number(self, ctx: Context, d: Dialogue, n: int) -> list[Reply] | None:
        choices = d.ask.get("choices") or []
        if choices:
            if 1 <= n <= len(choices):
                slot = d.ask.get("slot", "destination")
                later = d.ask.get("then")
                d.update_trip(**{slot: choices[n - 1]})
                d.set("ask", {})
                if isinstance(later, dict) and later.get("text"):
                    question = await self._resolve_into(ctx, d, later["slot"], later["text"])
                    if question:
                        return question
                return await self._advance(ctx, d, [])
            return [Reply(ctx.texts("choose_place", text=d.ask.get("text", "")))]
        if d.ask.get("slot") in ("travellers", "adults"):
            # "4", answering "How many travellers should I search for?" (everyone seated: the
            # children are counted in it) or "How many adults are travelling?" (an infant per
            # lap: the children are kept, and the seats they take with the adults are checked
            # again).
            if d.ask["slot"] == "travellers":
                d.update_trip(children=None)
            found = Extraction(adults=n) if 1 <= n <= MAX_TRAVELLERS else Extraction(too_many=n)
            return await self._apply(ctx, d, found)
        if d.ask.get("slot") == "children" and d.trip.get("some_children"):
            # "2", answering "How many children are travelling?" ("0": none after all).
            return await self._apply(ctx, d, Extraction(children=n))
        if d.ask.get("slot") == "offspring" and d.trip.get("offspring"):
            # "1", answering "How many of your 2 children are under 12?" (not more than 2).
            if n <= int(d.trip["offspring"]):
                return await self._offspring_under_12(ctx, d, n)
            return [Reply(self._whats_next(ctx, d))]
        asked_leg = SLOT_LEG.get(str(d.ask.get("slot")))
        either = _either(d.trip)
        if either is not None and 1 <= n <= 2:
            leg, *days = either
            if asked_leg == leg:
                # "2", answering "Which day do you want to leave, Fri 27 Nov or Sat 28 Nov?"
                day = days[n - 1]
                found = Extraction(depart=day) if leg == "depart" else Extraction(return_date=day)
                return await self._apply(ctx, d, found)
        period = Period.from_state(d.trip.get("period"))
        if period is not None and asked_leg == period.leg and 1 <= n <= 31:
            # "28", answering "Which day at the end of December?": that day of the period,
            # not an offer of the search before the question.
            value = period.day(n)
            if value is None:  # "15" in summer: which month is asked again
                return await self._advance(ctx, d, [])
            if isinstance(value, NoSuchDate):
                return await self._apply(ctx, d, Extraction(no_such_date=value))
            return await self._apply(ctx, d, Extraction(depart=value))
        offers = d.results.get("offers") or []
        if offers:
            shown = int(d.results.get("shown", 0))
            if 1 <= n <= shown:
                return [Reply(fmt.details(ctx.texts, n, offers[n - 1], self._priced_for(ctx, d)))]
            return [Reply(ctx.texts("pick_offer", last=shown))]
        return None  # a bare number with nothing to choose: maybe a date ("5")

    async def _offspring_under_12(self, ctx: Context, d: Dialogue, under: int) -> list[Reply]:
        """The sons and daughters the user named ("con mis 2 hijos"): ``under`` of them children
        (under 12, a child's fare), the others adults with the user."""
        grown = int(d.trip["offspring"]) - under
        adults = int(d.trip.get("adults") or 1) + grown
        children = int(d.trip.get("children") or 0) + under
        d.update_trip(offspring=None)
        if adults > MAX_TRAVELLERS:
            found = Extraction(too_many=adults, children=children)
        else:
            found = Extraction(adults=adults, children=children)
        return await self._apply(ctx, d, found)

    # --- step-by-step (USE_SMART_HANDLER off) -----------------------------------------

    def _step_answer(self, ctx: Context, d: Dialogue, text: str) -> Extraction:
        """The old flow: each message answers only the question asked (origin, destination,
        date), so a whole request in one message still takes three."""
        slot = d.ask.get("slot") or self._missing(d) or "origin"
        found = extract(text, ctx.written, ctx.locale)
        answer = Extraction(unreadable_date=found.unreadable_date, edge_names=found.edge_names)
        if slot in ("origin", "destination"):
            ordered = [found.origin, *found.places, found.destination]
            phrase = next((p for p in ordered if p), None)
            if slot == "destination":
                phrase = found.destination or next((p for p in found.places), None) or phrase
            setattr(answer, slot, phrase)
        else:
            answer.depart = found.depart
            answer.no_such_date = None if found.no_such_return else found.no_such_date
            if found.either and not found.either_return:
                answer.either = found.either  # "Friday or Saturday": which is asked
        return answer

    # --- applying what a message said -------------------------------------------------

    async def _apply(self, ctx: Context, d: Dialogue, found: Extraction) -> list[Reply]:
        t = ctx.texts
        pending = d.ask.get("slot")
        period = Period.from_state(d.trip.get("period"))
        if period is not None and found.depart and found.depart_day_only:
            # "the 28th", answering "Which day at the end of December?": in that month.
            day = period.day(found.depart.day)
            if day is None:  # "the 15th" in summer: which month is asked again
                found = replace(found, depart=None, depart_day_only=False)
            elif isinstance(day, NoSuchDate):
                found = replace(found, depart=None, no_such_date=day)
            else:
                found = replace(found, depart=day)
        if (
            pending == "return"
            and found.depart
            and not found.return_date
            and not (found.origin or found.destination or found.places)
        ):
            # The answer to "When do you come back?" (a date alone) is the return, not a new
            # departure; a weekday is the first one after the departure, as "back Sunday" is.
            found = replace(
                found,
                depart=None,
                return_date=found.depart,
                return_weekday=found.depart_weekday,
                return_day_only=found.depart_day_only,
            )
        elif (
            pending == "return"
            and found.no_such_date
            and not (found.depart or found.return_date)
            and not (found.origin or found.destination or found.places)
        ):
            found = replace(found, no_such_return=True)  # "31 April" answering the question
        if found.add_adults and not found.adults and not found.too_many:
            # "add my wife": one more than the trip's adults.
            grown = int(d.trip.get("adults") or 1) + found.add_adults
            if grown <= MAX_TRAVELLERS:
                found = replace(found, adults=grown)
            else:
                found = replace(found, too_many=grown)
        for whole in found.whole_names:
            if await self._is_one_name(whole.name, whole.part):
                found = replace(
                    found,
                    origin=whole.origin,
                    destination=whole.destination,
                    places=list(whole.places),
                )
                break
        for part, name in found.edge_names:
            if await self._names_better(name, part):
                # "from international falls": INL, not a list of every "Falls".
                found = replace(
                    found,
                    origin=name if found.origin == part else found.origin,
                    destination=name if found.destination == part else found.destination,
                    places=[name if p == part else p for p in found.places],
                )
        assigned: dict[str, str] = {}
        if found.origin:
            assigned["origin"] = found.origin
        if found.destination:
            assigned["destination"] = found.destination
        unmarked: list[str] = []
        for phrase in found.places:
            try:
                unmarked.extend(await split_phrase(self._places, phrase))
            except grpc.aio.AioRpcError:
                unmarked.append(phrase)
        unasked: set[str] = set()  # slots given a phrase with no from/to that nobody asked for
        if len(unmarked) >= 2 and not assigned:
            # Two places side by side ("Madrid Londres", "jfk lax") are a route, in the order
            # written; only a place alone is taken for the destination first.
            assigned["origin"], assigned["destination"] = unmarked[0], unmarked[1]
            unasked.update(("origin", "destination"))
            unmarked = unmarked[2:]
        for phrase in unmarked:
            if pending in ("origin", "destination") and pending not in assigned:
                slot = pending
            elif "destination" not in assigned and not d.trip.get("destination"):
                slot = "destination"
            elif "origin" not in assigned and not d.trip.get("origin"):
                slot = "origin"
            elif "destination" not in assigned:
                slot = "destination"
            else:
                continue
            assigned[slot] = phrase
            if slot != pending:
                unasked.add(slot)
        for slot in sorted(unasked):
            # The words around a correction ("wait, saturday", "change the date to Sunday")
            # would replace the trip's place with whatever they resemble (Waitangi at 83,
            # Odate at 80): replacing one takes a clear place, else the phrase is no place.
            if d.trip.get(slot) and not await self._is_clearly_a_place(assigned[slot]):
                del assigned[slot]
        # Both places and the day: a whole new request ("Paris to Rome on 5 December" after
        # results for another trip), read as it would be first. The old trip's return,
        # travellers, cabin and stops are not carried over (a return from it would even be
        # asked about, before a departure the user never tied it to).
        whole_request = (
            "origin" in assigned
            and "destination" in assigned
            and bool(
                found.depart
                or (found.no_such_date and not found.no_such_return)
                or (found.period and found.period.leg == "depart")
                or (found.either and not found.either_return)
            )
        )
        later = d.ask.get("then")
        if isinstance(later, dict) and later.get("slot") in assigned and pending not in assigned:
            # "to Orlando instead" while "Which San Jose?" waits: Orlando, not the Miami kept.
            d.set("ask", {k: v for k, v in d.ask.items() if k != "then"})
        elif pending in assigned and isinstance(later, dict) and later.get("text"):
            # The other place of the message that asked ("San Jose to Rome"), kept for after
            # the answer: typed (SJO), not tapped, the answer comes this way.
            assigned.setdefault(str(later.get("slot")), str(later["text"]))

        changes: dict[str, Any] = {}
        if whole_request:
            changes.update((key, None) for key in REQUEST_DEFAULTS if d.trip.get(key) is not None)
        if found.depart:
            changes["depart"] = found.depart.isoformat()
        elif found.shift_days and d.trip.get("depart"):
            # "a day later": the trip's departure, moved (the return stays, and is checked).
            moved = date.fromisoformat(d.trip["depart"]) + timedelta(days=found.shift_days)
            changes["depart"] = moved.isoformat()
        if found.return_date:
            back = found.return_date
            departure = found.depart or (
                date.fromisoformat(d.trip["depart"]) if d.trip.get("depart") else None
            )
            if found.return_weekday and departure:
                back = weekday_after(back, departure)  # "back Sunday" after a Friday departure
            elif found.return_day_only and departure:
                back = day_after(back, departure)  # "back on the 4th" after 28 December
            changes["return"] = back.isoformat()
            changes["nights"] = None
        elif found.return_shift_days:
            back_then = None
            if d.trip.get("return"):
                back_then = date.fromisoformat(d.trip["return"])
            elif d.trip.get("nights") and d.trip.get("depart"):
                stay = timedelta(days=int(d.trip["nights"]))
                back_then = date.fromisoformat(d.trip["depart"]) + stay
            if back_then and not found.depart:
                # "come back a day later": the trip's return, moved (and checked).
                days = timedelta(days=found.return_shift_days)
                changes["return"] = (back_then + days).isoformat()
                changes["nights"] = None
            elif found.return_shift_days > 0 and not found.nights:
                # "Friday, back two days later": a stay of two days.
                found = replace(found, nights=found.return_shift_days)
        if found.nights:
            changes["nights"] = found.nights
            changes["return"] = None
        if found.one_way:
            changes["return"] = None
            changes["nights"] = None
        if found.one_way is not None:
            changes["round_trip"] = None if found.one_way else True
        if found.adults:
            changes["adults"] = found.adults
        if found.children is not None:
            changes["children"] = found.children or None  # 0: "just me"
        if found.infants is not None:
            changes["infants"] = found.infants or None
        # The party once this message is applied: a slot it clears (a whole new request, "just
        # me") is not the trip's any more.
        children = int(
            (changes["children"] if "children" in changes else d.trip.get("children")) or 0
        )
        if found.children is not None and d.trip.get("some_children"):
            changes["some_children"] = None  # "2 kids", answering how many
        elif found.some_children and not children:
            # "with the kids": searched as adults alone, the children would be left out of
            # the fares shown; how many is asked first (see _advance).
            changes["some_children"] = True
        if found.adults or found.children:
            # Children take seats: with them a party may be over what one search seats.
            adults = changes["adults"] if "adults" in changes else d.trip.get("adults")
            seated = int(adults or 1) + children
            if seated > MAX_TRAVELLERS:
                changes["too_many"] = seated
            elif d.trip.get("too_many"):
                changes["too_many"] = None
        if found.offspring is not None:
            changes["offspring"] = found.offspring  # how many are under 12 is asked
        if found.too_many:
            # Asked before searching (see _advance), as the seats: the children take theirs.
            changes["too_many"] = found.too_many + children
        if found.cabin:
            changes["cabin"] = found.cabin
        if found.non_stop is not None:
            changes["non_stop"] = found.non_stop
        changes.update(self._period_changes(d, found))
        changes.update(self._either_changes(d, found, changes))
        if changes:
            d.update_trip(**changes)
        before: list[Reply] = []
        if found.no_such_date is not None:
            before = self._no_such_date(ctx, d, found)
        elif found.depart is None and found.unreadable_date and not assigned and not changes:
            return [Reply(t("date_not_understood"))]

        only_unmarked = bool(found.places) and not (
            found.origin or found.destination or changes or pending in ("origin", "destination")
        )
        if only_unmarked and not assigned and not (found.no_such_date or found.unreadable_date):
            return self._not_understood(ctx, d)
        asked: list[Reply] = []
        for slot in ("origin", "destination"):
            wanted = assigned.get(slot)
            if not wanted:
                continue
            if asked:
                # One question at a time: the other place is resolved once this one is answered.
                d.set("ask", {**d.ask, "then": {"slot": slot, "text": wanted}})
                continue
            # A bare phrase nobody asked for must be clearly a place ("London"), not whatever
            # fuzzy match a word like "great" or "again" happens to have.
            strict = only_unmarked and not d.trip.get(slot)
            question = await self._resolve_into(ctx, d, slot, wanted, strict=strict)
            if question:
                if only_unmarked and not d.ask.get("choices"):
                    d.set("ask", {})
                    return self._not_understood(ctx, d)
                asked.extend(question)
        if asked:
            return [*before, *asked]
        if before and found.no_such_return:
            return before  # "When do you come back?" is in it: nothing can be searched yet
        return await self._advance(ctx, d, before)

    def _either_changes(
        self, d: Dialogue, found: Extraction, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """ "Friday or Saturday": neither is searched, which is asked (see _slot_question); a
        day for that leg given later ends the choice."""
        if found.either is not None:
            leg = "return" if found.either_return else "depart"
            days = [day.isoformat() for day in found.either]
            cleared = {"return": None, "nights": None} if leg == "return" else {"depart": None}
            return {**cleared, "either": {"leg": leg, "days": days}}
        either = _either(d.trip)
        if either is not None and (
            changes.get("depart")
            if either[0] == "depart"
            else (changes.get("return") or changes.get("nights") or found.one_way)
        ):
            return {"either": None}
        return {}

    def _period_changes(self, d: Dialogue, found: Extraction) -> dict[str, Any]:
        """ "end of the month" (or "back early January"): that date is dropped and the day
        asked, naming the period (see _advance); a date for it given later ends the period."""
        new, old = found.period, Period.from_state(d.trip.get("period"))
        if new is not None and new.leg == "depart" and not found.depart:
            return {"depart": None, "period": new.as_state()}
        if new is not None and new.leg == "return" and not (found.return_date or found.nights):
            depart = found.depart or (
                date.fromisoformat(d.trip["depart"]) if d.trip.get("depart") else None
            )
            if depart is not None:
                new = new.not_before(depart)
            return {"return": None, "nights": None, "period": new.as_state()}
        if old is not None and (
            found.depart
            if old.leg == "depart"
            else (found.return_date or found.nights or found.one_way)
        ):
            return {"period": None}
        return {}

    async def _is_one_name(self, name: str, part: str) -> bool:
        """Whether "santa cruz de tenerife" is one place rather than "santa cruz" from
        "tenerife": the whole resolves well, to a place that neither half finds as well
        ("roma de vacaciones" finds Rome only through "roma", and less well; "oslo de
        londres" is to Oslo from London)."""
        rest = name[len(part) + len(" de ") :]
        try:
            found = [await self._places.resolve(text) for text in (name, part, rest)]
        except grpc.aio.AioRpcError:
            return False
        whole, *halves = found
        if not whole or whole[0].score < ONE_NAME_SCORE:
            return False
        # A half finding it as well is the same name again ("Ciudad de Panamá", "Panamá").
        return not any(
            half and half[0].code == whole[0].code and half[0].score > whole[0].score
            for half in halves
        )

    async def _names_better(self, name: str, part: str) -> bool:
        """Whether "kansas city" names a place better than "kansas", the phrase the filler
        trim left: well (as a name with "de" must) and better ("london city" is London City
        airport at 95, "london" all of London at 100: London)."""
        try:
            whole, alone = await self._places.resolve(name), await self._places.resolve(part)
        except grpc.aio.AioRpcError:
            return False
        if not whole or whole[0].score < ONE_NAME_SCORE:
            return False
        if not alone or whole[0].score > alone[0].score:
            return True
        # A state after the name chooses among its namesakes: "portland me" is a Portland, in
        # Maine, not the one "portland" puts first.
        qualified = name.rsplit(" ", 1)[-1] in STATE_EDGE_WORDS
        if qualified and whole[0].city.casefold() == part and not same_city(whole[0], alone[0]):
            return True
        # A city named exactly, where the trimmed phrase only resembles one: "hay river" is Hay
        # River, "river" Rivera (a fuzzy 91.8 over the exact name's 90); "show low" is Show
        # Low, "low" the code of Louisa.
        return whole[0].city.casefold() == name and alone[0].city.casefold() != part

    async def _is_clearly_a_place(self, phrase: str) -> bool:
        try:
            candidates = await self._places.resolve(phrase)
        except grpc.aio.AioRpcError:
            return True  # _resolve_into says the search service is unavailable
        return bool(candidates) and candidates[0].score >= STRICT_SCORE

    def _no_such_date(self, ctx: Context, d: Dialogue, found: Extraction) -> list[Reply]:
        """ "29 Feb" in a year without one, "31 April": said so, and that date asked again (a
        departure by _advance's question, a return here). The trip's old date for that slot
        goes: the user meant to change it, and must not get a search for the old one."""
        t, day = ctx.texts, found.no_such_date
        assert day is not None
        month = t.words("month_names")[day.month - 1]
        note = t("no_such_date", day=day.day, month=month, year=day.year)
        if found.no_such_return:
            if not found.return_date:
                d.update_trip(**{"return": None, "nights": None})
            d.set("ask", {"slot": "return"})
            return [Reply(f"{note} {t('ask_return')}")]
        if not found.depart:
            d.update_trip(depart=None)
        return [Reply(note)]

    async def _resolve_into(
        self, ctx: Context, d: Dialogue, slot: str, phrase: str, *, strict: bool = False
    ) -> list[Reply] | None:
        """Resolve ``phrase`` into ``slot``; a reply when the user must answer first."""
        t = ctx.texts
        try:
            candidates = await self._places.resolve(phrase)
        except grpc.aio.AioRpcError as error:
            log.warning("resolve_place_failed", code=error.code().name)
            return [Reply(t("search_unavailable", summary=self._summary(ctx, d)))]
        if strict and (not candidates or candidates[0].score < STRICT_SCORE):
            candidates = []
        decision = decide(phrase, candidates)
        # As written where it can be found ("Córdoba", not "Cordoba"), capitalized if the user
        # didn't; clipped: a long message must not make a long reply (several messages).
        written = as_written(phrase, ctx.turn.message.text) or phrase
        shown = _clip(written.title() if written.islower() else written, PHRASE_LIMIT)
        if decision.ambiguous:
            d.set(
                "ask",
                {
                    "slot": slot,
                    "text": shown,
                    "choices": [c.as_state() for c in decision.choices],
                    **({"unsure": True} if decision.unsure else {}),
                },
            )
            return [self._choices_reply(ctx, shown, decision.choices, unsure=decision.unsure)]
        if decision.place is None:
            d.set("ask", {"slot": slot})
            return [Reply(t("place_not_found", text=shown))]
        d.update_trip(**{slot: decision.place.as_state()})
        if d.ask.get("slot") == slot:
            d.set("ask", {})
        return None

    def _choices_reply(
        self, ctx: Context, phrase: str, choices: tuple[Candidate, ...], *, unsure: bool = False
    ) -> Reply:
        rows = tuple(
            # place:N, the id every release reads: during a rolling upgrade the previous one's
            # workers handle taps on lists this one sent (an id they did not know, they read
            # as the title typed, and set the wrong place). The title says which list it was.
            ListRow(
                id=f"place:{index}",
                title=_row_title(ctx.texts.place(choice.city, choice.country), choice.code),
                description=_clip_keeping(
                    _place_name(ctx.texts, choice), f" · {_where(choice)}", ROW_DESCRIPTION_LIMIT
                ),
            )
            for index, choice in enumerate(choices, start=1)
        )
        return Reply(
            ctx.texts("choose_place_unsure" if unsure else "choose_place", text=phrase),
            list_button=ctx.texts("choose_button"),
            rows=rows,
        )

    def _choices_again(self, ctx: Context, d: Dialogue, *, summary: bool) -> Reply:
        choices = tuple(Candidate.from_state(c) for c in d.ask.get("choices") or [])
        text = str(d.ask.get("text", ""))
        reply = self._choices_reply(ctx, text, choices, unsure=bool(d.ask.get("unsure")))
        return replace(reply, text=self._so_far(ctx, d, reply.text)) if summary else reply

    async def _location(self, ctx: Context, d: Dialogue) -> list[Reply]:
        t, payload = ctx.texts, ctx.turn.message.payload
        try:
            nearby = await self._places.nearest(
                float(payload.get("latitude", 0.0)), float(payload.get("longitude", 0.0))
            )
        except (grpc.aio.AioRpcError, ValueError, TypeError) as error:
            log.warning("nearest_airports_failed", error=str(error))
            nearby = []
        if not nearby:
            d.set("ask", {"slot": "origin"})
            return [Reply(t("location_none"))]
        d.update_trip(origin=nearby[0].as_state())
        if d.ask.get("slot") == "origin":
            d.set("ask", {})
        note = Reply(t("location_set", place=_place_label(t, nearby[0].as_state())))
        return await self._advance(ctx, d, [note])

    # --- what next: ask, or search ----------------------------------------------------

    def _missing(self, d: Dialogue) -> str | None:
        for slot, key in (("origin", "origin"), ("destination", "destination"), ("date", "depart")):
            if not d.trip.get(key):
                return slot
        return None

    async def _advance(self, ctx: Context, d: Dialogue, before: list[Reply]) -> list[Reply]:
        t = ctx.texts
        origin, destination = d.trip.get("origin") or {}, d.trip.get("destination") or {}
        if origin.get("code") and origin.get("code") == destination.get("code"):
            return [*before, self._same_place(ctx, d)]
        # A departure that can't be searched is said at once, not after the route is complete
        # (a "Got it: <a past day>" summary first would contradict it).
        problem = self._check_departure(ctx, d) if d.trip.get("depart") else None
        if problem:
            return [*before, problem]
        if d.ask.get("choices"):
            # A place list still waits ("make it 2 adults" while "Which San Jose?" is open):
            # asked again, its other place still kept, rather than a question as if neither
            # place had been said.
            return [*before, self._choices_again(ctx, d, summary=not before)]
        missing = self._missing(d)
        if missing is not None:
            return self._ask(ctx, d, missing, self._slot_question(ctx, d, missing), before)
        problem = self._check_dates(ctx, d)
        if problem:
            return [*before, problem]
        period = Period.from_state(d.trip.get("period"))
        if period is not None and period.leg == "return" and self._return_date(d) is None:
            # "back early January": not a one-way search; which day is asked.
            d.set("ask", {"slot": "return"})
            return [*before, Reply(self._slot_question(ctx, d, "return"))]
        either = _either(d.trip)
        if either is not None and either[0] == "return" and self._return_date(d) is None:
            # "back Sunday or Monday": which, rather than one way or one of them unsaid.
            return self._ask(ctx, d, "return", self._slot_question(ctx, d, "return"), before)
        if d.trip.get("round_trip") and self._return_date(d) is None:
            # "round trip" with no return: not a one-way search either (see _apply).
            return self._ask(ctx, d, "return", t("ask_return"), before)
        if d.trip.get("too_many"):
            # "12 adults": one search seats at most 9, and 1 is not what was asked.
            return self._ask(ctx, d, "travellers", self._travellers_question(ctx, d), before)
        if d.trip.get("some_children"):
            # "with the kids": how many, before fares that would leave them out.
            return self._ask(ctx, d, "children", t("ask_children"), before)
        if d.trip.get("offspring"):
            # "con mis 2 hijos": grown up or children (a child's fare), before any fares.
            question = t("ask_offspring", n=int(d.trip["offspring"]))
            return self._ask(ctx, d, "offspring", question, before)
        if _too_few_laps(d.trip):
            # "1 adult and 2 babies": each infant travels on an adult's lap, and neither the
            # search nor an airline takes more infants than adults.
            return self._ask(ctx, d, "adults", self._laps_question(ctx, d), before)
        if d.ask:
            d.set("ask", {})
        return [*before, *await self._search_and_show(ctx, d)]

    def _ask(
        self, ctx: Context, d: Dialogue, slot: str, question: str, before: list[Reply]
    ) -> list[Reply]:
        """Ask for ``slot``: after ``before``, or on its own after what is kept so far."""
        d.set("ask", {"slot": slot})
        return [*before, Reply(question if before else self._so_far(ctx, d, question))]

    def _so_far(self, ctx: Context, d: Dialogue, text: str) -> str:
        """``text`` after what the trip holds ("Got it: New York → London."), in the smart
        flow and when it holds anything."""
        summary = self._summary(ctx, d) if ctx.smart else ""
        return ctx.texts("have_so_far", summary=summary) + "\n" + text if summary else text

    def _slot_question(self, ctx: Context, d: Dialogue, slot: str) -> str:
        """What asks for ``slot`` (``ask_<slot>``); for the leg of a stretch of days the user
        named, its day: "Which day at the end of December?", not "When do you want to leave?
        (e.g. *next Friday* or *3 March*)"."""
        either = _either(d.trip)
        if either is not None and SLOT_LEG.get(slot) == either[0]:
            # "Friday or Saturday": a search is for one day.
            t = ctx.texts
            first, second = fmt.day(t, either[1]), fmt.day(t, either[2])
            return t(f"ask_either_{slot}", first=first, second=second)
        period = Period.from_state(d.trip.get("period"))
        if period is not None and SLOT_LEG.get(slot) == period.leg:
            # A season's example is a day from today, for a return from the departure.
            start = ctx.today
            if period.leg == "return" and d.trip.get("depart"):
                start = max(start, date.fromisoformat(d.trip["depart"]))
            return _period_question(ctx.texts, period, start)
        return ctx.texts(f"ask_{slot}")

    def _travellers_question(self, ctx: Context, d: Dialogue) -> str:
        t = ctx.texts
        limit = t("too_many_travellers", n=int(d.trip["too_many"]), limit=MAX_TRAVELLERS)
        return f"{limit} {t('ask_travellers', limit=MAX_TRAVELLERS)}"

    def _laps_question(self, ctx: Context, d: Dialogue) -> str:
        t = ctx.texts
        return f"{t('infants_need_laps', n=int(d.trip['infants']))} {t('ask_adults')}"

    def _same_place(self, ctx: Context, d: Dialogue) -> Reply:
        d.update_trip(destination=None)
        d.set("ask", {"slot": "destination"})
        return Reply(
            ctx.texts("same_place", place=_place_label(ctx.texts, d.trip.get("origin") or {}))
        )

    def _check_departure(self, ctx: Context, d: Dialogue) -> Reply | None:
        depart = date.fromisoformat(d.trip["depart"])
        if depart < ctx.today:
            return self._ask_date_again(ctx, d, past=True)
        if depart > ctx.today + timedelta(days=MAX_DAYS_AHEAD):
            return self._ask_date_again(ctx, d, past=False)
        return None

    def _check_dates(self, ctx: Context, d: Dialogue) -> Reply | None:
        problem = self._check_departure(ctx, d)
        if problem:
            return problem
        depart = date.fromisoformat(d.trip["depart"])
        back = self._return_date(d)
        if back is not None and back < depart:
            return self._ask_return_again(ctx, d, "return_before_departure")
        if back is not None and back > ctx.today + timedelta(days=MAX_DAYS_AHEAD):
            return self._ask_return_again(ctx, d, "return_too_far")
        return None

    def _ask_date_again(self, ctx: Context, d: Dialogue, *, past: bool) -> Reply:
        t, depart = ctx.texts, date.fromisoformat(d.trip["depart"])
        d.update_trip(depart=None)
        d.set("ask", {"slot": "date"})
        return Reply(t("date_in_past", date=fmt.day(t, depart)) if past else t("date_too_far"))

    def _ask_return_again(self, ctx: Context, d: Dialogue, key: str) -> Reply:
        t, depart, back = ctx.texts, date.fromisoformat(d.trip["depart"]), self._return_date(d)
        assert back is not None
        d.update_trip(**{"return": None, "nights": None})
        d.set("ask", {"slot": "return"})  # "When do you come back?": see _apply
        return Reply(t(key, return_date=fmt.day(t, back), date=fmt.day(t, depart)))

    def _return_date(self, d: Dialogue) -> date | None:
        if d.trip.get("return"):
            return date.fromisoformat(d.trip["return"])
        if d.trip.get("nights") and d.trip.get("depart"):
            return date.fromisoformat(d.trip["depart"]) + timedelta(days=int(d.trip["nights"]))
        return None

    # --- search -----------------------------------------------------------------------

    async def _search_and_show(self, ctx: Context, d: Dialogue) -> list[Reply]:
        t, trip = ctx.texts, d.trip
        back = self._return_date(d)
        request = search_pb2.SearchFlightsRequest(
            origin=trip["origin"]["code"],
            destination=trip["destination"]["code"],
            departure_date=trip["depart"],
            return_date=back.isoformat() if back else "",
            # Each priced at its own fare, in the offers' total: the price shown is the party's.
            adults=int(trip.get("adults") or 1),
            children=int(trip.get("children") or 0),
            infants=int(trip.get("infants") or 0),
            cabin=CABIN_CODES.get(trip.get("cabin") or "economy", search_pb2.CABIN_ECONOMY),
            non_stop=bool(trip.get("non_stop")),
            max_results=fmt.KEPT,
        )
        key = self._recent.key(request)
        recent = self._recent.get(key)
        if recent is not None:
            return self._show(ctx, d, recent)
        call = asyncio.ensure_future(
            self._search.SearchFlights(
                request, timeout=time_left(self._settings.bot_search_timeout_seconds)
            )
        )
        try:
            if ctx.async_search:
                # Only a search that is still running after the notice delay (a cache miss, in
                # practice) gets the "searching …" message; cached answers come back first.
                done, _ = await asyncio.wait({call}, timeout=self._notice_seconds)
                if not done:
                    await self._send_early(ctx, Reply(self._searching_text(ctx, d)))
            response = await call
        except grpc.aio.AioRpcError as error:
            log.warning("search_failed", code=error.code().name)
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                violations = field_violations(error)
                if "destination" in violations:
                    # Codes that differ but share airports (LHR and London, EWR and New York):
                    # only the search service knows, and says so about the destination.
                    return [self._same_place(ctx, d)]
                # The search service counts days where the trip starts, the engine where the
                # business is: a Honolulu business's today is already past in Tokyo, and a
                # date within the engine's horizon may be a day past the service's.
                if "departure_date" in violations:
                    past = "past" in violations["departure_date"]
                    return [self._ask_date_again(ctx, d, past=past)]
                if "return_date" in violations:
                    return [self._ask_return_again(ctx, d, "return_too_far")]
                return [Reply(t("search_invalid", reason=error.details() or ""))]
            d.set("results", {})
            return [Reply(t("search_unavailable", summary=self._summary(ctx, d)))]
        finally:
            if not call.done():
                call.cancel()
        if (response.children, response.infants) != (request.children, request.infants):
            # A search service of the release before (mid-upgrade: the gateway rolled out
            # first) ignores children and infants and prices the adults alone: no price to show
            # a family. Asked again (*retry*), another replica may answer.
            log.warning("search_ignored_party", children=request.children, infants=request.infants)
            metrics.SEARCH_IGNORED_PARTY.inc()
            d.set("results", {})
            return [Reply(t("search_unavailable", summary=self._summary(ctx, d)))]
        self._recent.put(key, response)
        return self._show(ctx, d, response)

    @property
    def _notice_seconds(self) -> float:
        return self._settings.bot_searching_notice_ms / 1000

    async def _send_early(self, ctx: Context, reply: Reply) -> None:
        try:
            await ctx.turn.send_early(reply)
        except Exception as error:  # the final reply still goes out; an early one may not
            log.warning("send_early_failed", error=str(error))

    def _searching_text(self, ctx: Context, d: Dialogue) -> str:
        t = ctx.texts
        return t(
            "searching",
            route=self._route(t, d),
            date=fmt.day(t, date.fromisoformat(d.trip["depart"])),
        )

    def _show(
        self, ctx: Context, d: Dialogue, response: search_pb2.SearchFlightsResponse
    ) -> list[Reply]:
        t = ctx.texts
        depart = date.fromisoformat(d.trip["depart"])
        if not response.offers:
            d.set("results", {})
            return [Reply(t("no_results", route=self._route(t, d), date=fmt.day(t, depart)))]
        kept = [fmt.compact(offer) for offer in response.offers[: fmt.KEPT]]
        d.set(
            "results",
            {
                "offers": kept,
                "shown": 0,
                "demo": response.demo_data or any(o["demo"] for o in kept),
                "stale": response.stale,
                "age_seconds": response.age.seconds,
                # Who the prices are for: the trip's party may change while they are still
                # shown (a question about laps or seats comes before the next search).
                "party": _party(d.trip),
            },
        )
        return [self._page(ctx, d, header=True)]

    def _page(self, ctx: Context, d: Dialogue, *, header: bool) -> Reply:
        t, results = ctx.texts, d.results
        offers, start = results["offers"], int(results.get("shown", 0))
        page = offers[start : start + fmt.PAGE]
        lines: list[str] = []
        if header:
            lines.append(self._header(ctx, d))
            if results.get("stale"):
                lines.append(t("stale_label", age=_age(t, int(results.get("age_seconds", 0)))))
            if results.get("demo"):
                lines.append(t("demo_label"))
        for index, offer in enumerate(page, start=start + 1):
            lines.append("")
            lines.append(fmt.offer_lines(t, index, offer))
        shown = start + len(page)
        d.set("results", {**results, "shown": shown})
        lines.append("")
        lines.append(t("results_footer", last=shown) if shown > 1 else t("results_footer_one"))
        return Reply("\n".join(lines))

    def _cheaper(self, ctx: Context, d: Dialogue, *, cheapest: bool) -> list[Reply]:
        """ "the cheapest": offer 1's details; "anything cheaper?": offer 1 is the cheapest
        found, and what in the trip could cost less."""
        t, offers = ctx.texts, d.results.get("offers") or []
        if not offers or not d.trip.get("depart"):
            return [Reply(self._whats_next(ctx, d))]
        if cheapest:
            return [Reply(fmt.details(t, 1, offers[0], self._priced_for(ctx, d)))]
        day = date.fromisoformat(d.trip["depart"]) + timedelta(days=1)
        month = t.words("month_names")[day.month - 1]
        hints = [t("cheaper_hint_day", day=day.day, month=month)]
        if d.trip.get("non_stop"):
            hints.append(t("cheaper_hint_stops"))
        if d.trip.get("cabin") and d.trip["cabin"] != "economy":
            hints.append(t("cheaper_hint_cabin"))
        if len(hints) > 1:
            hints[-2:] = [f"{hints[-2]} {t('or')} {hints[-1]}"]
        return [Reply(t("cheaper", price=fmt.price(t, offers[0]), hints=", ".join(hints)))]

    def _more(self, ctx: Context, d: Dialogue) -> list[Reply]:
        offers = d.results.get("offers") or []
        if not offers:
            return [Reply(ctx.texts("nothing_to_retry"))]
        if int(d.results.get("shown", 0)) >= len(offers):
            return [Reply(ctx.texts("no_more"))]
        return [self._page(ctx, d, header=False)]

    # --- words ------------------------------------------------------------------------

    def _route(self, t: Texts, d: Dialogue) -> str:
        origin, destination = d.trip.get("origin") or {}, d.trip.get("destination") or {}
        return f"{_place_label(t, origin) or '?'} → {_place_label(t, destination) or '?'}"

    def _travellers(self, ctx: Context, d: Dialogue, party: dict[str, int] | None = None) -> str:
        """ "2 adults", "2 adults, 1 child, 1 infant": the trip's party, or ``party``."""
        t, parts = ctx.texts, []
        for key, n in (party or _party(d.trip)).items():
            if n:
                parts.append(t(f"{key}_one") if n == 1 else t(f"{key}_many", n=n))
        return ", ".join(parts)

    def _priced_for(self, ctx: Context, d: Dialogue) -> str:
        """The party the shown offers were priced for. Results kept without it were written by
        the release before children and infants were searched (a worker of it mid-upgrade):
        priced for the adults alone."""
        party = d.results.get("party")
        if isinstance(party, dict):
            return self._travellers(ctx, d, _party(party))
        return self._travellers(ctx, d, {**_party(d.trip), "children": 0, "infants": 0})

    def _header(self, ctx: Context, d: Dialogue) -> str:
        t = ctx.texts
        back = self._return_date(d)
        extras = ""
        if d.trip.get("cabin") and d.trip["cabin"] != "economy":
            extras += " · " + t(f"cabin_{d.trip['cabin']}")
        if d.trip.get("non_stop"):
            extras += " · " + t("non_stop_only")
        return t(
            "results_header",
            route=self._route(t, d),
            date=fmt.day(t, date.fromisoformat(d.trip["depart"])),
            return_part=(", " + t("return_on", date=fmt.day(t, back))) if back else "",
            travellers=self._travellers(ctx, d),
            extras=extras,
        )

    def _summary(self, ctx: Context, d: Dialogue) -> str:
        t, trip, parts = ctx.texts, d.trip, []
        origin, destination = trip.get("origin") or {}, trip.get("destination") or {}
        if origin and destination:
            parts.append(self._route(t, d))
        elif origin:
            parts.append(t("from_place", place=_place_label(t, origin)))
        elif destination:
            parts.append(t("to_place", place=_place_label(t, destination)))
        if trip.get("depart"):
            parts.append(fmt.day(t, date.fromisoformat(trip["depart"])))
        back = self._return_date(d)
        if back:
            parts.append(t("return_on", date=fmt.day(t, back)))
        if int(trip.get("adults") or 1) > 1 or trip.get("children") or trip.get("infants"):
            parts.append(self._travellers(ctx, d))
        if trip.get("cabin") and trip["cabin"] != "economy":
            parts.append(t(f"cabin_{trip['cabin']}"))
        if trip.get("non_stop"):
            parts.append(t("non_stop_only"))
        return ", ".join(parts)


def _party(trip: dict[str, Any]) -> dict[str, int]:
    """The travellers of ``trip`` (or of a results' ``party``): adults (at least 1), children,
    infants."""
    counts = {key: trip.get(key) for key in ("adults", "children", "infants")}
    party = {
        key: int(n) if isinstance(n, int | float) and n >= 0 else 0 for key, n in counts.items()
    }
    party["adults"] = party["adults"] or 1
    return party


def _too_few_laps(trip: dict[str, Any]) -> bool:
    """More infants than adults: one lap each, so not searched (see _advance)."""
    party = _party(trip)
    return party["infants"] > party["adults"]


def _period_text(t: Texts, period: Period) -> str:
    """ "at the end of December", "a mediados de diciembre", "around Christmas", "in winter
    2026/27"."""
    month = t.words("month_names")[period.month - 1]
    if period.kind in ("week", "half"):
        nth = t.words("week_ordinals")[period.week - 1]
        return t(f"period_{period.kind}", nth=nth, month=month)
    end = period.last_day().year
    years = f"{period.year}/{end % 100:02d}" if end != period.year else str(period.year)
    return t(f"period_{period.kind}", month=month, years=years)


def _period_question(t: Texts, period: Period, today: date) -> str:
    """ "Which day at the end of December?" (or "… do you come back?" for a return); a
    season's example is a day from ``today`` (for a return, from the departure)."""
    key = "ask_day_in_period" if period.leg == "depart" else "ask_return_in_period"
    question = t(key, period=_period_text(t, period))
    if period.kind in SEASONS:
        # A day alone does not say which month of the season: an example shows the whole date.
        example = period.example(today)
        month = t.words("month_names")[example.month - 1]
        question += " " + t("period_example", day=example.day, month=month)
    return question


def _place_label(t: Texts, place: dict[str, Any]) -> str:
    """ "Rome (ROM)", "Roma (ROM)": the city in the user's language, and the code."""
    if not place:
        return ""
    city, code = place.get("city") or place.get("name") or "", place.get("code", "")
    return f"{t.place(city, place.get('country', ''))} ({code})" if city else code


def _place_name(t: Texts, place: Candidate) -> str:
    """A list row's description of a place: a city code's is its city's name (the search
    service's "London (all airports)" in the user's language), an airport's its own name."""
    if place.kind == "city":
        return t("all_airports", city=t.place(place.city, place.country))
    return place.name


def _where(place: Candidate) -> str:
    """Where a list row's place is: "Missouri, US", so two Springfields can be told apart."""
    return f"{place.subdivision}, {place.country}" if place.subdivision else place.country


def _row_title(city: str, code: str) -> str:
    """A place list row's title: the city and its code, within WhatsApp's limit."""
    return _clip_keeping(city, f" ({code})", ROW_TITLE_LIMIT)


def _clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut between graphemes (UAX #29, ``\\X``): a cut
    inside one would leave half a flag, a family emoji's first person and its joiner, or an
    "e" without the accent written after it."""
    if len(text) <= limit:
        return text
    kept = 0
    for grapheme in regex.finditer(r"\X", text):
        if grapheme.end() > limit - 1:
            break
        kept = grapheme.end()
    return text[:kept] + "…"


def _clip_keeping(head: str, end: str, limit: int) -> str:
    """``head + end`` within ``limit``, shortening ``head``: the end (a code, the state and
    country) is what tells two rows apart and what the user can type back."""
    if len(end) > limit // 2:
        return _clip(head + end, limit)
    return _clip(head, limit - len(end)) + end


def _age(t: Texts, seconds: int) -> str:
    minutes = max(1, seconds // 60)
    return t("age_minutes", n=minutes) if minutes < 120 else t("age_hours", n=minutes // 60)
