"""Replies through the WhatsApp Cloud API: ``POST {base}/{phone_number_id}/messages``."""

from __future__ import annotations

from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.common.redact import mask_phone, scrub
from services.gateway.engine import Reply
from services.gateway.senders.base import (
    HttpAnswer,
    HttpClient,
    SendError,
    Target,
    TokenExpired,
    Unreachable,
    split_text,
)

log = structlog.get_logger()

TEXT_LIMIT = 4096
INTERACTIVE_BODY_LIMIT = 1024
RATE_LIMIT_CODES = {130429, 131056, 80007, 4, 613}
OUTSIDE_WINDOW = 131047
# Errors Meta answers with HTTP 500 that no retry cures: 3 (the app lacks a capability or
# permission), 131045 (the number's registration/certificate is wrong). Meta says to go by the
# code: retried as an outage, each message would hold up its partition for RETRY_WINDOW_SECONDS.
PERMANENT_CODES = {3, 131045}
# 190: the token expired; 0 (AuthException): expired or invalidated. Either needs a new token.
TOKEN_EXPIRED = {190, 0}


def address(user_id: str) -> dict[str, str]:
    """Where a message goes: a phone number (``wa_id``, digits) in ``to``; a business-scoped
    user id (``US.1349…``, all we know of a user with a username who shares no phone number)
    in ``recipient``, since Meta reads ``to`` as a phone number. A BSUID always has a period."""
    return {"recipient": user_id} if "." in user_id else {"to": user_id}


def _is_rate_limited(error: BaseException) -> bool:
    return isinstance(error, SendError) and error.outcome == "rate_limited"


class CloudApiSender:
    name = "cloud_api"

    def __init__(self, client: HttpClient, base_url: str, rate_limit_tries: int = 3):
        self._client = client
        self._base = base_url.rstrip("/")
        self._tries = rate_limit_tries

    def parts(self, target: Target, reply: Reply) -> list[dict[str, Any]]:
        return self.payloads(target.user_id, reply)

    async def mark_read(self, target: Target, message_id: str) -> None:
        """Blue ticks and the typing indicator while the bot works (best effort)."""
        payload = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }
        await self._post(target, payload)

    @staticmethod
    def payloads(to: str, reply: Reply) -> list[dict[str, Any]]:
        """The Graph API bodies of one reply: text split at 4096, buttons or a list natively."""
        base = {"messaging_product": "whatsapp", "recipient_type": "individual", **address(to)}
        interactive = bool(reply.buttons or reply.rows)
        chunks = split_text(reply.text, TEXT_LIMIT)
        body_text = ""
        if interactive:
            # The last chunk becomes the interactive body when it fits; else a short one.
            if len(chunks[-1]) <= INTERACTIVE_BODY_LIMIT and chunks[-1]:
                body_text = chunks.pop()
            else:
                body_text = "Choose an option:"
        messages = [
            {**base, "type": "text", "text": {"body": chunk, "preview_url": False}}
            for chunk in chunks
            if chunk
        ]
        if reply.buttons:
            action: dict[str, Any] = {
                "buttons": [
                    {"type": "reply", "reply": {"id": b.id, "title": b.title[:20]}}
                    for b in reply.buttons[:3]
                ]
            }
            messages.append(
                {
                    **base,
                    "type": "interactive",
                    "interactive": {
                        "type": "button",
                        "body": {"text": body_text},
                        "action": action,
                    },
                }
            )
        elif reply.rows:
            rows = [
                {
                    "id": r.id,
                    "title": r.title[:24],
                    **({"description": r.description[:72]} if r.description else {}),
                }
                for r in reply.rows[:10]
            ]
            messages.append(
                {
                    **base,
                    "type": "interactive",
                    "interactive": {
                        "type": "list",
                        "body": {"text": body_text},
                        "action": {
                            "button": (reply.list_button or "Options")[:20],
                            "sections": [{"title": "Options", "rows": rows}],
                        },
                    },
                }
            )
        return messages

    async def post(self, target: Target, part: dict[str, Any]) -> None:
        """One message, tried again here on a rate limit (then the queue retries it)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_rate_limited),
            stop=stop_after_attempt(self._tries),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post(target, part)

    async def _post(self, target: Target, payload: dict[str, Any]) -> None:
        if not target.access_token:
            raise SendError(
                "the business has no Cloud API access token",
                retryable=False,
                outcome="no_credentials",
            )
        url = f"{self._base}/{target.channel_identity}/messages"
        try:
            response = await self._client.post(
                url, json=payload, headers={"Authorization": f"Bearer {target.access_token}"}
            )
        except Unreachable as error:
            raise SendError(
                f"Graph API unreachable: {error}", retryable=True, outcome="error"
            ) from None
        if response.status < 300:
            return
        code, sub, message = _graph_error(response, target.access_token, target.user_id)
        if code in TOKEN_EXPIRED:
            raise TokenExpired(f"Graph API error {code}{sub}: {message}", code)
        if response.status == 429 or code in RATE_LIMIT_CODES:
            raise SendError(
                f"Graph API rate limit ({code})", retryable=True, outcome="rate_limited", code=code
            )
        if code == OUTSIDE_WINDOW:
            log.warning(
                "reply outside the 24-hour window",
                to=mask_phone(target.user_id),
                business_id=target.business_id,
            )
            raise SendError(
                "outside the 24-hour customer service window",
                retryable=False,
                outcome="outside_window",
                code=code,
            )
        raise SendError(
            f"Graph API answered {response.status} ({code}{sub}): {message}",
            retryable=response.status >= 500 and code not in PERMANENT_CODES,
            outcome="error",
            code=code,
        )


def _graph_error(response: HttpAnswer, *secrets: str) -> tuple[int | None, str, str]:
    """The error's code; its subcode, if any, as `, subcode N`; and what it says: the message (a
    code's title), Meta's ``error_data.details`` (what was wrong: which parameter, why it is
    undeliverable; Meta says to go by them) and ``fbtrace_id`` (what Meta's support asks for).
    This goes into logs and dead letters: ``secrets`` (the token a malformed-token error or a
    proxy's echo may quote, the user's number) are scrubbed before it is cut short, so that no
    piece of one is left."""
    try:
        error = response.json().get("error", {})
        code = error.get("code")
        text = str(error.get("message", ""))
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        if details:
            text = f"{text}: {details}"
        subcode, trace = error.get("error_subcode"), error.get("fbtrace_id")
    except (ValueError, AttributeError):
        code, text = None, response.body.decode(errors="replace")
        subcode = trace = None
    text = scrub(text, *secrets)[:300]
    if isinstance(trace, str) and trace:
        text += f" (fbtrace_id {scrub(trace, *secrets)[:64]})"
    sub = f", subcode {subcode}" if isinstance(subcode, int) else ""
    return (int(code) if isinstance(code, int) else None), sub, text
