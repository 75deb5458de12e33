"""`make chat`'s client against a local HTTP server standing in for the gateway's two endpoints:
the webhooks it posts must be signed Cloud API JSON, and a typed number must become the tap on
the row or button it names."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from services.dev.chat import ChatClient, Config, render
from tests.support.processes import ROOT, ServiceProcess, Valkey, free_port, wait_for

SECRET = "test-app-secret"
API_KEY = "test-admin-key"


class Gateway:
    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.outbox: list[dict[str, Any]] = []
        self.outbox_requests: list[tuple[dict[str, list[str]], dict[str, str]]] = []
        # Set: each text posted is answered "echo: <text>" in the outbox this long after.
        self.answer_after: float | None = None
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gateway.posts.append((body, dict(self.headers)))
                self._json({"status": "accepted"})
                if gateway.answer_after is not None:
                    message = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]
                    text = f"echo: {message['text']['body']}"
                    threading.Timer(gateway.answer_after, gateway.answer, (text,)).start()

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                gateway.outbox_requests.append((query, dict(self.headers)))
                after = int(query.get("after", ["0"])[0])
                messages = [m for m in gateway.outbox if int(m["id"]) > after]
                cursor = messages[-1]["id"] if messages else str(after)
                self._json({"messages": messages, "next": cursor})

            def _json(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, text: str) -> None:
        self.outbox.append(
            {"id": str(len(self.outbox) + 1), "text": text, "buttons": [], "rows": []}
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    yield server
    server.stop()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[ChatClient]:
    config = Config(f"http://127.0.0.1:{gateway.port}", SECRET, API_KEY, user_id="15551234567")
    with httpx.Client(timeout=5) as http:
        yield ChatClient(config, http)


def last_message(gateway: Gateway) -> dict[str, Any]:
    body, headers = gateway.posts[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["object"] == "whatsapp_business_account"
    (entry,) = payload["entry"]
    (change,) = entry["changes"]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == "100000000000001"
    assert value["contacts"][0]["wa_id"] == "15551234567"
    (message,) = value["messages"]
    assert message["from"] == "15551234567"
    assert message["id"].startswith("wamid.") and message["timestamp"].isdigit()
    return dict(message)


def test_text_is_a_signed_cloud_api_webhook(gateway: Gateway, client: ChatClient) -> None:
    client.send("NYC to London next Friday")
    message = last_message(gateway)
    assert message["type"] == "text" and message["text"] == {"body": "NYC to London next Friday"}
    client.send("again")
    ids = {
        json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        for body, _ in gateway.posts
    }
    assert len(ids) == 2, "every message has its own wamid"


def test_replies_are_polled_with_the_key_and_a_cursor(gateway: Gateway, client: ChatClient) -> None:
    gateway.outbox = [{"id": "1", "text": "old", "buttons": [], "rows": []}]
    client.skip_history()
    gateway.outbox.append({"id": "2", "text": "Hi!", "buttons": [], "rows": []})
    assert [m["text"] for m in client.poll()] == ["Hi!"]
    assert client.poll() == []
    query, headers = gateway.outbox_requests[-1]
    assert query == {"user_id": ["15551234567"], "after": ["2"]}
    assert headers["X-API-Key"] == API_KEY


def test_a_typed_number_taps_the_row_it_names(gateway: Gateway, client: ChatClient) -> None:
    rows = [
        {"id": "place:1", "title": "Norman Y. Mineta", "description": "San Jose, US · SJC"},
        {"id": "place:2", "title": "Juan Santamaria", "description": "San Jose, CR · SJO"},
    ]
    gateway.outbox = [
        {"id": "1", "text": "Which “San Jose” do you mean?", "buttons": [], "rows": rows}
    ]
    shown = client.poll()
    assert render(shown[0]).splitlines()[1:] == [
        "  1. Norman Y. Mineta (San Jose, US · SJC)",
        "  2. Juan Santamaria (San Jose, CR · SJO)",
    ]
    client.send("2")
    message = last_message(gateway)
    assert message["type"] == "interactive"
    assert message["interactive"] == {
        "type": "list_reply",
        "list_reply": {
            "id": "place:2",
            "title": "Juan Santamaria",
            "description": "San Jose, CR · SJO",
        },
    }
    # A number with nothing to choose from is plain text.
    client.send("7")
    assert last_message(gateway)["text"] == {"body": "7"}


def test_buttons_and_locations(gateway: Gateway, client: ChatClient) -> None:
    gateway.outbox = [
        {
            "id": "1",
            "text": "Search again?",
            "buttons": [{"id": "retry", "title": "Retry"}],
            "rows": [],
        }
    ]
    client.poll()
    client.send("1")
    assert last_message(gateway)["interactive"] == {
        "type": "button_reply",
        "button_reply": {"id": "retry", "title": "Retry"},
    }
    client.send("/location 51.47 -0.45")
    assert last_message(gateway)["location"] == {"latitude": 51.47, "longitude": -0.45}


def test_piped_lines_each_wait_for_the_bot_s_answer(gateway: Gateway) -> None:
    """`printf 'hi\\n...' | make chat` (a script, a demo, the transcripts in docs/engine.md):
    each line goes once the answer to the one before has come, and the last one's answer is
    shown before the chat ends. (Was: every line went at once, so a number went out before the
    list it picks from, and at the end of the input the chat quit with the answers unshown.)"""
    gateway.answer_after = 0.5
    env = {
        **os.environ,
        "GATEWAY_URL": f"http://127.0.0.1:{gateway.port}",
        "API_KEY": API_KEY,
        "WHATSAPP_APP_SECRET": SECRET,
    }
    chat = subprocess.run(
        [sys.executable, "-m", "services.dev.chat"],
        cwd=ROOT,
        env=env,
        input="hello\nsecond\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chat.returncode == 0, chat.stdout + chat.stderr
    transcript = chat.stdout.split("/quit to leave.\n", 1)[1]
    assert transcript == (
        "you> hello\nbot> echo: hello\nyou> second\nbot> echo: second\nyou> \n"
    ), transcript


@pytest.mark.parametrize("gateway_key", ["the-key-make-run-printed", ""])
def test_a_key_the_gateway_refuses_is_one_line(
    tmp_path: Path, valkey: Valkey, gateway_key: str
) -> None:
    """`make chat` against a real gateway whose admin key is not the one chat has (the stack
    started with API_KEY in another shell, or a gateway started without make run, whose admin API
    is off): one line saying which key it used and what to set, not an httpx traceback."""
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    gateway = ServiceProcess(
        "services.gateway.main",
        {
            "GATEWAY_ROLE": "web",
            "GATEWAY_PORT": str(port),
            "GATEWAY_HOST": "127.0.0.1",
            "REDIS_URL": valkey.url,
            "API_KEY": gateway_key,
            "OUTBOX_ONLY": "true",
            "SESSION_SERVICE_ADDR": dead,
            "BUSINESS_SERVICE_ADDR": dead,
            "SEARCH_SERVICE_ADDR": dead,
        },
        tmp_path / "gateway.log",
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _answers(f"{url}/health"), 30), gateway.log[-3000:]
        env = {**os.environ, "GATEWAY_URL": url, "API_KEY": "stale", "WHATSAPP_APP_SECRET": "s"}
        chat = subprocess.run(
            [sys.executable, "-m", "services.dev.chat"],
            cwd=ROOT,
            env=env,
            input="/quit\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        gateway.stop()
    assert chat.returncode == 2, chat.stdout + chat.stderr
    assert "Traceback" not in chat.stderr, chat.stderr
    assert "API_KEY" in chat.stdout and url in chat.stdout, chat.stdout


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
