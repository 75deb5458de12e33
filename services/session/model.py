"""Conversations as the stores keep them, and the Redis key layout.

Every key of one conversation shares the hash tag ``{<business>:<shard>}``, where the shard is
``crc32("<role>:<user>") % INDEX_SHARDS``; the per-business index shard
``conversation-index:{<business>:<shard>}`` carries the same tag, so one Lua script updates a
conversation and its index entry in one Cluster slot, while one business still spreads over
``INDEX_SHARDS`` slots. Ids are percent-encoded in key names, so ``:``, ``{``, ``}`` or glob
characters in an id can neither break the layout nor a SCAN pattern.

Messages and state values are stored as JSON text and passed through untouched between Redis,
the in-memory fallback and export files; only the gRPC edge turns them into protobuf.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from urllib.parse import quote, unquote

import orjson

from services.common.errors import FailedPrecondition

INDEX_SHARDS = 16
# A conversation's state, in all: a reply must stay well inside gRPC's 4 MiB message limit, or
# every later get of the conversation would fail. Bytes count each key and its JSON value.
MAX_STATE_KEYS = 256
MAX_STATE_BYTES = 1024 * 1024
Role = Literal["client", "admin"]
ROLES: tuple[Role, ...] = ("client", "admin")
KEY_PREFIX = "conversation:"
INDEX_PREFIX = "conversation-index:"
ENDED_PREFIX = "conversation-ended:"
ERASED_PREFIX = "conversation-erased:"
# Characters kept as they are in key names; everything else is percent-encoded.
_SAFE = "+@"


def encode_id(value: str) -> str:
    return quote(value, safe=_SAFE)


class ConversationKey(NamedTuple):
    """Whose conversation: a tuple, so building, hashing and comparing one is cheap (every RPC
    does each several times)."""

    business_id: str
    user_id: str
    role: Role

    @property
    def member(self) -> str:
        """This conversation's entry in its business's index shard."""
        return _layout(self)[1]

    @property
    def shard(self) -> int:
        return zlib.crc32(f"{self.role}:{self.user_id}".encode()) % INDEX_SHARDS

    @property
    def tag(self) -> str:
        return f"{{{encode_id(self.business_id)}:{self.shard}}}"

    def redis_keys(self) -> tuple[str, str, str, str]:
        """meta, history, state, index: the KEYS of every script."""
        return _layout(self)[0]

    @classmethod
    def from_meta_key(cls, key: str) -> ConversationKey | None:
        """Parse ``conversation:{b:s}:role:user:meta``; None for anything else."""
        if not (key.startswith(KEY_PREFIX + "{") and key.endswith(":meta")):
            return None
        body = key[len(KEY_PREFIX) + 1 : -len(":meta")]
        tag, sep, rest = body.partition("}:")
        business, _, _shard = tag.rpartition(":")
        role, _, user = rest.partition(":")
        if not sep or role not in ROLES or not user or not business:
            return None
        return cls(unquote(business), unquote(user), role)


@functools.lru_cache(maxsize=65536)  # the same few thousand live keys are asked for all day
def _layout(key: ConversationKey) -> tuple[tuple[str, str, str, str], str]:
    """(the Redis keys, the index member) of one conversation."""
    member = f"{key.role}:{encode_id(key.user_id)}"
    prefix = f"{KEY_PREFIX}{key.tag}:{member}"
    keys = (
        f"{prefix}:meta",
        f"{prefix}:history",
        f"{prefix}:state",
        index_key(key.business_id, key.shard),
    )
    return keys, member


def new_conversation_id() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())`` at a third of the cost, for
    every get and update passes one in case it creates the conversation."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def index_key(business_id: str, shard: int) -> str:
    return f"{INDEX_PREFIX}{{{encode_id(business_id)}:{shard}}}"


def ended_key(key: ConversationKey) -> str:
    """The ids of the conversations recently ended in ``key``'s shard (its tag, its slot)."""
    return f"{ENDED_PREFIX}{key.tag}"


def erased_key(key: ConversationKey) -> str:
    """When the users of ``key``'s shard last had their conversation ended (its tag, its slot)."""
    return f"{ERASED_PREFIX}{key.tag}"


# The guides' old keys, which name no business: ``migrate legacy`` imports them into one
# business, keeps each for rollback (7 days) and records it in that business's ledger.
LEGACY_PREFIXES: dict[str, Role] = {"chat:customer:": "client", "admin:context:": "admin"}


