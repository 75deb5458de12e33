"""A TCP proxy that can lose a reply for real: it forwards a connection both ways until the
client sends a given marker (bytes of one request, e.g. a provider message id inside a gRPC
message); from then on nothing the server sends reaches the client, and after ``hold`` seconds
(the server has done the request by then) both sides are reset. As a service killed or a
connection dropped after the work was done but before its answer left."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Self


class _Listener:
    """A loopback listener whose every connection, from ``start()`` to ``stop()``, goes to
    ``_take`` (on the accepting thread: it starts threads of its own for the work)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._closed = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._take(client)

    def _take(self, client: socket.socket) -> None:
        raise NotImplementedError


class ReplyCutter(_Listener):
    def __init__(self, upstream: str, hold: float = 0.5) -> None:
        super().__init__()
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.hold = hold
        self.cuts = 0
        self._marker: bytes | None = None
        self._before: tuple[bytes, Callable[[], object]] | None = None
        self._lock = threading.Lock()

    def cut_reply_to(self, marker: bytes) -> None:
        """Lose the answer to the next request that carries ``marker`` (once)."""
        with self._lock:
            self._marker = marker

    def before_request(self, marker: bytes, action: Callable[[], object]) -> None:
        """Run ``action`` before the next request that carries ``marker`` reaches the server
        (once): something that happens between a client's two calls, for real. ``action``
        must not go through this proxy (the request waits for it)."""
        with self._lock:
            self._before = (marker, action)

    def _take(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        muted = threading.Event()
        threading.Thread(target=self._up, args=(client, server, muted), daemon=True).start()
        threading.Thread(target=self._down, args=(server, client, muted), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        tail = b""
        while data := _received(client):
            with self._lock:
                before = self._before
                if before is not None and before[0] in tail + data:
                    self._before = None
                else:
                    before = None
            if before is not None:
                before[1]()
            with self._lock:
                marker = self._marker
                hit = marker is not None and marker in tail + data
                if hit:
                    self._marker = None
            if hit:
                muted.set()  # the server's answer, from now on, goes nowhere
            with contextlib.suppress(OSError):
                server.sendall(data)
            if hit:
                time.sleep(self.hold)
                self.cuts += 1
                _close(client, server)
                return
            tail = (tail + data)[-256:]
        _close(client, server)

    @staticmethod
    def _down(server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        while data := _received(server):
            if not muted.is_set():
                with contextlib.suppress(OSError):
                    client.sendall(data)
        _close(client, server)


def _received(sock: socket.socket) -> bytes:
    """The next bytes from ``sock``; empty once it is closed or broken."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            # A reset, not a FIN: as a process killed or a connection dropped on the way.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


@contextlib.contextmanager
def unanswered_address() -> Iterator[str]:
    """``host:port`` where a connect gets no answer, as with a dead host or a firewall that
    drops packets: a listener that never accepts, its queue (backlog 0 keeps one) already full,
    so Linux drops the SYNs of every further connect until the caller gives up."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        host, port = listener.getsockname()
        yield f"{host}:{port}"
    finally:
        filler.close()
        listener.close()


class ForwardProxy(_Listener):
    """An egress HTTP proxy, as a locked-down network has one (what ``HTTP_PROXY`` names): it
    takes a request in absolute form (``POST http://host:port/path``), notes its request line,
    and forwards the connection to that host both ways (its server reads the absolute form)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []  # the first request line of each connection

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _take(self, client: socket.socket) -> None:
        threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n" not in head and (data := _received(client)):
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.requests.append(line)
        netloc = line.split(" ")[1].split("://", 1)[-1].split("/", 1)[0] if " " in line else ""
        host, _, port = netloc.rpartition(":")
        try:
            server = socket.create_connection((host, int(port)))
        except (OSError, ValueError):
            _close(client)
            return
        server.sendall(head)
        threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
        self._pipe(server, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        while data := _received(source):
            with contextlib.suppress(OSError):
                sink.sendall(data)
        _close(source, sink)


class RawAnswers(_Listener):
    """An HTTP/1.1 server that answers what a broken provider, or a proxy on the way, may send:
    ``script(request body)`` gives the raw bytes of each answer and whether the connection is
    then reset (a body cut short after its head, an error page of megabytes…). It notes the
    body of every request."""

    def __init__(self, script: Callable[[bytes], tuple[bytes, bool]]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _take(self, client: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = _received(client)
                if not more:
                    _close(client)
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                more = _received(client)
                if not more:
                    _close(client)
                    return
                data += more
            body, data = data[:length], data[length:]
            self.requests.append(body)
            answer, reset = self.script(body)
            try:
                client.sendall(answer)
            except OSError:  # the client stopped reading and went
                reset = True
            if reset:
                _close(client)
                return
