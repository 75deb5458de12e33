"""A fake of the WhatsApp Graph API for the system benchmark: ``POST /{phone_number_id}/messages``.

It answers as the Graph API does (a message id for a message, ``{"success": true}`` for a read
receipt) and records, in arrival order, what each request was and when it was fully received
(``time.time()``): ``["m", to, "", t]`` for a message to a user, ``["r", "", message_id, t]`` for a
read receipt. ``GET /_received?since=N`` returns the records from index N on.

A raw asyncio HTTP/1.1 server (keep-alive, Content-Length bodies), not a web framework: it shares
two cores with the whole stack and the load generator, so its own cost must stay small.
Run it in its own process: ``python -m bench.system_fake PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

RECORDS: list[list[Any]] = []
_ids = itertools.count(1)


def handle(method: str, target: str, body: bytes) -> tuple[int, bytes]:
    """The status and JSON body for one request; records Graph API calls."""
    now = time.time()
    path = urlsplit(target).path
    if method == "POST" and path.endswith("/messages"):
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, b'{"error":{"message":"invalid JSON","code":100}}'
        if payload.get("status") == "read":
            RECORDS.append(["r", "", payload.get("message_id", ""), now])
            return 200, b'{"success":true}'
        to = payload.get("to", "")
        RECORDS.append(["m", to, "", now])
        return 200, orjson.dumps(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": f"wamid.out.{next(_ids)}"}],
            }
        )
    if method == "GET" and path == "/_received":
        since = int(parse_qs(urlsplit(target).query).get("since", ["0"])[0])
        return 200, orjson.dumps(RECORDS[since:])
    if method == "GET" and path == "/_count":
        return 200, orjson.dumps(len(RECORDS))
    return 404, b'{"error":{"message":"not found","code":100}}'


class GraphProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, target, _ = head[0].split(" ", 2)
            status, out = handle(method, target, body)
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\n\r\n".encode()
                + out
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(GraphProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    try:
        import uvloop

        uvloop.run(serve(int(argv[0])))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve(int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
