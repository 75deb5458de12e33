"""What every sender shares: where a reply goes, and how a failed send is reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.gateway.engine import Reply


@dataclass(frozen=True)
class Target:
    """One user of one business on one channel, with the business's own credentials."""

    channel: str  # "cloud_api" or "twilio"
    business_id: str
    user_id: str  # wa_id (Cloud API) or E.164 (Twilio)
    channel_identity: str  # phone_number_id (Cloud API) or the business's E.164 number (Twilio)
    access_token: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""


class SendError(Exception):
    """A send that failed. ``retryable``: worth another attempt later."""

    def __init__(
        self, message: str, *, retryable: bool, outcome: str, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.outcome = outcome  # the metric label: rate_limited, outside_window, token_expired…
        self.code = code


class TokenExpired(SendError):
    """Cloud API error 190: the business needs a new access token."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, outcome="token_expired", code=190)


class Sender(Protocol):
    name: str

    async def send(self, target: Target, reply: Reply) -> None: ...

    async def mark_read(self, target: Target, message_id: str) -> None: ...


def split_text(text: str, limit: int) -> list[str]:
    """Split at paragraph, line or word boundaries where possible; never over ``limit``."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = -1
        for separator in ("\n\n", "\n", " "):
            cut = rest.rfind(separator, 0, limit)
            if cut > 0:
                break
        if cut <= 0:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not chunks:
        chunks.append(rest)
    return chunks
