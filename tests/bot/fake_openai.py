"""A local fake of the OpenAI chat-completions contract (POST /v1/chat/completions), on a free
port in a thread. ``mode`` says how it answers: "good" (the JSON in ``answer``), "garbage" (text
that is not JSON), "invalid" (JSON that breaks the schema), "nested" (JSON nested deeper than a
parser's recursion limit), "error" (HTTP 500), "rate_limited" (HTTP 429 with
``Retry-After: retry_after``), "slow" (``delay`` seconds, then a good answer),
"huge" (a good answer padded with 2 MiB of whitespace, still valid JSON), "endless" (a good
answer's start, then whitespace without end and no Content-Length) or "trickle" (a good
answer, one byte at a time with ``delay`` seconds between them, so no single read waits long).
The next ``fail_first`` requests, whatever the mode, get an HTTP 500."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.processes import free_port


class FakeOpenAI:
    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "good"
        self.delay = 2.0
        self.retry_after = "20"
        self.fail_first = 0
        self.answer: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fake.mode == "error":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fake.mode == "rate_limited":
                    error = {"message": "Rate limit reached", "type": "requests"}
                    return self._send(429, {"error": error}, {"Retry-After": fake.retry_after})
                if fake.mode == "slow":
                    time.sleep(fake.delay)
                if fake.mode == "endless":
                    return self._endless()
                content = {
                    "garbage": "Sure! The user wants to fly somewhere nice.",
                    "invalid": json.dumps({**fake.answer, "adults": 42}),
                    "nested": "[" * 100_000 + "]" * 100_000,
                }.get(fake.mode, json.dumps(fake.answer))
                self._send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def _endless(self) -> None:
                # HTTP/1.0 without Content-Length: the body ends when the connection does.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    self.wfile.write(b'{"choices": [{"message": {"content": "{}"}}]')
                    while True:
                        self.wfile.write(b" " * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                if fake.mode == "huge" and status == 200:
                    data += b" " * (2 << 20)
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if fake.mode != "trickle":
                        self.wfile.write(data)
                        return
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(fake.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout case)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
