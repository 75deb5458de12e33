"""Masking for values that must never reach a log line in full."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that carry credentials (redis-py's ``password``, ``sentinel_password``; a
# MongoDB URI's ``tlsCertificateKeyFilePassword``; tokens and keys of any kind).
_SECRET_PARAMS = ("pass", "secret", "token", "key", "auth", "credential", "signature")


def mask_phone(number: str) -> str:
    """Keep the country-code end and the last two digits: ``+14155238886`` → ``+141******86``."""
    digits = number.removeprefix("whatsapp:")
    if len(digits) <= 6:
        return "*" * len(digits)
    return digits[:4] + "*" * (len(digits) - 6) + digits[-2:]


def mask_message_id(message_id: str) -> str:
    """A provider message id for a log line, without the user's number that a Cloud API id
    holds (``wamid.HBgL…`` is the base64 of a record that starts with it): a digest, the same
    for every line of one message."""
    return "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()[:16]


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by ``***``: for what a
    provider answers, which may quote the credentials it was sent."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def mask_secret(value: str | None) -> str:
    """Say whether a secret is set, never what it is."""
    return "***" if value else ""


def mask_url(url: str) -> str:
    """A URL with its password and every credential-like query value replaced by ``***``:
    ``redis://u:pw@h/0?password=pw`` → ``redis://u:***@h/0?password=***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # not even parseable: nothing of it is shown
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if has_password else f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs],
            safe="*/:,",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
