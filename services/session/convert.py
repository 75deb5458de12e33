"""Checking requests and turning stored conversations into protobuf, at the gRPC edge."""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
from google.protobuf import timestamp_pb2

from parley.session.v1 import session_pb2
from services.common.errors import InvalidArgument
from services.common.interceptors import EncodedReply
from services.common.struct_values import TooDeep, python_to_value, value_to_python
from services.session import wire
from services.session.model import (
    MESSAGE_ROLES,
    Conversation,
    ConversationKey,
    Role,
    Summary,
    encode_message,
    kept,
)

MAX_ID = 128
MAX_CONTENT = 4096  # WhatsApp's own limit for a text message
MAX_APPEND = 50
MAX_PROVIDER_ID = 256
MAX_STATE_KEY = 256
MAX_STATE_CHANGES = 100  # keys set plus keys removed in one update
MAX_STATE_VALUE_BYTES = 32 * 1024
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50

ROLE_NAMES: dict[session_pb2.ConversationRole.ValueType, Role] = {
    session_pb2.CONVERSATION_ROLE_CLIENT: "client",
    session_pb2.CONVERSATION_ROLE_ADMIN: "admin",
}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}
MESSAGE_ROLE_NAMES: dict[session_pb2.MessageRole.ValueType, str] = {
    session_pb2.MESSAGE_ROLE_USER: "user",
    session_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
    session_pb2.MESSAGE_ROLE_SYSTEM: "system",
}
MESSAGE_ROLE_VALUES = {name: value for value, name in MESSAGE_ROLE_NAMES.items()}

Violations = list[tuple[str, str]]


def raise_if(violations: Violations) -> None:
    if violations:
        raise InvalidArgument(violations[0][0], violations[0][1], *violations[1:])


def check_id(value: str, field: str, violations: Violations) -> None:
    if not value:
        violations.append((field, "must not be empty"))
    elif len(value) > MAX_ID:
        violations.append((field, f"must be at most {MAX_ID} characters"))
    elif not value.isprintable():
        violations.append((field, "must not contain control or other unprintable characters"))


def conversation_key(
    request: Any, violations: Violations, field: str = "key"
) -> ConversationKey | None:
    """The request's ``key``, checked; None (with violations) when it is bad."""
    if not request.HasField("key"):
        violations.append((field, "is required"))
        return None
    key = request.key
    checked = _checked_key(key.business_id, key.user_id, key.role)
    if isinstance(checked, ConversationKey):
        return checked
    violations.extend((f"{field}.{name}", reason) for name, reason in checked)
    return None


# Every RPC checks a key, and the same live keys come in all day. Bounded: a hostile caller's
# stream of bad keys costs ≤ ~8 MB and the cost of checking them again.
@functools.lru_cache(maxsize=16384)
def _checked_key(
    business_id: str, user_id: str, role_value: int
) -> ConversationKey | tuple[tuple[str, str], ...]:
    """The key, or what is wrong with it (field names relative to the key)."""
    violations: Violations = []
    check_id(business_id, "business_id", violations)
    check_id(user_id, "user_id", violations)
    role = ROLE_NAMES.get(role_value)  # type: ignore[call-overload]
    if role is None:
        violations.append(("role", "must be CONVERSATION_ROLE_CLIENT or _ADMIN"))
    if violations:
        return tuple(violations)
    return ConversationKey(business_id, user_id, role)


def required_key(request: Any) -> ConversationKey:
    """The request's ``key`` for RPCs that take nothing else; INVALID_ARGUMENT when it is bad."""
    violations: Violations = []
    key = conversation_key(request, violations)
    raise_if(violations)
    assert key is not None  # no violations means a key
    return key


def appended_messages(
    messages: Any, violations: Violations, now_ms: int | None = None
) -> list[bytes]:
    """The messages to append, as stored (checked; each field read once)."""
    if len(messages) > MAX_APPEND:
        violations.append(("append", f"at most {MAX_APPEND} messages per update"))
        return []
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    out = []
    for i, message in enumerate(messages):
        role = MESSAGE_ROLE_NAMES.get(message.role)
        content = message.content
        provider_id = message.provider_message_id
        time_ms = _message_time(message.time) if message.HasField("time") else now_ms
        if (
            role is None
            or len(content) > MAX_CONTENT
            or len(provider_id) > MAX_PROVIDER_ID
            or time_ms < 0
        ):
            _message_violations(i, role, content, provider_id, time_ms, violations)
            continue
        if violations:
            continue
        out.append(encode_message(role, content, time_ms, provider_id))
    return out


def _message_time(time: Any) -> int:
    """A message's time in ms since the epoch; -1 for one outside Timestamp's range (years
    1-9999: protobuf raises) or before 1970, which export and import could not carry."""
    try:
        return int(time.ToMilliseconds())
    except ValueError:
        return -1


def _message_violations(
    i: int, role: str | None, content: str, provider_id: str, time_ms: int, violations: Violations
) -> None:
    if role is None:
        violations.append((f"append[{i}].role", "must be USER, ASSISTANT or SYSTEM"))
    if len(content) > MAX_CONTENT:
        violations.append((f"append[{i}].content", f"at most {MAX_CONTENT} characters"))
    if len(provider_id) > MAX_PROVIDER_ID:
        violations.append(
            (f"append[{i}].provider_message_id", f"at most {MAX_PROVIDER_ID} characters")
        )
    if time_ms < 0:
        violations.append((f"append[{i}].time", "must be a time from 1970 to 9999"))


