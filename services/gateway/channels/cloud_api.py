"""WhatsApp Cloud API webhooks: the X-Hub-Signature-256 check and the JSON payload.

Every entry, every change and every message is handled, not only the first. Statuses (sent,
delivered, read, failed) come back separately: they are metrics and log lines, not messages; so
are messages written in a group (they carry a ``group_id``), which the bot does not answer.
Anything signed and well-formed that we cannot use is returned as an ``Unusable`` item, which the
webhook handler dead-letters while still answering 200 so Meta stops retrying.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.gateway.channels import check_ids
from services.gateway.engine import InboundMessage, MessageType

SIGNATURE_HEADER = "x-hub-signature-256"
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


class MalformedPayload(ValueError):
    """The body is not a Cloud API webhook at all (400)."""


@dataclass(frozen=True)
class Status:
    """A delivery status of a message we sent."""

    message_id: str
    status: str  # sent, delivered, read, failed (or whatever Meta adds)
    recipient_id: str
    phone_number_id: str
    error_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Unusable:
    """A signed item we cannot turn into a message; dead-lettered with its reason."""

    reason: str
    item: Any


@dataclass
class Parsed:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)
    group_messages: int = 0  # written in a group: counted, never answered (see _parse_change)


def sign(body: bytes, secret: str) -> str:
    """The header value Meta sends: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, header: str, secret: str) -> bool:
    """Constant-time comparison of the header against the expected signature."""
    return hmac.compare_digest(sign(body, secret).encode(), header.strip().encode())


