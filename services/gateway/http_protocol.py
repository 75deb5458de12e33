"""uvicorn's httptools protocol with a bound on a request's head (its request line and headers).

httptools has none: it keeps a header's bytes until the header ends (joining every chunk to the
last, so a long one also costs time that grows with the square of its length), and uvicorn's
bound on a head (``h11_max_incomplete_event_size``) is only for its slower h11 protocol. So one
client could make the gateway hold megabytes per connection before any of our code runs. Here a
head still unfinished after ``MAX_REQUEST_HEAD_BYTES`` is answered 431 and its connection
closed, as nginx, Node and h11 do (their limits are 8-32 KiB; Meta's and Twilio's webhooks use
about 1 KiB).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's head (a connection starts with one)
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that ends the head (and carries the body's start) is
        # fine; only a head that is still going past the bound is refused.
        if self._in_head and self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._in_head = False
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # a kept-alive connection's next request

    def _refuse_head(self) -> None:
        if self.transport.is_closing():  # the parser refused the request already (400)
            return
        self.logger.warning("Request head over %d bytes refused.", MAX_REQUEST_HEAD_BYTES)
        message = b"request line and headers too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + message
        )
        self.transport.close()
