"""``make chat``: talk to the running bot from a terminal, as a test user of the demo business.

Every line you type becomes a real WhatsApp Cloud API webhook (the JSON Meta sends), signed with
``X-Hub-Signature-256`` using ``WHATSAPP_APP_SECRET`` (or the dev secret ``make run`` keeps in
``var/dev-app-secret``) and posted to the gateway's ``/webhooks/whatsapp``. The bot's replies are
read from the gateway's outbox (``GET /admin/outbox`` with ``API_KEY``, or ``var/dev-api-key``) and
printed as they arrive. When a reply offers buttons or a list, typing its number sends the tap
(an interactive reply webhook). ``/location LAT LON`` shares a location; ``/quit`` or Ctrl-C ends.
With the lines piped in (a script, a demo), each waits for the bot's answer before the next goes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.dev.launcher import VAR
from services.gateway.channels import cloud_api

DEMO_PHONE_NUMBER_ID = "100000000000001"
DEMO_DISPLAY_NUMBER = "15550000001"
DEFAULT_USER = "15551230000"
POLL_SECONDS = 0.3
# Piped input: an answer is whole once nothing more came for ANSWER_QUIET_SECONDS (a search's
# "searching…" and its results come within it), and a line waits ANSWER_WAIT_SECONDS at most
# (the engine gives up on a turn after 20 s).
ANSWER_QUIET_SECONDS = 1.5
ANSWER_WAIT_SECONDS = 30.0


def _secret(env: str, file: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    path = VAR / file
    return path.read_text().strip() if path.exists() else ""


@dataclass
class Config:
    gateway_url: str
    app_secret: str
    api_key: str
    user_id: str = DEFAULT_USER
    profile_name: str = "Alex Tester"
    phone_number_id: str = DEMO_PHONE_NUMBER_ID

    @classmethod
    def from_environment(cls, user_id: str = DEFAULT_USER, name: str = "") -> Config:
        return cls(
            gateway_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000").rstrip("/"),
            app_secret=_secret("WHATSAPP_APP_SECRET", "dev-app-secret"),
            api_key=_secret("API_KEY", "dev-api-key"),
            user_id=user_id,
            profile_name=name or "Alex Tester",
        )


def webhook(config: Config, message: dict[str, Any]) -> dict[str, Any]:
    """A Cloud API ``messages`` notification carrying one message from the test user."""
    return cloud_api.notification(
        config.phone_number_id,
        [
            {
                "from": config.user_id,
                "id": "wamid.chat" + secrets.token_hex(12),
                "timestamp": str(int(time.time())),
                **message,
            }
        ],
        [{"profile": {"name": config.profile_name}, "wa_id": config.user_id}],
        DEMO_DISPLAY_NUMBER,
    )


def text_message(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": text}}


def choice_message(choice: Choice) -> dict[str, Any]:
    """The tap on a reply button or a list row, as the Cloud API reports it."""
    if choice.kind == "button":
        reply = {"id": choice.id, "title": choice.title}
        return {
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": reply},
        }
    row = {"id": choice.id, "title": choice.title, "description": choice.description}
    return {"type": "interactive", "interactive": {"type": "list_reply", "list_reply": row}}


def location_message(latitude: float, longitude: float) -> dict[str, Any]:
    return {"type": "location", "location": {"latitude": latitude, "longitude": longitude}}


@dataclass(frozen=True)
class Choice:
    kind: str  # "button" or "row"
    id: str
    title: str
    description: str = ""


class Offered:
    """The buttons or rows of the latest reply, shared by the typing and the polling threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._choices: list[Choice] = []

    def get(self) -> list[Choice]:
        with self._lock:
            return list(self._choices)

    def set(self, choices: list[Choice]) -> None:
        with self._lock:
            self._choices = list(choices)


@dataclass
class ChatClient:
    """The webhook and outbox side of the chat, without the terminal (so it can be tested)."""

    config: Config
    http: httpx.Client
    cursor: str | None = None
    offered: Offered = field(default_factory=Offered)

    def post(self, message: dict[str, Any]) -> httpx.Response:
        body = json.dumps(webhook(self.config, message)).encode()
        response = self.http.post(
            f"{self.config.gateway_url}/webhooks/whatsapp",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": cloud_api.sign(body, self.config.app_secret),
            },
        )
        response.raise_for_status()
        return response

    def send(self, line: str) -> None:
        """What the user typed: a number picks an offered button or row, anything else is text."""
        stripped = line.strip()
        choices = self.offered.get()
        if stripped.isdecimal() and len(stripped) <= 3 and 1 <= int(stripped) <= len(choices):
            self.post(choice_message(choices[int(stripped) - 1]))
        elif stripped.startswith("/location"):
            parts = stripped.split()
            self.post(location_message(float(parts[1]), float(parts[2])))
        else:
            self.post(text_message(line))

    def poll(self) -> list[dict[str, Any]]:
        """New outbox messages for the test user, oldest first."""
        params = {"user_id": self.config.user_id}
        if self.cursor:
            params["after"] = self.cursor
        response = self.http.get(
            f"{self.config.gateway_url}/admin/outbox",
            params=params,
            headers={"X-API-Key": self.config.api_key},
        )
        response.raise_for_status()
        data = response.json()
        self.cursor = data.get("next") or self.cursor
        messages: list[dict[str, Any]] = data.get("messages", [])
        offered = [
            Choice("button", b["id"], b["title"]) for m in messages for b in m.get("buttons") or []
        ] + [
            Choice("row", r["id"], r["title"], r.get("description", ""))
            for m in messages
            for r in m.get("rows") or []
        ]
        if messages:
            self.offered.set(offered)
        return messages

    def skip_history(self) -> None:
        """Start after what is already in the outbox, so only new replies are shown."""
        while self.poll():
            pass


