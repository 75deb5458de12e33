"""Twilio WhatsApp webhooks: the X-Twilio-Signature check and the form payload.

Twilio signs ``full URL (with query) + every POST parameter name and value, sorted by name``
with HMAC-SHA1 keyed by the account's auth token, base64-encoded. Behind a proxy the URL Twilio
called is not the one we see, so ``PUBLIC_BASE_URL`` rebuilds it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from services.gateway.channels import check_ids
from services.gateway.channels.cloud_api import coordinate
from services.gateway.engine import InboundMessage, MessageType

SIGNATURE_HEADER = "x-twilio-signature"
PREFIX = "whatsapp:"
# Twilio's webhooks have a few dozen parameters (ten media at most). A form is parsed and
# signed (sorted, once per URL and token tried) before it is known to be Twilio's: a forged
# 3 MB one of 360,000 fields held the event loop for 4-7 s.
MAX_FORM_FIELDS = 1000


class MalformedForm(ValueError):
    """The body is not a form-encoded Twilio webhook (400)."""


@dataclass(frozen=True)
class Status:
    message_sid: str
    status: str
    error_code: str = ""
    recipient: str = ""  # the user the reported message went to


@dataclass(frozen=True)
class OtherChannel:
    """A message that came to the number by another channel than WhatsApp: an SMS (``From`` a
    bare number; it comes here when the number's SMS webhook, or the Messaging Service holding
    the number and its WhatsApp sender, points here), RCS or another prefix. The bot answers on
    WhatsApp only, so it is counted, never queued."""

    message_sid: str
    channel: str  # "sms", or the sender address's prefix ("rcs", "messenger", ...)


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The form's (name, value) pairs, in order; 400 on anything that is not a form, or that
    has more than ``MAX_FORM_FIELDS`` fields (counted before any is parsed)."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise MalformedForm(f"not a form-encoded body: {error}") from None


def sign(url: str, params: list[tuple[str, str]], auth_token: str) -> str:
    """The X-Twilio-Signature value for a POST of ``params`` to ``url``."""
    # As Twilio's own helpers do: names sorted, and each name's distinct values sorted.
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """The URL as given, with the scheme's default port when it names none, and without the
    port it names, whichever that is: Twilio drops the port of an HTTPS URL before signing, a
    non-default one (``:8443``) too, though not for every callback, so its own validators try
    both."""
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port not a number or past 65535, an unclosed "[": the host comes
        return variants  # from a Host or X-Forwarded-Host header anyone can send
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    if port is None and default:
        variants.append(urlunsplit(parts._replace(netloc=f"{_userinfo(parts)}{host}:{default}")))
    elif port is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{_userinfo(parts)}{host}")))
    return variants


def _userinfo(parts: Any) -> str:
    return f"{parts.username}@" if parts.username else ""


def signature_matches(
    url: str, params: list[tuple[str, str]], header: str, auth_token: str
) -> bool:
    """Constant-time check of ``header`` against every accepted URL form."""
    given = header.strip().encode()
    return any(
        hmac.compare_digest(sign(variant, params, auth_token).encode(), given)
        for variant in _url_variants(url)
    )


def public_url(base: str | None, path: str, query: str, seen_url: str) -> str:
    """The URL Twilio called: ``PUBLIC_BASE_URL`` + path + query when set, else what we saw."""
    if not base:
        return seen_url
    return base.rstrip("/") + path + (f"?{query}" if query else "")


def public_urls(
    base: str | None, path: str, query: str, seen_url: str, headers: Mapping[str, str]
) -> list[str]:
    """The URLs Twilio may have called and signed. ``PUBLIC_BASE_URL`` when set; else the URL as
    seen and, behind a proxy that ended TLS (an ingress, a load balancer), the one it forwards
    in X-Forwarded-Proto and X-Forwarded-Host, as Twilio says to rebuild it. uvicorn applies
    those headers only from 127.0.0.1, so a proxy elsewhere left us seeing ``http://``. They
    only choose which URL the signature must be for: without the token nothing is accepted."""
    if base:
        return [public_url(base, path, query, seen_url)]
    proto = _first(headers.get("x-forwarded-proto", "")).lower()
    host = _first(headers.get("x-forwarded-host", "")) or urlsplit(seen_url).netloc
    urls = [seen_url]
    if proto in ("http", "https") and host:
        forwarded = f"{proto}://{host}{path}" + (f"?{query}" if query else "")
        if forwarded != seen_url:
            urls.append(forwarded)
    return urls


def _first(value: str) -> str:
    """The first of a forwarded header's comma-separated values: what the outermost proxy saw."""
    return value.split(",", 1)[0].strip()


