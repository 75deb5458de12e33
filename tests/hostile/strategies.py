"""Hypothesis strategies for hostile webhooks: valid, truncated, wrongly typed, huge, deeply
nested and unusual-Unicode Cloud API and Twilio payloads."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from hypothesis import strategies as st

from services.gateway.channels import cloud_api

# Text that stresses parsers: every Unicode category (surrogates, controls, RTL marks, zero
# widths, emoji), plus words that mean something to a number parser or a template.
WEIRD_WORDS = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "1e400",
    "-0",
    "0x10",
    "9" * 5000,  # past int()'s 4300-digit limit
    "²",  # a digit to str.isdigit(), not to int()
    "١٢",  # Arabic-Indic digits
    "{0}",
    "%s%n",
    "${jndi:x}",
    "\u202e\u200f\u200b\ufeff",
    "\x00\x01\x7f",
    "\ud800",
    "🏳️‍🌈👨‍👩‍👧‍👦",
    "ﷺ" * 50,
    "Z̴̡̛̞̦a̷̧̦̫l̷̢̛g̴o̶",
    "whatsapp:",
    "whatsapp:+",
    "+15550100001",
    "../../etc/passwd",
    "<Response/>",
    "'; DROP TABLE x;--",
    "LHR to JFK tomorrow",
    "hi",
    "1",
    "retry",
]
weird_text = st.one_of(
    st.sampled_from(WEIRD_WORDS),
    st.text(st.characters(codec=None), max_size=40),
    st.text(st.characters(categories=("Cs", "Cc", "Cf", "Co", "Zs", "Mn", "So")), max_size=20),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    weird_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "type", "text", "body", "from", "x"]) | weird_text,
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)

MESSAGE_KINDS = [
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
    "unsupported",
    "contacts",
    "order",
    "system",
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a JSON tree (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        path = (*prefix, key)
        found.append(path)
        found.extend(_paths(child, path))
    return found


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def nested(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def cloud_message(kind: str, wa_id: str, text: str) -> dict[str, Any]:
    body: dict[str, Any]
    if kind == "text":
        body = {"body": text}
    elif kind == "interactive":
        body = {"type": "button_reply", "button_reply": {"id": "place:1", "title": text}}
    elif kind == "button":
        body = {"text": text, "payload": text}
    elif kind == "location":
        body = {"latitude": 51.47, "longitude": -0.45, "name": text, "address": text}
    elif kind == "reaction":
        body = {"emoji": "👍", "message_id": "wamid.x"}
    else:
        body = {"id": "media-1", "mime_type": "image/jpeg", "caption": text}
    return {
        "from": wa_id,
        "id": f"wamid.h.{secrets.token_hex(10)}",
        "timestamp": str(int(time.time())),  # within the 24-hour reply window
        "type": kind,
        kind: body,
    }


@st.composite
def cloud_bodies(draw: st.DrawFn, pnid: str) -> tuple[str, bytes]:
    """(what it is, the raw body)."""
    kind = draw(
        st.sampled_from(
            ["valid", "typed", "deleted", "truncated", "huge", "nested", "garbage", "unicode"]
        )
    )
    pnids = [pnid, "", "0", "1" * 30, secrets.token_hex(4)]
    wa_id = draw(st.sampled_from(["15551230000", "1", "", "+44 7700 900123", "x" * 64]))
    messages = [
        cloud_message(draw(st.sampled_from(MESSAGE_KINDS)), wa_id, draw(weird_text))
        for _ in range(draw(st.integers(1, 3)))
    ]
    payload: Any = cloud_api.notification(
        draw(st.sampled_from(pnids)), messages, [{"profile": {"name": "Ann"}, "wa_id": wa_id}]
    )
    if kind in ("typed", "deleted"):
        for _ in range(draw(st.integers(1, 4))):
            paths = _paths(payload)
            if not paths:
                break
            path = draw(st.sampled_from(paths))
            _set(payload, path, draw(json_values), delete=kind == "deleted")
    if kind == "unicode":
        payload = json.loads(json.dumps(payload))
        for path in _paths(payload):
            if isinstance(_get(payload, path), str) and draw(st.booleans()):
                _set(payload, path, draw(weird_text))
    if kind == "huge":
        size = draw(st.sampled_from([10_000, 200_000, 262_000, 300_000, 2_000_000]))
        where = draw(st.sampled_from(["text", "messages", "key"]))
        if where == "text":
            messages[0]["text"] = {"body": "a" * size}
        elif where == "messages":
            one = messages[0]
            payload = cloud_api.notification(pnid, [one] * max(1, size // 200), [])
        else:
            payload["x" * size] = 1
    if kind == "nested":
        depth = draw(st.sampled_from([10, 100, 500, 900, 990, 1000, 1010, 1023, 1100, 5000]))
        shape = draw(st.sampled_from(["list", "dict"]))
        where = draw(st.sampled_from(["entry", "changes", "value", "message", "root_key"]))
        deep = nested(depth, kind=shape)
        change = payload["entry"][0]["changes"][0]
        if where == "entry":
            payload["entry"] = [deep]
        elif where == "changes":
            payload["entry"][0]["changes"] = [deep]
        elif where == "value":
            change["value"] = deep
        elif where == "message":
            change["value"]["messages"] = [deep]
        else:
            payload["deep"] = deep
    if kind == "garbage":
        return kind, draw(st.binary(max_size=300))
    try:
        text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    except RecursionError:
        text = dump_deep(payload)
    body = text.encode("utf-8", "surrogatepass")
    if kind == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    return kind, body


def dump_deep(value: Any) -> str:
    """json.dumps without recursion (for payloads nested past Python's recursion limit)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, list):
            stack.append(_Raw("]"))
            for i, child in reversed(list(enumerate(item))):
                stack.append(child)
                if i:
                    stack.append(_Raw(","))
            stack.append(_Raw("["))
        elif isinstance(item, dict):
            stack.append(_Raw("}"))
            for i, (key, child) in reversed(list(enumerate(item.items()))):
                stack.append(child)
                stack.append(_Raw(json.dumps(key) + ":"))
                if i:
                    stack.append(_Raw(","))
            stack.append(_Raw("{"))
        else:
            out.append(json.dumps(item))
    return "".join(out)


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text


TWILIO_FIELDS = [
    "MessageSid",
    "SmsMessageSid",
    "AccountSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "ProfileName",
    "WaId",
    "MessageType",
    "ButtonText",
    "ButtonPayload",
    "Latitude",
    "Longitude",
    "Label",
    "Address",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
]


@st.composite
def twilio_forms(draw: st.DrawFn, number: str) -> tuple[str, list[tuple[str, str]] | bytes]:
    """(what it is, the form pairs, or raw bytes for a body that is not a form)."""
    kind = draw(st.sampled_from(["valid", "typed", "missing", "extra", "huge", "garbage"]))
    sender = draw(st.sampled_from(["+15551230000", "", "+", "x" * 64, "+44 7700 900123"]))
    form: dict[str, str] = {
        "MessageSid": "SM" + secrets.token_hex(16),
        "AccountSid": "AC" + secrets.token_hex(16),
        "From": f"whatsapp:{sender}",
        "To": f"whatsapp:{draw(st.sampled_from([number, '', '+1', number + '0']))}",
        "Body": draw(weird_text),
        "NumMedia": "0",
        "ProfileName": draw(weird_text),
        "WaId": sender.lstrip("+"),
    }
    if kind == "typed":
        for name in draw(st.lists(st.sampled_from(TWILIO_FIELDS), min_size=1, max_size=5)):
            form[name] = draw(weird_text)
    if kind == "missing":
        for name in draw(st.lists(st.sampled_from(list(form)), min_size=1, max_size=4)):
            form.pop(name, None)
    if kind == "extra":
        form.update(draw(st.dictionaries(weird_text, weird_text, max_size=5)))
        if draw(st.booleans()):
            form["Latitude"], form["Longitude"] = draw(
                st.sampled_from(
                    [
                        ("nan", "nan"),
                        ("inf", "1"),
                        ("1e400", "0"),
                        ("91", "181"),
                        ("-90", "-180"),
                        ("x", "1"),
                        ("", "1"),
                    ]
                )
            )
    if kind == "huge":
        form["Body"] = "b" * draw(st.sampled_from([5_000, 100_000, 300_000]))
    if kind == "garbage":
        return kind, draw(st.binary(max_size=300))
    pairs = [
        (k, v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for k, v in form.items()
    ]
    return kind, [
        (k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), v) for k, v in pairs
    ]
