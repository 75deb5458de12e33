"""Checking requests and turning stored conversations into protobuf, at the gRPC edge."""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
from google.protobuf import timestamp_pb2

from parley.session.v1 import session_pb2
from services.common.errors import InvalidArgument
from services.common.struct_values import python_to_value, value_to_python
from services.session.model import (
    Conversation,
    ConversationKey,
    Role,
    Summary,
    encode_message,
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
    before = len(violations)
    check_id(key.business_id, f"{field}.business_id", violations)
    check_id(key.user_id, f"{field}.user_id", violations)
    role = ROLE_NAMES.get(key.role)
    if role is None:
        violations.append((f"{field}.role", "must be CONVERSATION_ROLE_CLIENT or _ADMIN"))
    if len(violations) > before or role is None:
        return None
    return ConversationKey(key.business_id, key.user_id, role)


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
    if len(messages) > MAX_APPEND:
        violations.append(("append", f"at most {MAX_APPEND} messages per update"))
        return []
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    out = []
    for i, message in enumerate(messages):
        role = MESSAGE_ROLE_NAMES.get(message.role)
        if role is None:
            violations.append((f"append[{i}].role", "must be USER, ASSISTANT or SYSTEM"))
        if len(message.content) > MAX_CONTENT:
            violations.append((f"append[{i}].content", f"at most {MAX_CONTENT} characters"))
        if len(message.provider_message_id) > MAX_PROVIDER_ID:
            violations.append(
                (f"append[{i}].provider_message_id", f"at most {MAX_PROVIDER_ID} characters")
            )
        if role is None or violations:
            continue
        time_ms = message.time.ToMilliseconds() if message.HasField("time") else now_ms
        out.append(encode_message(role, message.content, time_ms, message.provider_message_id))
    return out


def state_changes(
    set_state: Any, remove: Any, violations: Violations
) -> tuple[dict[str, bytes], list[str]]:
    if len(set_state) + len(remove) > MAX_STATE_CHANGES:
        violations.append(
            ("set_state", f"at most {MAX_STATE_CHANGES} keys set or removed per update")
        )
        return {}, []
    out: dict[str, bytes] = {}
    for name, value in set_state.items():
        field = f"set_state[{name[:40]}]"
        if not name or len(name) > MAX_STATE_KEY:
            violations.append((field, f"keys must be 1-{MAX_STATE_KEY} characters"))
            continue
        try:
            encoded = orjson.dumps(value_to_python(value))
        except (ValueError, RecursionError, orjson.JSONEncodeError) as error:
            violations.append((field, f"not a JSON value: {error}"))
            continue
        if len(encoded) > MAX_STATE_VALUE_BYTES:
            violations.append((field, f"at most {MAX_STATE_VALUE_BYTES} bytes as JSON"))
            continue
        out[name] = encoded
    for i, name in enumerate(remove):
        if not name or len(name) > MAX_STATE_KEY:
            violations.append(
                (f"remove_state_keys[{i}]", f"keys must be 1-{MAX_STATE_KEY} characters")
            )
    return out, list(remove)


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def key_proto(key: ConversationKey) -> session_pb2.ConversationKey:
    return session_pb2.ConversationKey(
        business_id=key.business_id, user_id=key.user_id, role=ROLE_VALUES[key.role]
    )


# Stored history entries kept converted: ~1 KB each for a short message, at most ~3 KB (longer
# ones are converted every time), so ≤ 12 MB; the last ten messages of ~400 conversations.
MESSAGE_CACHE_SIZE = 4096
CACHED_MESSAGE_BYTES = 1024
# Stored one-letter message roles → the enum, for the hot path below.
_STORED_ROLE_VALUES = {
    code: MESSAGE_ROLE_VALUES[name]
    for name, code in (("user", "u"), ("assistant", "a"), ("system", "s"))
}


def fill_conversation(
    out: session_pb2.Conversation,
    conversation: Conversation,
    key: session_pb2.ConversationKey | None = None,
    *,
    basic: bool = False,
) -> None:
    """Write ``conversation`` into ``out`` (the response's own field: no copy of the message);
    ``basic``: id, key, version and times only (``CONVERSATION_VIEW_BASIC``).

    Every get and update goes through here, so it avoids per-message helper calls.
    """
    out.id = conversation.id
    out.key.CopyFrom(key if key is not None else key_proto(conversation.key))
    out.version = conversation.version
    for field, ms in (
        (out.create_time, conversation.created_ms),
        (out.update_time, conversation.updated_ms),
        (out.expire_time, conversation.expire_ms),
    ):
        field.seconds, field.nanos = divmod(ms, 1000)
        field.nanos *= 1_000_000
    if basic:
        return
    out.history.extend(  # copied in
        [
            _cached_message(raw) if len(raw) <= CACHED_MESSAGE_BYTES else _message_proto(raw)
            for raw in conversation.history
        ]
    )
    state = out.state
    for name, raw_value in conversation.state.items():
        python_to_value(orjson.loads(raw_value), state[name])


def _message_proto(raw: bytes) -> session_pb2.Message:
    """One stored history entry as its proto."""
    record = orjson.loads(raw)
    message = session_pb2.Message(
        role=_STORED_ROLE_VALUES[record["r"]],
        content=record["c"],
        provider_message_id=record.get("p", ""),
    )
    message.time.seconds, nanos = divmod(record["t"], 1000)
    message.time.nanos = nanos * 1_000_000
    return message


# A stored entry never changes (a new message is a new entry), so converted entries are cached
# by their own bytes and a cached one is never stale. Each turn reads the same last ten messages
# of a conversation again: converting them was a third of a get's own work. Callers copy what it
# returns (``extend``) and never change it.
_cached_message = functools.lru_cache(maxsize=MESSAGE_CACHE_SIZE)(_message_proto)


def conversation_proto(conversation: Conversation) -> session_pb2.Conversation:
    proto = session_pb2.Conversation()
    fill_conversation(proto, conversation)
    return proto


def summary_proto(summary: Summary) -> session_pb2.ConversationSummary:
    return session_pb2.ConversationSummary(
        id=summary.id,
        key=key_proto(summary.key),
        version=summary.version,
        message_count=summary.message_count,
        update_time=timestamp(summary.updated_ms),
        expire_time=timestamp(summary.expire_ms),
    )
