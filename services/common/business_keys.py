"""The lookup keys of a business, as its caches and the invalidation channel spell them.

The business service publishes these keys when a business changes, and the gateway computes the
same keys for a webhook's channel identity; both build them here so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum


class KeyKind(StrEnum):
    """The identities a webhook can name its business by."""

    PHONE_NUMBER_ID = "pnid"
    WHATSAPP_NUMBER = "num"
    SUBDOMAIN = "sub"


def lookup_key(kind: KeyKind, value: str) -> str:
    return f"{kind.value}:{value}"


def normalize_number(value: str) -> str:
    """``whatsapp:+1 415-523-8886`` → ``+14155238886`` (not yet validated)."""
    raw = value.strip().removeprefix("whatsapp:").strip()
    return re.sub(r"[\s().-]", "", raw)


def normalize_identity(kind: KeyKind, value: str) -> str:
    """An identity as stored (not yet validated): what a valid value is looked up by."""
    if kind is KeyKind.WHATSAPP_NUMBER:
        return normalize_number(value)
    if kind is KeyKind.SUBDOMAIN:
        return value.strip().lower()
    return value.strip()


def identity_key(kind: KeyKind, value: str) -> str:
    """The lookup key the business service uses for this (raw) identity."""
    return lookup_key(kind, normalize_identity(kind, value))


def business_keys(
    phone_number_ids: Iterable[str], numbers: Iterable[str], subdomain: str
) -> tuple[str, ...]:
    """Every lookup key of one business (its identities as stored)."""
    return (
        *(lookup_key(KeyKind.PHONE_NUMBER_ID, p) for p in phone_number_ids),
        *(lookup_key(KeyKind.WHATSAPP_NUMBER, n) for n in numbers),
        lookup_key(KeyKind.SUBDOMAIN, subdomain),
    )