def notification(
    phone_number_id: str,
    messages: list[Any],
    contacts: list[Any],
    display_phone_number: str = "15550100001",
) -> dict[str, Any]:
    """A ``messages`` notification as the Cloud API posts it (one entry, one change): the shape
    :func:`parse` reads, built for the dev chat client, the tests and the benchmarks."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": contacts,
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }


def phone_number_ids(payload: Any) -> list[str]:
    """The distinct ``metadata.phone_number_id`` values of a payload (for per-business secrets).

    Read before any signature is checked, so anyone's body: a dict keeps them, as a list did
    at a cost that grew with the square of their number (a 3 MB body naming 64,000 ids held
    the event loop for 17 s)."""
    found: dict[str, None] = {}
    for entry in _list(payload.get("entry") if isinstance(payload, dict) else None):
        for change in _list(entry.get("changes") if isinstance(entry, dict) else None):
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(pnid, str | int):
                found[str(pnid)] = None
    return list(found)


def parse(payload: Any) -> Parsed:
    """Every message and status of a webhook payload (already JSON-decoded)."""
    if not isinstance(payload, dict):
        raise MalformedPayload("the body must be a JSON object")
    parsed = Parsed()
    entries = payload.get("entry")
    if not isinstance(entries, list):
        parsed.unusable.append(Unusable("no entry list", payload))
        return parsed
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            parsed.unusable.append(Unusable("entry without changes", entry))
            continue
        for change in changes:
            _parse_change(change, parsed)
    return parsed


def _parse_change(change: Any, parsed: Parsed) -> None:
    value = change.get("value") if isinstance(change, dict) else None
    if not isinstance(value, dict):
        parsed.unusable.append(Unusable("change without value", change))
        return
    if change.get("field", "messages") != "messages":
        parsed.unusable.append(Unusable(f"field {change.get('field')!r} is not handled", change))
        return
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if not isinstance(pnid, str | int) or not str(pnid):
        parsed.unusable.append(Unusable("change without metadata.phone_number_id", change))
        return
    phone_number_id = str(pnid)
    # A contact is found by its phone number (`wa_id`), or by its business-scoped user id
    # (`user_id`) for a user with a username who shares no phone number (no `wa_id` then).
    contacts = {
        str(key): c
        for c in _list(value.get("contacts"))
        if isinstance(c, dict)
        for key in (c.get("user_id"), c.get("wa_id"))
        if key
    }
    raw_messages = value.get("messages")
    raw_statuses = value.get("statuses")
    errors = [e for e in _list(value.get("errors")) if isinstance(e, dict)]
    if errors:
        # Meta's errors webhook: a system-, app- or account-level problem kept a request from
        # being processed. Nothing to answer; recorded with what Meta said, for the operator.
        parsed.unusable.append(Unusable(f"Meta reported errors: {_describe(errors)}", change))
    elif raw_messages is None and raw_statuses is None:
        parsed.unusable.append(Unusable("change with neither messages nor statuses", change))
    for raw in _list(raw_messages):
        if isinstance(raw, dict) and raw.get("group_id"):
            # Written in a group the number is in (Groups API; `from` is the participant): the
            # bot answers one-to-one chats, and its reply would go to the participant's own chat.
            parsed.group_messages += 1
            continue
        try:
            parsed.messages.append(_message(raw, phone_number_id, contacts))
        except (KeyError, TypeError, ValueError) as error:
            parsed.unusable.append(Unusable(f"unusable message: {error}", raw))
    for raw in _list(raw_statuses):
        try:
            parsed.statuses.append(_status(raw, phone_number_id))
        except (KeyError, TypeError, ValueError) as error:
            parsed.unusable.append(Unusable(f"unusable status: {error}", raw))


def _message(raw: Any, phone_number_id: str, contacts: dict[str, Any]) -> InboundMessage:
    if not isinstance(raw, dict):
        raise TypeError("message is not an object")
    message_id = _text(raw.get("id"))
    sender = _text(raw.get("from")) or _text(raw.get("from_user_id"))
    if not message_id or not sender:
        raise ValueError("message without id or sender")
    check_ids(sender, message_id)
    contact = contacts.get(sender, {})
    profile = contact.get("profile") if isinstance(contact, dict) else None
    kind = _text(raw.get("type")) or "unknown"
    message_type, text, payload = _content(kind, raw)
    return InboundMessage(
        channel="cloud_api",
        provider_message_id=message_id,
        channel_identity=phone_number_id,
        user_id=sender,
        type=message_type,
        timestamp=_timestamp(raw.get("timestamp")),
        text=text,
        profile_name=_text(profile.get("name")) if isinstance(profile, dict) else "",
        business_scoped_user_id=_text(raw.get("from_user_id"))
        or (_text(contact.get("user_id")) if isinstance(contact, dict) else ""),
        payload=payload,
    )


def _content(kind: str, raw: dict[str, Any]) -> tuple[MessageType, str, dict[str, Any]]:
    body = raw.get(kind)
    body = body if isinstance(body, dict) else {}
    if kind == "text":
        return "text", _text(body.get("body")), {}
    if kind == "interactive":
        reply_kind = _text(body.get("type"))
        reply = body.get(reply_kind) if reply_kind else None
        if isinstance(reply, dict):
            payload = {"reply_id": _text(reply.get("id")), "title": _text(reply.get("title"))}
            if reply.get("description"):
                payload["description"] = _text(reply.get("description"))
            payload["kind"] = reply_kind
            return "interactive", payload["title"], payload
        return "unknown", "", {"raw_type": f"interactive/{reply_kind}"}
    if kind == "button":
        title = _text(body.get("text"))
        return "button", title, {"reply_id": _text(body.get("payload")), "title": title}
    if kind == "location":
        location: dict[str, Any] = {
            "latitude": coordinate(body["latitude"], 90),
            "longitude": coordinate(body["longitude"], 180),
            "name": _text(body.get("name")),
            "address": _text(body.get("address")),
        }
        return "location", str(location["name"] or location["address"]), location
    if kind in MEDIA_TYPES:
        media_type: MessageType = kind  # type: ignore[assignment]
        payload = {
            "media_id": _text(body.get("id")),
            "mime_type": _text(body.get("mime_type")),
            "caption": _text(body.get("caption")),
            "filename": _text(body.get("filename")),
        }
        return media_type, payload["caption"], payload
    if kind == "reaction":
        return (
            "reaction",
            "",
            {"emoji": _text(body.get("emoji")), "message_id": _text(body.get("message_id"))},
        )
    if kind == "unsupported":
        # Meta names what it could not pass on (`unsupported.type`): a reaction or a pin is no
        # message the user wrote, and must not be answered as one (see engine.is_notice).
        return "unknown", "", {"raw_type": kind, "unsupported_type": _text(body.get("type"))}
    return "unknown", "", {"raw_type": kind}


def _status(raw: Any, phone_number_id: str) -> Status:
    if not isinstance(raw, dict):
        raise TypeError("status is not an object")
    codes = tuple(
        int(e["code"])
        for e in _list(raw.get("errors"))
        if isinstance(e, dict) and isinstance(e.get("code"), int)
    )
    status = _text(raw.get("status"))
    if not status:
        raise ValueError("status without a status")
    return Status(
        message_id=_text(raw.get("id")),
        status=status,
        recipient_id=_text(raw.get("recipient_id")),
        phone_number_id=phone_number_id,
        error_codes=codes,
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    """``130429 Rate limit hit (Cloud API message throughput has been reached.)``, one per error."""
    described = []
    for error in errors:
        data = error.get("error_data")
        details = _text(data.get("details")) if isinstance(data, dict) else ""
        text = f"{_text(error.get('code'))} {_text(error.get('title'))}".strip()
        described.append(f"{text} ({details})" if details else text)
    return "; ".join(described)[:500]


def coordinate(value: Any, limit: float) -> float:
    """A finite latitude (limit 90) or longitude (180); ValueError otherwise (also for 'nan',
    'inf' and '1e400', which float() accepts)."""
    number = float(value)
    if not math.isfinite(number) or abs(number) > limit:
        raise ValueError(f"coordinate out of range: {str(value)[:20]!r}")
    return number


def _timestamp(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
