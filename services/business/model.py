"""The business record every store reads and writes, and the validation of its fields.

Validation raises :class:`InvalidArgument` naming the field as the API spells it
(``business.subdomain``, ``business.whatsapp_numbers[1]``), so a gRPC client and the CLI get the
same clear answer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from services.common.business_keys import (
    KeyKind,
    business_keys,
    normalize_identity,
    normalize_number,
)
from services.common.channel_secrets import secret_problem
from services.common.errors import InvalidArgument

SECRET_FIELDS = (
    "whatsapp_access_token",
    "twilio_account_sid",
    "twilio_auth_token",
    "webhook_app_secret",
)

# Fields UpdateBusiness may change (its update_mask paths).
UPDATABLE_FIELDS = (
    "name",
    "subdomain",
    "whatsapp_phone_number_ids",
    "whatsapp_numbers",
    "whatsapp_enabled",
    "active",
    "time_zone",
    "locale",
    "access_token_status",
)

MAX_NAME = 200
MAX_IDENTITIES = 50
DEFAULT_TIME_ZONE = "UTC"
DEFAULT_LOCALE = "en"

_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PHONE_NUMBER_ID = re.compile(r"^[0-9]{1,32}$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
# RFC 5646 language tag, the common subset: language, optional script, region and variants.
_BCP47 = re.compile(
    r"^(?P<lang>[A-Za-z]{2,3}|[A-Za-z]{5,8})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)$"
)


class TokenStatus(StrEnum):
    """Health of the Cloud API access token, stored as these strings."""

    NONE = ""
    VALID = "VALID"
    NEEDS_RENEWAL = "NEEDS_RENEWAL"


def utcnow() -> datetime:
    """Now, truncated to milliseconds: MongoDB keeps no more, so both stores agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class BusinessRecord:
    """One business as stored. ``secrets`` holds ciphertexts only and stays out of repr."""

    id: str
    name: str
    subdomain: str
    phone_number_ids: tuple[str, ...]
    numbers: tuple[str, ...]
    whatsapp_enabled: bool
    active: bool
    time_zone: str
    locale: str
    access_token_status: TokenStatus
    create_time: datetime
    update_time: datetime
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=True)

    @property
    def servable(self) -> bool:
        return self.active and self.whatsapp_enabled

    @property
    def lookup_keys(self) -> tuple[str, ...]:
        return business_keys(self.phone_number_ids, self.numbers, self.subdomain)

    @property
    def business_id(self) -> str:
        return self.id

    def with_changes(self, **changes: object) -> BusinessRecord:
        return replace(self, **changes)  # type: ignore[arg-type]

    def unservable_reason(self) -> str:
        if not self.active:
            return "inactive"
        if not self.whatsapp_enabled:
            return "whatsapp disabled"
        return ""


# --- validation ---------------------------------------------------------------------------


def validate_name(value: str, field_name: str = "business.name") -> str:
    name = value.strip()
    if not name:
        raise InvalidArgument(field_name, "required")
    if len(name) > MAX_NAME:
        raise InvalidArgument(field_name, f"at most {MAX_NAME} characters")
    # Every control character (Unicode Cc): C0, DEL and C1 (U+009B is a terminal's CSI).
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidArgument(field_name, "must not contain control characters")
    return name