def state_changes(
    set_state: Any, remove: Any, violations: Violations
) -> tuple[dict[str, bytes], list[str]]:
    if len(set_state) + len(remove) > MAX_STATE_CHANGES:
        reason = f"at most {MAX_STATE_CHANGES} keys set or removed per update"
        if set_state:  # each field that holds some of them
            violations.append(("set_state", reason))
        if remove:
            violations.append(("remove_state_keys", reason))
        return {}, []
    out: dict[str, bytes] = {}
    for name in set_state:  # not .items(): a protobuf map's items() iterates in Python
        if not name or len(name) > MAX_STATE_KEY:
            violations.append((_state_field(name), f"keys must be 1-{MAX_STATE_KEY} characters"))
            continue
        try:
            encoded = kept(orjson.dumps(value_to_python(set_state[name])))
        except TooDeep as error:  # valid JSON, but every later get would fail
            violations.append((_state_field(name), str(error)))
            continue
        except (ValueError, RecursionError, orjson.JSONEncodeError) as error:
            violations.append((_state_field(name), f"not a JSON value: {error}"))
            continue
        if len(encoded) > MAX_STATE_VALUE_BYTES:
            violations.append(
                (_state_field(name), f"at most {MAX_STATE_VALUE_BYTES} bytes as JSON")
            )
            continue
        out[name] = encoded
    for i, name in enumerate(remove):
        if not name or len(name) > MAX_STATE_KEY:
            violations.append(
                (f"remove_state_keys[{i}]", f"keys must be 1-{MAX_STATE_KEY} characters")
            )
    return out, list(remove)


def _state_field(name: str) -> str:
    return f"set_state[{name[:40]}]"


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)


def key_proto(key: ConversationKey) -> session_pb2.ConversationKey:
    return session_pb2.ConversationKey(
        business_id=key.business_id, user_id=key.user_id, role=ROLE_VALUES[key.role]
    )


# Stored history entries and state values are kept as their wire encoding: each one as a
# Conversation field holding only it, so a reply's history and state are their concatenation,
# appended to the encoded head (conversation_reply). An entry never changes (a new message is a
# new entry) and a state value's encoding depends only on its name and stored bytes, so a cached
# one is never stale. Each turn reads the same last ten messages of a conversation again:
# converting them one by one was most of a get's own work. Entries up to 1 KB are cached (longer
# ones are encoded every time), so a cache holds at most ~9 MB (the stored bytes and their
# encoding), ~2 MB for messages of 100 characters: the last ten messages of ~400 conversations.
# (Encoding an update's new messages from the request as they are checked, into a cache of our
# own, cost a busy server ~24 µs more per update than this functools.lru_cache.)
ENCODED_CACHE_SIZE = 4096
CACHED_ENTRY_BYTES = 1024
# Stored one-letter message roles → the enum, for the hot path below.
_STORED_ROLE_VALUES = {code: MESSAGE_ROLE_VALUES[name] for name, code in MESSAGE_ROLES.items()}


def conversation_reply(
    conversation: Conversation, created: bool, *, basic: bool = False
) -> EncodedReply:
    """A Get/UpdateConversationResponse (the two are encoded alike) in its wire encoding;
    ``basic``: id, key, version and times only (``CONVERSATION_VIEW_BASIC``).

    The head is encoded directly (:mod:`services.session.wire`) and the history and state, kept
    encoded, are appended to it (a message's fields may come in any order): nothing is built
    as a message to be serialized."""
    key = conversation.key
    parts = [
        _head_start(conversation.id, key, conversation.created_ms),
        wire.conversation_times(
            conversation.version, conversation.updated_ms, conversation.expire_ms
        ),
    ]
    if not basic:
        parts += [
            _cached_message(raw) if len(raw) <= CACHED_ENTRY_BYTES else _encoded_message(raw)
            for raw in conversation.history
        ]
        parts += [
            _cached_state(name, raw)
            if len(raw) <= CACHED_ENTRY_BYTES
            else _encoded_state(name, raw)
            for name, raw in conversation.state.items()
        ]
    return EncodedReply(wire.reply(parts, created))


@functools.lru_cache(maxsize=ENCODED_CACHE_SIZE)
def _head_start(conversation_id: str, key: ConversationKey, created_ms: int) -> bytes:
    """A conversation's head fields that never change: id, key and creation time."""
    return wire.conversation_start(conversation_id, key, ROLE_VALUES[key.role], created_ms)


def _encoded_message(raw: bytes) -> bytes:
    """One stored history entry, encoded as a Conversation's ``history`` field."""
    record = orjson.loads(raw)
    return wire.history_entry(
        _STORED_ROLE_VALUES[record["r"]], record["c"], record["t"], record.get("p", "")
    )


def _encoded_state(name: str, raw: bytes) -> bytes:
    """One stored state value, encoded as a Conversation's ``state`` entry."""
    holder = session_pb2.Conversation()
    python_to_value(orjson.loads(raw), holder.state[name])
    return holder.SerializeToString()


_cached_message = functools.lru_cache(maxsize=ENCODED_CACHE_SIZE)(_encoded_message)
_cached_state = functools.lru_cache(maxsize=ENCODED_CACHE_SIZE)(_encoded_state)


def summary_proto(summary: Summary) -> session_pb2.ConversationSummary:
    return session_pb2.ConversationSummary(
        id=summary.id,
        key=key_proto(summary.key),
        version=summary.version,
        message_count=summary.message_count,
        update_time=timestamp(summary.updated_ms),
        expire_time=timestamp(summary.expire_ms),
    )