def render(message: dict[str, Any]) -> str:
    """A reply as the terminal shows it: the text, then numbered buttons or rows."""
    lines = [message.get("text", "")]
    options = [(b["title"], "") for b in message.get("buttons") or []] + [
        (r["title"], r.get("description", "")) for r in message.get("rows") or []
    ]
    for number, (title, description) in enumerate(options, start=1):
        lines.append(f"  {number}. {title}" + (f" ({description})" if description else ""))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(
        "bot> " + line if i == 0 else "     " + line for i, line in enumerate(text.split("\n"))
    )


class Answers:
    """The bot's replies shown so far, for piped input to wait on: typed ahead, a number went out
    before the list it picks from had come, and the last line's answer was never shown."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.count = 0
        self._last = 0.0

    def shown(self) -> None:
        with self._changed:
            self.count += 1
            self._last = time.monotonic()
            self._changed.notify_all()

    def wait_after(self, before: int) -> None:
        """Until replies past the first ``before`` came and then none for a while, or the bound."""
        deadline = time.monotonic() + ANSWER_WAIT_SECONDS
        with self._changed:
            while (now := time.monotonic()) < deadline:
                if self.count > before and now >= self._last + ANSWER_QUIET_SECONDS:
                    return
                until = self._last + ANSWER_QUIET_SECONDS if self.count > before else deadline
                self._changed.wait(min(until, deadline) - now)


def _poll_forever(
    client: ChatClient, stop: threading.Event, out: Callable[[str], None], answers: Answers
) -> None:
    while not stop.is_set():
        try:
            for message in client.poll():
                out(_indent(render(message)))
                answers.shown()
        except httpx.HTTPError as error:
            out(f"(outbox unreachable: {error})")
            stop.wait(2)
        stop.wait(POLL_SECONDS)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m services.dev.chat", description="Chat with the running Parley bot."
    )
    cli.add_argument("--user", default=DEFAULT_USER, help="the test user's WhatsApp id")
    cli.add_argument("--name", default="", help="the test user's profile name")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = Config.from_environment(args.user, args.name)
    if not config.app_secret or not config.api_key:
        print("No WHATSAPP_APP_SECRET / API_KEY and no dev secrets in var/: run `make run` first.")
        return 2
    with httpx.Client(timeout=10) as http:
        try:
            http.get(f"{config.gateway_url}/health").raise_for_status()
        except httpx.HTTPError:
            print(
                f"The gateway is not answering at {config.gateway_url}: start it with `make run`."
            )
            return 2
        client = ChatClient(config, http)
        try:
            client.skip_history()
        except httpx.HTTPStatusError as error:  # 401/403: another key; 404: the admin API is off
            print(
                f"The gateway at {config.gateway_url} refused to show the bot's replies "
                f"(GET /admin/outbox: {error.response.status_code}): make chat reads them with "
                "API_KEY, else the key make run keeps in var/dev-api-key. Set API_KEY to the "
                "gateway's admin key (make run prints it), or start the gateway with one."
            )
            return 2
        print(
            f"Chatting with the demo business as +{config.user_id} via {config.gateway_url}.\n"
            "Try: NYC to London next Friday. Type a number to pick an option, "
            "/location LAT LON to share a location, /quit to leave."
        )
        lock = threading.Lock()
        piped = not sys.stdin.isatty()
        answers = Answers()

        def out(text: str) -> None:
            with lock:  # a terminal gets its prompt back; piped, input() writes the next one
                print(text if piped else f"\r{text}\nyou> ", end="\n" if piped else "", flush=True)

        stop = threading.Event()
        # The poller has its own HTTP client: httpx clients are not shared between threads.
        with httpx.Client(timeout=10) as poll_http:
            poller = ChatClient(config, poll_http, cursor=client.cursor, offered=client.offered)
            thread = threading.Thread(
                target=_poll_forever, args=(poller, stop, out, answers), daemon=True
            )
            thread.start()
            try:
                while True:
                    line = input("you> ")
                    if piped:
                        print(line, flush=True)  # what a terminal would have echoed
                    if line.strip() in ("/quit", "/exit"):
                        break
                    if not line.strip():
                        continue
                    before = answers.count
                    try:
                        client.send(line)
                    except (httpx.HTTPError, ValueError, IndexError) as error:
                        out(f"(not sent: {error})")
                        continue
                    if piped:
                        answers.wait_after(before)
            except (KeyboardInterrupt, EOFError):
                print()
            finally:
                stop.set()
                thread.join(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