def strip_prefix(number: str) -> str:
    return number.removeprefix(PREFIX).strip()


def _status(form: dict[str, str]) -> str:
    """The status a status callback reports; "" for an inbound message."""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if status and status != "received" and "Body" not in form and "NumMedia" not in form:
        return status
    return ""


def business_number(params: list[tuple[str, str]]) -> str:
    """The number of the business a webhook is about, whose auth token signed it: ``To`` of an
    inbound message, but ``From`` of a status callback, which reports on a message the business
    sent (to the user, in ``To``)."""
    form = dict(params)
    return strip_prefix(form.get("From" if _status(form) else "To", ""))


def parse(params: list[tuple[str, str]]) -> InboundMessage | Status | OtherChannel:
    """One inbound message, a status callback, or a message of another channel; ValueError
    when none can be made."""
    form = dict(params)
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""
    if not sid:
        raise ValueError("form without MessageSid")
    status = _status(form)
    if status:
        return Status(sid, status, form.get("ErrorCode", ""), strip_prefix(form.get("To", "")))
    sender = strip_prefix(form.get("From", ""))
    to = strip_prefix(form.get("To", ""))
    if not sender or not to:
        raise ValueError("form without From or To")
    address = form.get("From", "").strip()
    if not address.startswith(PREFIX):
        return OtherChannel(sid, address.split(":", 1)[0][:20] if ":" in address else "sms")
    check_ids(sender, sid)
    message_type, text, payload = _content(form)
    return InboundMessage(
        channel="twilio",
        provider_message_id=sid,
        channel_identity=to,
        user_id=sender,
        type=message_type,
        timestamp=datetime.now(UTC),
        text=text,
        profile_name=form.get("ProfileName", ""),
        payload=payload,
    )


def _content(form: dict[str, str]) -> tuple[MessageType, str, dict[str, Any]]:
    kind = form.get("MessageType", "").lower()
    body = form.get("Body", "")
    if form.get("ButtonPayload") or form.get("ButtonText") or kind in ("button", "interactive"):
        title = form.get("ButtonText") or body
        return "button", title, {"reply_id": form.get("ButtonPayload", ""), "title": title}
    if form.get("Latitude") and form.get("Longitude"):
        try:
            payload: dict[str, Any] = {
                "latitude": coordinate(form["Latitude"], 90),
                "longitude": coordinate(form["Longitude"], 180),
                "name": form.get("Label", ""),
                "address": form.get("Address", ""),
            }
        except ValueError:
            return "unknown", body, {"raw_type": "location"}
        return "location", str(payload["name"] or payload["address"]), payload
    try:
        media_count = int(form.get("NumMedia", "0") or "0")
    except ValueError:
        media_count = 0
    if media_count > 0:
        mime = form.get("MediaContentType0", "")
        major = mime.split("/", 1)[0]
        media_type: MessageType = {"image": "image", "audio": "audio", "video": "video"}.get(
            major, "document"
        )  # type: ignore[assignment]
        if kind == "sticker":
            media_type = "sticker"
        payload = {
            "media_id": form.get("MediaUrl0", ""),
            "mime_type": mime,
            "caption": body,
            "filename": "",
        }
        return media_type, body, payload
    if kind and kind != "text" and not body:
        return "unknown", "", {"raw_type": kind}
    return "text", body, {}
