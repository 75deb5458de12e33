"""Fixtures of the business tests: both stores, a MongoDB (real or stand-in), service processes,
and a registry of every token the tests use, for the test that scans the logs for them.

MongoDB: a real server when MONGODB_URI is set; otherwise SecantusDB, a MongoDB server written
in Python that speaks the wire protocol on a real socket (from PyPI, no mongod download), so the
real ``AsyncMongoClient`` code path runs. The test ids say which: ``mongodb-real`` or
``mongodb-standin-secantusdb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pymongo
import pytest
import structlog

from parley.business.v1 import business_pb2, business_pb2_grpc
from services.business.core import BusinessCore, CachedBusiness
from services.business.crypto import TokenCipher
from services.business.model import BusinessRecord
from services.business.mongo_store import MongoStore
from services.business.sqlite_store import SqliteStore
from services.business.store import BusinessStore
from services.common.logs import merge_call_fields
from services.common.lookup_cache import LookupCache
from tests.support.processes import ROOT, ServiceProcess, free_port, wait_for

REAL_MONGODB_URI = os.environ.get("MONGODB_URI")
MONGO_ID = "mongodb-real" if REAL_MONGODB_URI else "mongodb-standin-secantusdb"
TEST_SECRET = "business-tests-encryption-secret-0123456789"


@dataclass
class SecretRegistry:
    """Every plaintext token a business test hands the system, and where logs were written."""

    log_dir: Path
    tokens: list[str] = field(default_factory=list)

    def token(self, kind: str = "access") -> str:
        value = f"TOK{kind.upper()}{secrets.token_hex(12)}"
        self.tokens.append(value)
        return value


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> SecretRegistry:
    return SecretRegistry(tmp_path_factory.mktemp("business-logs"))


@pytest.fixture(scope="package", autouse=True)
def in_process_logs(registry: SecretRegistry) -> Iterator[Path]:
    """Logs of code running inside pytest go to a file the scan test reads (JSON lines)."""
    path = registry.log_dir / "in-process.log"
    old = structlog.get_config()
    with path.open("a") as sink:
        structlog.configure(
            processors=[
                merge_call_fields,
                structlog.processors.add_log_level,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(default=str),
            ],
            logger_factory=structlog.WriteLoggerFactory(sink),
            cache_logger_on_first_use=False,
        )
        # The standard library's loggers (pymongo, grpc, aiosqlite) land in the same file.
        handler = logging.StreamHandler(sink)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield path
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            structlog.configure(**old)


# --- MongoDB --------------------------------------------------------------------------------


@contextlib.contextmanager
def secantusdb(log_path: Path, *args: str, query: str = "") -> Iterator[str]:
    """A SecantusDB on a free port, ``args`` added to its command line, until the block ends:
    its URI, ``query`` (``?tls=true&...``) appended."""
    port = free_port()
    log = log_path.open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            ":memory:",
            "--cache-size",
            "64M",
            "--log-level",
            "WARNING",
            *args,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    uri = f"mongodb://127.0.0.1:{port}/{query}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=300
    )

    def up() -> bool:
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return process.poll() is None and False

    try:
        if not wait_for(up, timeout=30, interval=0.2):
            raise RuntimeError("SecantusDB did not start")
        yield uri
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def mongo_uri(registry: SecretRegistry) -> Iterator[str]:
    if REAL_MONGODB_URI:
        yield REAL_MONGODB_URI
        return
    with secantusdb(registry.log_dir / "secantusdb.log") as uri:
        yield uri


def fresh_database() -> str:
    return f"parley_test_{secrets.token_hex(6)}"


# --- stores ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", MONGO_ID])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusinessStore]:
    """One empty store of each kind: the contract suite runs once per store."""
    made: BusinessStore
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "business.db")
    else:
        uri = request.getfixturevalue("mongo_uri")
        made = MongoStore(uri, database=fresh_database(), min_pool_size=1, max_pool_size=20)
    await made.open()
    try:
        yield made
    finally:
        if isinstance(made, MongoStore):
            await made.collection.database.client.drop_database(made.database)
        await made.close()


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher(TEST_SECRET)


async def create_business(
    core: BusinessCore,
    subdomain: str,
    phone_number_id: str,
    *,
    numbers: tuple[str, ...] = (),
    active: bool = True,
    secrets: dict[str, str] | None = None,
    idempotency_key: str = "",
) -> BusinessRecord:
    """A WhatsApp-enabled business in UTC, named after its subdomain, through ``core``."""
    return await core.create(
        name=subdomain.title(),
        subdomain=subdomain,
        phone_number_ids=(phone_number_id,),
        numbers=numbers,
        whatsapp_enabled=True,
        active=active,
        time_zone="UTC",
        locale="en",
        secrets=secrets or {},
        idempotency_key=idempotency_key,
    )


@pytest.fixture
def core(store: BusinessStore, cipher: TokenCipher) -> BusinessCore:
    cache: LookupCache[CachedBusiness] = LookupCache(capacity=100, ttl=300, negative_ttl=30)
    return BusinessCore(store, cipher, cache=cache)


async def when_writer_starts(store: SqliteStore, sql: str, action: Callable[[], object]) -> None:
    """Run ``action`` on the event loop once the store's writer starts the statement ``sql``, on
    aiosqlite's thread, before it completes (a BEGIN still waiting for the file lock, a COMMIT
    still writing): the moment a test cancels a caller at, without guessing a delay."""
    loop = asyncio.get_running_loop()

    def trace(statement: str) -> None:
        if statement == sql:
            loop.call_soon_threadsafe(action)

    writer = await store._write()
    await writer.set_trace_callback(trace)


# --- service processes ----------------------------------------------------------------------


@dataclass
class RunningService:
    process: ServiceProcess
    address: str
    metrics_port: int
    channel: grpc.aio.Channel
    stub: business_pb2_grpc.BusinessServiceStub

    async def close(self) -> None:
        await self.channel.close()
        await asyncio.to_thread(self.process.stop)


async def start_service(
    registry: SecretRegistry, name: str, db_path: Path, *, root: Path = ROOT, **env: str
) -> RunningService:
    """A service process on ``db_path``; ``root``: the source tree it runs (another release's,
    whose PYTHONPATH the caller sets in ``env``)."""
    port, metrics_port = free_port(), free_port()
    process = ServiceProcess(
        "services.business.server",
        {
            "BUSINESS_PORT": str(port),
            "BUSINESS_METRICS_PORT": str(metrics_port),
            "BUSINESS_DB_PATH": str(db_path),
            "ENCRYPTION_SECRET": TEST_SECRET,
            "LOG_LEVEL": "DEBUG",  # the scan must see everything the service can log
            **env,
        },
        registry.log_dir / f"{name}-{secrets.token_hex(3)}.log",
        root=root,
    )
    # Only what the test sets: no MONGODB_URI or Redis URL leaking in from the environment.
    for var in ("MONGODB_URI", "REDIS_URL", "GATEWAY_REDIS_URL", "WARMUP_CACHE"):
        if var not in env:
            process.env.pop(var, None)
    process.start()
    address = f"127.0.0.1:{port}"
    await asyncio.to_thread(process.wait_serving, address, "", 30.0)
    channel = grpc.aio.insecure_channel(address)
    return RunningService(
        process, address, metrics_port, channel, business_pb2_grpc.BusinessServiceStub(channel)
    )


_SEQUENCE = itertools.count(secrets.randbelow(10**6) * 10)


def demo_request(
    registry: SecretRegistry | None = None,
    *,
    subdomain: str | None = None,
    pnids: list[str] | None = None,
    numbers: list[str] | None = None,
    active: bool = True,
    enabled: bool = True,
) -> business_pb2.CreateBusinessRequest:
    """A valid CreateBusinessRequest with fresh identities (and a registered token if given)."""
    suffix = next(_SEQUENCE)
    credentials = business_pb2.ChannelCredentials()
    if registry is not None:
        credentials = business_pb2.ChannelCredentials(
            whatsapp_access_token=registry.token("access"),
            twilio_account_sid="AC" + secrets.token_hex(16),
            twilio_auth_token=registry.token("twilio"),
        )
    return business_pb2.CreateBusinessRequest(
        business=business_pb2.Business(
            name=f"Travel {suffix}",
            subdomain=subdomain or f"travel-{suffix}",
            whatsapp_phone_number_ids=pnids if pnids is not None else [f"{10**14 + suffix}"],
            whatsapp_numbers=numbers if numbers is not None else [f"+1555{suffix:07d}"],
            whatsapp_enabled=enabled,
            active=active,
            time_zone="America/New_York",
            locale="en-US",
        ),
        credentials=credentials,
    )