def validate_subdomain(value: str, field_name: str = "business.subdomain") -> str:
    label = normalize_identity(KeyKind.SUBDOMAIN, value)
    if not label:
        raise InvalidArgument(field_name, "required")
    if not _SUBDOMAIN.match(label):
        raise InvalidArgument(
            field_name,
            "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        )
    return label


def validate_number(value: str, field_name: str) -> str:
    number = normalize_number(value)
    if not _E164.match(number):
        raise InvalidArgument(
            field_name, "must be an E.164 number: '+', country code, 7-15 digits in all"
        )
    return number


def validate_phone_number_id(value: str, field_name: str) -> str:
    pnid = normalize_identity(KeyKind.PHONE_NUMBER_ID, value)
    if not _PHONE_NUMBER_ID.match(pnid):
        raise InvalidArgument(field_name, "must be a WhatsApp phone_number_id: 1-32 digits")
    return pnid


def _unique(values: Iterable[str], field_name: str) -> tuple[str, ...]:
    out: dict[str, None] = {}  # insertion-ordered set
    for value in values:
        out[value] = None
        # Refused as soon as it is too long: a request of a few MB can hold 300,000 entries.
        if len(out) > MAX_IDENTITIES:
            raise InvalidArgument(field_name, f"at most {MAX_IDENTITIES} entries")
    return tuple(out)


def validate_phone_number_ids(
    values: Iterable[str], field_name: str = "business.whatsapp_phone_number_ids"
) -> tuple[str, ...]:
    return _unique(
        (validate_phone_number_id(v, f"{field_name}[{i}]") for i, v in enumerate(values)),
        field_name,
    )


def validate_numbers(
    values: Iterable[str], field_name: str = "business.whatsapp_numbers"
) -> tuple[str, ...]:
    return _unique(
        (validate_number(v, f"{field_name}[{i}]") for i, v in enumerate(values)), field_name
    )


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: str, field_name: str = "business.time_zone") -> str:
    zone = value.strip() or DEFAULT_TIME_ZONE
    if zone not in _zones() and zone != "UTC":
        raise InvalidArgument(field_name, "must be an IANA time zone, e.g. 'America/New_York'")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(field_name, "unknown IANA time zone") from None
    return zone


def validate_locale(value: str, field_name: str = "business.locale") -> str:
    """A BCP 47 tag in canonical case: ``es-mx`` → ``es-MX``, ``zh-hant-tw`` → ``zh-Hant-TW``."""
    tag = value.strip().replace("_", "-") or DEFAULT_LOCALE
    match = _BCP47.match(tag)
    if not match or len(tag) > 35:
        raise InvalidArgument(field_name, "must be a BCP 47 language tag, e.g. 'en' or 'es-MX'")
    parts = [match["lang"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts.extend(v.lower() for v in match["variants"].split("-") if v)
    return "-".join(parts)


def validate_business_id(value: str, field_name: str = "id") -> str:
    business_id = value.strip().lower()
    if not business_id:
        raise InvalidArgument(field_name, "required")
    if not _OBJECT_ID.match(business_id):
        raise InvalidArgument(field_name, "must be a business id: 24 hexadecimal characters")
    return business_id


MAX_IDEMPOTENCY_KEY = 128


def validate_idempotency_key(value: str) -> str:
    """A CreateBusiness idempotency key: empty (none) or 1-128 printable characters."""
    if len(value) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(
            "idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters"
        )
    if not value.isprintable():
        raise InvalidArgument("idempotency_key", "must be printable characters")
    return value


def validate_request_id(value: str) -> str:
    """An AIP-155 request id: empty (none) or a UUID in any of its spellings, as one canonical
    form (a retry that re-spells it is the same request). The nil UUID is refused: a client
    that never set its id would send it every time."""
    if not value:
        return ""
    try:
        parsed = uuid.UUID(value) if len(value) <= 38 else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.int == 0:
        raise InvalidArgument(
            "request_id", "must be a UUID (e.g. 123e4567-e89b-42d3-a456-426614174000), not nil"
        )
    return str(parsed)


def business_id_for(idempotency_key: str) -> str:
    """The id a create with this key gives its business: the same for every resend, so the
    store's own unique id is what finds the first one (an ObjectId's 24 hex characters, from
    the key's hash, with nothing else to store or index)."""
    return hashlib.sha256(b"parley-business:" + idempotency_key.encode()).hexdigest()[:24]


def validate_secret(value: str, field_name: str) -> str:
    problem = secret_problem(value)
    if problem:
        raise InvalidArgument(field_name, problem)
    return value