def legacy_key(key: ConversationKey) -> str:
    """The old key ``key``'s conversation would have been migrated from."""
    prefix = next(p for p, role in LEGACY_PREFIXES.items() if role == key.role)
    return prefix + key.user_id


def ledger_key(business_id: str) -> str:
    """The legacy keys migrated into ``business_id`` (field: the old key, value: the id)."""
    return f"conversation-migration:{{{encode_id(business_id)}}}"


def parse_member(member: str) -> tuple[Role, str] | None:
    role, _, user = member.partition(":")
    if role not in ROLES or not user:
        return None
    return role, unquote(user)


@dataclass(slots=True)
class Conversation:
    """One conversation; ``history`` and ``state`` values are JSON text (bytes)."""

    id: str
    key: ConversationKey
    history: list[bytes]
    state: dict[str, bytes]
    version: int
    created_ms: int
    updated_ms: int
    expire_ms: int

    def expiring_at(self, expire_ms: int) -> Conversation:
        """The same conversation with another expiry, sharing history and state: a conversation
        is never changed in place once a store has handed it out."""
        return Conversation(
            self.id,
            self.key,
            self.history,
            self.state,
            self.version,
            self.created_ms,
            self.updated_ms,
            expire_ms,
        )

    def changed(
        self,
        append: list[bytes],
        set_state: dict[str, bytes],
        remove_state: list[str],
        history_limit: int,
        updated_ms: int,
        expire_ms: int,
    ) -> Conversation:
        """The next version, as the UPDATE script makes it: messages appended and the history
        then trimmed to the limit (only when appending, as the script does), state keys set and
        then removed. A new object: this one is kept."""
        history = self.history
        if append:
            history = history + append
            del history[:-history_limit]
        state = {**self.state, **set_state}
        for name in remove_state:
            state.pop(name, None)
        return Conversation(
            self.id,
            self.key,
            history,
            state,
            self.version + 1,
            self.created_ms,
            updated_ms,
            expire_ms,
        )

    def copy(self) -> Conversation:
        return Conversation(
            self.id,
            self.key,
            list(self.history),
            dict(self.state),
            self.version,
            self.created_ms,
            self.updated_ms,
            self.expire_ms,
        )

    def to_json(self) -> dict[str, object]:
        """The export / import record (one JSON Lines row)."""
        return {
            "business_id": self.key.business_id,
            "user_id": self.key.user_id,
            "role": self.key.role,
            "id": self.id,
            "version": self.version,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "expire_ms": self.expire_ms,
            "history": [orjson.loads(m) for m in self.history],
            "state": {k: orjson.loads(v) for k, v in self.state.items()},
        }

    @classmethod
    def from_json(cls, record: dict[str, object]) -> Conversation:
        """Inverse of :meth:`to_json`; raises ValueError naming what is wrong. Types are checked,
        not converted: a null must not become a user called "None"."""
        try:
            role = record["role"]
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}")
            key = ConversationKey(
                _text(record["business_id"], "business_id"),
                _text(record["user_id"], "user_id"),
                role,
            )
            history = record.get("history") or []
            state = record.get("state") or {}
            if not isinstance(history, list) or not isinstance(state, dict):
                raise ValueError("history must be a list and state an object")
            return cls(
                id=_text(record["id"], "id"),
                key=key,
                history=[_stored_message(m) for m in history],
                state={str(k): orjson.dumps(v) for k, v in state.items()},
                version=_whole(record["version"], "version", 1),
                created_ms=_time(record["created_ms"], "created_ms"),
                updated_ms=_time(record["updated_ms"], "updated_ms"),
                expire_ms=_time(record["expire_ms"], "expire_ms"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"bad conversation record: {error}") from None


# Redis's Lua numbers are doubles: a version past this would not count on exactly.
MAX_WHOLE = 2**53 - 1
# The last millisecond of the year 9999: replies carry times as google.protobuf.Timestamp, which
# ends there (json_format, the admin API's view of a conversation, refuses a later one).
MAX_TIME_MS = 253_402_300_799_999


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _whole(value: object, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_WHOLE:
        raise ValueError(f"{name} must be a whole number from {low} to 2**53 - 1")
    return value


def _time(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIME_MS:
        raise ValueError(f"{name} must be whole milliseconds from 1970 to the year 9999")
    return value


def state_size(state: dict[str, bytes]) -> int:
    """The bytes the state bounds count: each key (UTF-8) and its JSON value."""
    return sum(len(name.encode()) + len(value) for name, value in state.items())


class StateTooLarge(FailedPrecondition):
    """An update would grow a conversation's state past its bounds: nothing was written."""

    def __init__(self, keys: int, size: int) -> None:
        super().__init__(
            f"the conversation's state would hold {keys} keys and {size} bytes, past its bounds "
            f"({MAX_STATE_KEYS} keys, {MAX_STATE_BYTES} bytes): remove keys first"
        )


def check_state_bounds(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Refuse a change that leaves the state past a bound and larger there than it was (so a
    state already past one, written before the bounds, can still shrink)."""
    keys, size = len(after), state_size(after)
    if (keys > MAX_STATE_KEYS and keys > len(before)) or (
        size > MAX_STATE_BYTES and size > state_size(before)
    ):
        raise StateTooLarge(keys, size)


@dataclass(frozen=True, slots=True)
class Summary:
    id: str
    key: ConversationKey
    version: int
    message_count: int
    updated_ms: int
    expire_ms: int


@dataclass(slots=True)
class Page:
    items: list[Summary] = field(default_factory=list)
    next_token: str = ""


# Message roles as stored: one letter each, as history is most of a conversation's memory.
MESSAGE_ROLES = {"user": "u", "assistant": "a", "system": "s"}
STORED_ROLES = {v: k for k, v in MESSAGE_ROLES.items()}


def encode_message(role: str, content: str, time_ms: int, provider_message_id: str = "") -> bytes:
    record: dict[str, object] = {"r": MESSAGE_ROLES[role], "c": content, "t": time_ms}
    if provider_message_id:
        record["p"] = provider_message_id
    return kept(orjson.dumps(record))


def kept(raw: bytes) -> bytes:
    """``raw`` in a block of its own size, for bytes that are kept (history, state).

    orjson writes every output into a buffer of at least 4 KiB and hands that block over as the
    bytes object: a 100-byte message kept from it holds 4 KiB. The fallback's copy of each
    conversation (up to SESSION_FALLBACK_MAX_CONVERSATIONS) kept its updates' messages and state
    that way, 40-60 KiB a conversation for ~8 KiB of content."""
    return bytes(memoryview(raw))


def decode_message(raw: bytes) -> tuple[str, str, int, str]:
    """(role, content, time_ms, provider_message_id) of a stored message."""
    record = orjson.loads(raw)
    return STORED_ROLES[record["r"]], record["c"], int(record["t"]), record.get("p", "")


def _stored_message(message: object) -> bytes:
    """A message as written by :meth:`Conversation.to_json` (the stored short form), checked."""
    if not isinstance(message, dict):
        raise ValueError("history entries must be objects")
    role = STORED_ROLES.get(str(message.get("r")))
    content = message.get("c")
    if role is None or not isinstance(content, str):
        raise ValueError("history entry needs r (u, a or s) and c (text)")
    return encode_message(
        role, content, _time(message.get("t", 0), "t"), _text(message.get("p", ""), "p")
    )


# Page tokens: which index shard, and the (expiry, member) last returned in it.
@dataclass(frozen=True, slots=True)
class Cursor:
    shard: int = 0
    after_score: int | None = None
    after_member: str = ""


def encode_cursor(cursor: Cursor) -> str:
    raw = orjson.dumps([cursor.shard, cursor.after_score, cursor.after_member])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """Raises ValueError for anything that is not a token this service made."""
    if not token:
        return Cursor()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        shard, score, member = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ValueError("not a page token from this service") from None
    if not (isinstance(shard, int) and 0 <= shard < INDEX_SHARDS):
        raise ValueError("not a page token from this service")
    if not (score is None or isinstance(score, int)) or not isinstance(member, str):
        raise ValueError("not a page token from this service")
    return Cursor(shard, score, member)


# A token names the listing it continues too (AIP-158): a position is only meaningful in the
# business's index and with the role filter it was read with, and another listing's token
# would silently skip that listing's first shards.
def _listing(business_id: str, role: Role | None) -> str:
    digest = hashlib.blake2s(f"{business_id}\0{role or ''}".encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode()


def listing_token(token: str, business_id: str, role: Role | None) -> str:
    """A store's page token, tied to the listing (business and role) it came from."""
    return f"{token}.{_listing(business_id, role)}" if token else ""


def listing_cursor(token: str, business_id: str, role: Role | None) -> Cursor:
    """The position of a :func:`listing_token`; ValueError for another listing's token or one
    this service did not make. A token without its listing (a release before) is taken."""
    position, dot, listing = token.partition(".")
    if dot and listing != _listing(business_id, role):
        raise ValueError(
            "a page token of another listing: send the business_id and role it came with"
        )
    return decode_cursor(position)
