"""What every sender shares: where a reply goes, how it is posted, how a failure is reported."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from services.common.redact import mask_phone, mask_secret
from services.gateway.engine import Reply


@dataclass(frozen=True, repr=False)
class Target:
    """One user of one business on one channel, with the business's own credentials. Its repr
    (what a log line, a traceback or an exception shows of it) says only whether each
    credential is set, and masks the user's number."""

    channel: str  # "cloud_api" or "twilio"
    business_id: str
    user_id: str  # wa_id (Cloud API) or E.164 (Twilio)
    channel_identity: str  # phone_number_id (Cloud API) or the business's E.164 number (Twilio)
    access_token: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""

    def __repr__(self) -> str:
        return (
            f"Target(channel={self.channel!r}, business_id={self.business_id!r}, "
            f"user_id={mask_phone(self.user_id)!r}, channel_identity={self.channel_identity!r}, "
            f"access_token={mask_secret(self.access_token)!r}, "
            f"twilio_account_sid={self.twilio_account_sid!r}, "
            f"twilio_auth_token={mask_secret(self.twilio_auth_token)!r})"
        )


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
    """Cloud API error 190 or 0: the business needs a new access token."""

    def __init__(self, message: str, code: int = 190) -> None:
        super().__init__(message, retryable=False, outcome="token_expired", code=code)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return orjson.loads(self.body)


# The most of an answer's body that is read: Meta's and Twilio's errors are a few hundred bytes
# of JSON. A proxy's error page, or a broken answer of megabytes (or one that never ends), is
# read no further: its start says what it was, the connection is closed, not reused.
ANSWER_LIMIT = 64 * 1024
# How long the body of an accepted message is waited for (it comes with the status line, but for
# a broken proxy): within it the connection can be reused; past it, it is closed.
ACCEPTED_BODY_SECONDS = 1.0


class Unreachable(Exception):
    """The provider could not be reached, or did not answer in time."""


class HttpClient:
    """The senders' HTTP client: one aiohttp session per process, opened on first use.

    aiohttp rather than httpx on this path: a Graph API POST cost ~1.6 ms of CPU through httpx's
    own transport, ~0.33 ms through httpx on aiohttp's, and ~0.10 ms through aiohttp itself
    (client alone, 16 concurrent, against the benchmark's fake). Every webhook makes two.
    """

    def __init__(self, timeout_seconds: float, connect_timeout_seconds: float = 3.0) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_seconds, sock_connect=connect_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None
        # origin → (proxy, its credentials): HTTPS_PROXY/HTTP_PROXY/NO_PROXY, read once per
        # provider host rather than per request (the session's trust_env would, in a thread).
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def _proxy(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The egress proxy the environment names for ``url``'s origin, as httpx (the language
        model's client, Amadeus's) follows it; (None, None) to go directly."""
        origin = "/".join(url.split("/", 3)[:3])
        found = self._proxies.get(origin)
        if found is None:
            try:
                found = get_env_proxy_for_url(URL(origin))
            except LookupError:  # none named, or NO_PROXY names this host
                found = (None, None)
            self._proxies[origin] = found
        return found

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> HttpAnswer:
        if self._session is None:  # inside the event loop, where aiohttp wants it made
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=100)
            )
        headers = dict(headers or {})
        data: Any = form
        if json is not None:
            data = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        if basic_auth is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(*basic_auth)
        proxy, proxy_auth = self._proxy(url)
        try:
            # Never a redirect: neither provider sends one, and following it would post the
            # reply elsewhere (307) or turn it into a GET without it (301, 302), whose 200
            # would count as sent. A 3xx is an error (a wrong base URL, a captive proxy).
            async with self._session.post(
                url,
                data=data,
                headers=headers,
                proxy=proxy,
                proxy_auth=proxy_auth,
                allow_redirects=False,
            ) as response:
                if response.status >= 300:
                    return HttpAnswer(response.status, await _head_of_body(response))
                # Accepted: the provider has the message once its status says so. The body (the
                # new message's id) is not used; one cut short or slow to come must not make the
                # message look failed, and be sent again. Read briefly, for the connection's reuse.
                body = b""
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with asyncio.timeout(ACCEPTED_BODY_SECONDS):
                        body = await _head_of_body(response)
                return HttpAnswer(response.status, body)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unreachable(type(error).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _head_of_body(response: aiohttp.ClientResponse) -> bytes:
    """The body's first ``ANSWER_LIMIT`` bytes; the rest is left unread."""
    body = b""
    while len(body) < ANSWER_LIMIT:
        chunk = await response.content.read(ANSWER_LIMIT - len(body))
        if not chunk:
            break
        body += chunk
    return body


class Sender(Protocol):
    """A reply goes out as one or more provider messages (``parts``), each posted on its own,
    so that the worker can record each as sent once it is accepted."""

    name: str

    def parts(self, target: Target, reply: Reply) -> list[Any]: ...

    async def post(self, target: Target, part: Any) -> None: ...

    async def mark_read(self, target: Target, message_id: str) -> None: ...


def utf16_units(text: str) -> int:
    """Length as UTF-16 counts it: a character past U+FFFF (most emoji) is two."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int, length: Callable[[str], int] = len) -> list[str]:
    """Split at paragraph, line or word boundaries where possible; no chunk over ``limit`` as
    ``length`` measures it (characters by default)."""
    chunks: list[str] = []
    rest = text
    while length(rest) > limit:
        end = _longest_prefix(rest, limit, length)
        cut = -1
        for separator in ("\n\n", "\n", " "):
            cut = rest.rfind(separator, 0, end)
            if cut > 0:
                break
        if cut <= 0:
            cut = end
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not chunks:
        chunks.append(rest)
    return chunks


def _longest_prefix(text: str, limit: int, length: Callable[[str], int]) -> int:
    """How many characters of ``text`` fit in ``limit`` (at least one)."""
    if length is len:
        return limit
    used = 0
    for index, character in enumerate(text):
        used += length(character)
        if used > limit:
            return max(index, 1)
    return len(text)
