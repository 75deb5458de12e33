"""uvicorn's httptools protocol with bounds on a request's head (its request line and headers),
in size, and on the time a whole request may take to arrive.

httptools has no bound on a head: it keeps a header's bytes until the header ends (joining every
chunk to the last, so a long one also costs time that grows with the square of its length), and
uvicorn's bound on a head (``h11_max_incomplete_event_size``) is only for its slower h11
protocol. So one client could make the gateway hold megabytes per connection before any of our
code runs. Here a head past ``MAX_REQUEST_HEAD_BYTES`` (still unfinished, or parsed whole from one
read) is answered 431 and its connection closed, as nginx, Node and h11 do (their limits are
8-32 KiB; Meta's and Twilio's webhooks use about 1 KiB).

Nor has uvicorn any bound in time but the keep-alive timeout between requests: a connection
opened and left silent, a head sent a byte at a time, or a body shorter than its
``Content-Length`` (or a chunked one that never ends) held its connection and, for a body, its
request's task for as long as the client liked: enough of them and the process runs out of
descriptors, and the providers' webhooks are refused. Here a request must arrive whole within
``read_timeout_seconds`` (``REQUEST_READ_TIMEOUT_SECONDS``) of its first byte, or of the
connection's opening for the first: past it the request is answered 408 (a silent connection is
closed without a word, as an idle kept-alive one is) and the connection closed, as nginx's
``client_header_timeout``/``client_body_timeout`` and Node's ``requestTimeout`` do.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, read_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's head (a connection starts with one)
        self._head_bytes = 0
        self._head_over = False  # a head parsed whole was past the bound: answered 431
        self._in_request = False  # a request's first byte came and its last has not
        self._read_timeout = read_timeout_seconds
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()  # the first request: from the connection's opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that ends the head (and carries the body's start) is
        # fine; a head still going past the bound, or one parsed whole past it, is refused.
        if self._head_over or (self._in_head and self._head_bytes > MAX_REQUEST_HEAD_BYTES):
            self._in_head = False
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        if self._read_deadline is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that arrived whole in one read (a read can hold well over the bound) was never
        # seen unfinished past it in data_received: its size is what was parsed of it.
        parsed = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if parsed > MAX_REQUEST_HEAD_BYTES:
            self._head_over = True  # no request cycle: data_received answers 431
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._head_over:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_over:
            return  # the connection is closed once this chunk is parsed
        self._disarm()
        self._in_request = False
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # a kept-alive connection's next request

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request it cannot parse, in the shape of every other refusal.
        self._close_with(400, msg)

    def _refuse_head(self) -> None:
        if self.transport.is_closing():  # the parser refused the request already (400)
            return
        self.logger.warning("Request head over %d bytes refused.", MAX_REQUEST_HEAD_BYTES)
        self._close_with(431, "request line and headers too large")

    def _arm(self) -> None:
        self._read_deadline = self.loop.call_later(self._read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle  # this request's once its head is read; before, the one before it
        if self.flow.read_paused or (
            cycle is not None
            and not cycle.response_complete
            and (cycle.response_started or self._in_head)
        ):
            # The wait is ours, not the client's: its bytes are held back while a request before
            # it is handled, or an answer is being written. Looked at again later.
            self._arm()
            return
        if not self._in_request:  # opened and never used: closed as an idle one is
            self.transport.close()
            return
        if cycle is not None and not self._in_head:
            # The application waits for the rest of the body: it is told the client is gone
            # (the webhook counts it as cut short), and anything it answers is not written.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # answered before the body ended (a 413): no more
                self.transport.close()
                return
        self.logger.warning("Request not received whole within %g s: 408.", self._read_timeout)
        self._close_with(408, "the request did not arrive in time")

    def _close_with(self, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()  # the shape of every error of the gateway
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def bounded_protocol(read_timeout_seconds: float) -> type[asyncio.Protocol]:
    """The protocol for uvicorn's ``http`` option. uvicorn calls what it is given with keyword
    arguments, as it would the class, and pickles it for ``WEB_CONCURRENCY`` > 1: a partial of
    the class does both."""
    protocol = functools.partial(
        BoundedHttpToolsProtocol, read_timeout_seconds=read_timeout_seconds
    )
    return cast("type[asyncio.Protocol]", protocol)
