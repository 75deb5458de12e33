"""The seam between the gateway's workers and the conversation logic.

A worker turns a queued message into a :class:`Turn` and calls ``Engine.handle`` once. The engine
answers with the replies to send and the state changes to save; the worker sends the replies,
then saves the user's message, the replies and the state changes in one session update, and only
then acknowledges the queue entry. The engine never talks to Redis or a channel itself; it may
call search through :class:`SearchPort`, and may send a reply early (``Turn.send_early``, e.g.
"searching …") before a slow search.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from parley.search.v1 import search_pb2

Channel = Literal["cloud_api", "twilio"]
MessageType = Literal[
    "text",
    "interactive",
    "button",
    "location",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "reaction",
    "unknown",
]


# When the worker stops waiting for the engine's answer (time.monotonic(), i.e. the event loop's
# clock): set around Engine.handle, ENGINE_TIMEOUT_SECONDS from its start.
message_deadline: ContextVar[float | None] = ContextVar("message_deadline", default=None)

# What a call cut short by the message's deadline leaves the engine to answer with (an apology,
# the rules' reading) before the worker gives up on the whole message.
ANSWER_MARGIN_SECONDS = 0.5


def time_left(timeout: float, *, after: float = 0.0) -> float:
    """``timeout``, or less when the message's deadline comes sooner: a call started late in the
    message's budget then ends in time to be answered as its own timeout is, rather than running
    past the deadline and failing the whole message (retried, then dead-lettered). ``after``:
    time kept for what must still run after this call."""
    deadline = message_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - ANSWER_MARGIN_SECONDS - after - time.monotonic()
    return max(0.0, min(timeout, left))


@dataclass(frozen=True)
class InboundMessage:
    """One normalized user message, whatever channel it came from."""

    channel: Channel
    provider_message_id: str  # wamid or Twilio MessageSid: the dedupe key
    channel_identity: str  # Cloud API phone_number_id, or the Twilio "To" number (E.164)
    user_id: str  # wa_id, or the sender's E.164 number on Twilio
    type: MessageType
    timestamp: datetime
    text: str = ""  # the text, caption, or the title of a chosen button or list row
    profile_name: str = ""
    business_scoped_user_id: str = ""  # Cloud API "user_id" when present
    # Type-specific: interactive/button {"reply_id", "title"}; location {"latitude",
    # "longitude", "name", "address"}; media {"media_id", "mime_type", "caption", "filename"};
    # reaction {"emoji", "message_id"}; unknown {"raw_type"}, and for Meta's "unsupported",
    # "unsupported_type" (what it could not pass on: "poll_creation", "reaction", ...).
    payload: dict[str, Any] = field(default_factory=dict)


# What Meta's "unsupported" message may stand for that acts on a message already in the chat (a
# reaction it could not pass on, a pin, a vote, keeping a disappearing message): no new message.
UNSUPPORTED_NOTICES = frozenset({"reaction", "pin", "keep_in_chat", "poll_update"})
# Meta's message types that are notices: the user changed number (`system`), deleted (`revoke`)
# or edited (`edit`) a message they had sent, the last two for numbers also on the Business app.
NOTICE_TYPES = frozenset({"system", "revoke", "edit"})


def is_notice(message: InboundMessage) -> bool:
    """A reaction (a 👍 on a reply, or its removal, also one Meta passes on as ``unsupported``),
    a pin or a vote, a message deleted or edited, or Meta's ``system`` notice (the user changed
    number): nothing the user asked. The conversation engine answers none, and the worker shows
    no typing indicator for them: Meta dismisses it only at a reply or after 25 s, and asks to
    show it only when a reply will come."""
    if message.type == "reaction":
        return True
    raw_type = message.payload.get("raw_type") if message.type == "unknown" else None
    return raw_type in NOTICE_TYPES or (
        raw_type == "unsupported" and message.payload.get("unsupported_type") in UNSUPPORTED_NOTICES
    )


@dataclass(frozen=True)
class Button:
    id: str  # returned as InboundMessage.payload["reply_id"] when tapped (at most 256 chars)
    title: str  # at most 20 characters (Cloud API limit)


@dataclass(frozen=True)
class ListRow:
    id: str
    title: str  # at most 24 characters
    description: str = ""  # at most 72 characters


@dataclass(frozen=True)
class Reply:
    """One outgoing message. Senders render buttons and rows natively on the Cloud API and as
    numbered text on Twilio."""

    text: str
    buttons: tuple[Button, ...] = ()  # at most 3
    list_button: str = ""  # the label that opens the list, when rows are given
    rows: tuple[ListRow, ...] = ()  # at most 10


@dataclass(frozen=True)
class BusinessContext:
    id: str
    name: str
    locale: str  # BCP 47, e.g. "en", "es"
    time_zone: str  # IANA
    channel: Channel


@dataclass(frozen=True)
class ConversationView:
    id: str
    version: int
    state: dict[str, Any]
    history: tuple[tuple[str, str], ...]  # (role, content), oldest first


@dataclass
class Turn:
    business: BusinessContext
    conversation: ConversationView
    message: InboundMessage
    now: datetime  # aware, in UTC; the engine converts to the business's time zone
    send_early: Callable[[Reply], Awaitable[None]]


@dataclass
class TurnResult:
    replies: list[Reply] = field(default_factory=list)
    set_state: dict[str, Any] = field(default_factory=dict)  # JSON values
    remove_state: list[str] = field(default_factory=list)


class SearchPort(Protocol):
    """What the engine needs of SearchService; the generated async stub satisfies it."""

    def SearchFlights(
        self, request: search_pb2.SearchFlightsRequest, *, timeout: float | None = ...
    ) -> Awaitable[search_pb2.SearchFlightsResponse]: ...

    def ResolvePlace(
        self, request: search_pb2.ResolvePlaceRequest, *, timeout: float | None = ...
    ) -> Awaitable[search_pb2.ResolvePlaceResponse]: ...

    def FindNearestAirports(
        self, request: search_pb2.FindNearestAirportsRequest, *, timeout: float | None = ...
    ) -> Awaitable[search_pb2.FindNearestAirportsResponse]: ...


class Engine(Protocol):
    """``handle`` is the whole contract. An engine may also have ``describe()`` (for
    ``/health/detailed``), ``rate_notice(locale) -> str``: the words of the one notice a user
    over their rate limit gets, in the business's language (else the worker's, in English), and
    ``async aclose()``, awaited once when the gateway stops, to close what it opened."""

    async def handle(self, turn: Turn) -> TurnResult: ...


class FallbackEngine:
    """Used only when the conversation engine (``services.gateway.bot``) is not installed: every
    message gets one plain notice, so the pipeline can be run and observed end to end."""

    NOTICE = "Thanks for your message. Our assistant is not available right now."

    async def handle(self, turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(self.NOTICE)])

    def describe(self) -> dict[str, Any]:
        return {"engine": "fallback", "reason": "services.gateway.bot is not installed"}
