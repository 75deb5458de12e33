"""Replies through Twilio: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json``."""

from __future__ import annotations

import contextlib

from services.common.redact import scrub
from services.gateway.channels.twilio import PREFIX
from services.gateway.engine import Reply
from services.gateway.senders.base import (
    HttpAnswer,
    HttpClient,
    SendError,
    Target,
    Unreachable,
    split_text,
    utf16_units,
)

# Twilio's limit for one message body, in which a character past U+FFFF (most emoji) counts
# twice (error 21617).
BODY_LIMIT = 1600


def render(reply: Reply) -> str:
    """Twilio has no native buttons here: options become numbered lines."""
    lines = [reply.text] if reply.text else []
    options = [(b.title, "") for b in reply.buttons] or [
        (r.title, r.description) for r in reply.rows
    ]
    for number, (title, description) in enumerate(options, start=1):
        lines.append(f"{number}. {title}" + (f" - {description}" if description else ""))
    return "\n".join(lines)


class TwilioSender:
    name = "twilio"

    def __init__(
        self, client: HttpClient, base_url: str, default_sid: str, default_token: str
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._sid = default_sid
        self._token = default_token

    def parts(self, target: Target, reply: Reply) -> list[str]:
        # An empty reply is no message (Twilio refuses an empty Body, 21602), as on the Cloud API.
        return [part for part in split_text(render(reply), BODY_LIMIT, utf16_units) if part]

    async def mark_read(self, target: Target, message_id: str) -> None:
        """Twilio has no read receipts to send."""

    def _credentials(self, target: Target) -> tuple[str, tuple[str, str]]:
        """The account to send from and the credentials to send with. A SID and token are a
        pair: the business's own, or the platform's. A business with only its SID is a
        subaccount of the platform's account, whose credentials may act for it."""
        sid, token = target.twilio_account_sid, target.twilio_auth_token
        if sid and token:
            return sid, (sid, token)
        return sid or self._sid, (self._sid, self._token)

    async def post(self, target: Target, part: str) -> None:
        account, (sid, token) = self._credentials(target)
        if not account or not sid or not token:
            raise SendError("no Twilio credentials", retryable=False, outcome="no_credentials")
        url = f"{self._base}/2010-04-01/Accounts/{account}/Messages.json"
        form = {
            "To": PREFIX + target.user_id,
            "From": PREFIX + target.channel_identity,
            "Body": part,
        }
        try:
            response = await self._client.post(url, form=form, basic_auth=(sid, token))
        except Unreachable as error:
            raise SendError(
                f"Twilio unreachable: {error}", retryable=True, outcome="error"
            ) from None
        if response.status < 300:
            return
        code, message = _twilio_error(response, token, target.user_id)
        if response.status == 429:
            raise SendError("Twilio rate limit", retryable=True, outcome="rate_limited", code=code)
        if response.status == 401:
            # 20003: a wrong SID/token pair (a token rotated in Twilio's console, a deleted
            # account). Every message fails alike until an operator stores the right pair;
            # the dead letter says whose pair, so they know where to put it.
            whose = "the business's own" if sid == target.twilio_account_sid else "the platform's"
            raise SendError(
                f"Twilio refused {whose} credentials (account {sid}, error {code})",
                retryable=False,
                outcome="credentials_refused",
                code=code,
            )
        raise SendError(
            f"Twilio answered {response.status} ({code}): {message}",
            retryable=response.status >= 500,
            outcome="error",
            code=code,
        )


def _twilio_error(response: HttpAnswer, *secrets: str) -> tuple[int | None, str]:
    """The error's ``code`` and ``message`` (Twilio's body: ``code``, ``message``, ``more_info``,
    ``status``), or the start of a body that is not Twilio's (a proxy's page). The message says
    what was refused and may quote what was sent: ``secrets`` (the auth token, the user's
    number) are scrubbed before it is cut short, so that no piece of one is left."""
    code: int | None = None
    try:
        body = response.json()
        message = str(body.get("message", ""))
        with contextlib.suppress(TypeError, ValueError):
            code = int(body.get("code"))
    except (ValueError, AttributeError):
        message = response.body.decode(errors="replace")
    return code, scrub(message, *secrets)[:300]
