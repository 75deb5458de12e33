"""Masking for values that must never reach a log line in full."""

from __future__ import annotations


def mask_phone(number: str) -> str:
    """Keep the country-code end and the last two digits: ``+14155238886`` → ``+141******86``."""
    digits = number.removeprefix("whatsapp:")
    if len(digits) <= 6:
        return "*" * len(digits)
    return digits[:4] + "*" * (len(digits) - 6) + digits[-2:]


def mask_secret(value: str | None) -> str:
    """Say whether a secret is set, never what it is."""
    return "***" if value else ""
