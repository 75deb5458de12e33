"""Session service fixtures: the real service process on a real Valkey, and a gRPC stub."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from parley.session.v1 import session_pb2, session_pb2_grpc
from tests.support.processes import ServiceProcess, Valkey, free_port

SERVICE = "parley.session.v1.SessionService"
# The session tests' own database on the shared Valkey, so they never touch others' keys.
SESSION_DB = 7
_ids = itertools.count()


@dataclass
class Running:
    process: ServiceProcess
    address: str
    metrics_port: int

    def metrics(self) -> dict[str, float]:
        """The service's Prometheus samples, name{labels} → value."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_events(self) -> list[dict[str, object]]:
        lines = []
        for raw in self.process.log.splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def stop(self) -> None:
        self.process.stop()


def start_session(log_dir: Path, redis_url: str, **env: str) -> Running:
    port, metrics_port = free_port(), free_port()
    process = ServiceProcess(
        "services.session.server",
        {
            "SESSION_PORT": str(port),
            "SESSION_METRICS_PORT": str(metrics_port),
            "REDIS_URL": redis_url,
            "SESSION_FALLBACK_PROBE_SECONDS": "0.2",
            **env,
        },
        log_dir / f"session-{next(_ids)}.log",
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        process.wait_serving(address, SERVICE)
    except AssertionError:
        process.stop()
        raise
    return Running(process, address, metrics_port)


@pytest.fixture(scope="session")
def session_redis_url(valkey: Valkey) -> str:
    valkey.client().execute_command("SELECT", SESSION_DB)
    return f"redis://127.0.0.1:{valkey.port}/{SESSION_DB}"


@pytest.fixture(scope="session")
def session_service(
    session_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """One session service for the tests that need nothing special from it."""
    running = start_session(tmp_path_factory.mktemp("session"), session_redis_url)
    yield running
    running.stop()


@pytest.fixture
async def stub(session_service: Running) -> AsyncIterator[session_pb2_grpc.SessionServiceStub]:
    async with grpc.aio.insecure_channel(session_service.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


def new_key(
    business: str = "biz", role: int = session_pb2.CONVERSATION_ROLE_CLIENT
) -> session_pb2.ConversationKey:
    """A key no other test uses."""
    return session_pb2.ConversationKey(
        business_id=business, user_id=f"+1555{next(_ids):07d}", role=role
    )


def user_message(text: str, provider_id: str = "") -> session_pb2.Message:
    return session_pb2.Message(
        role=session_pb2.MESSAGE_ROLE_USER, content=text, provider_message_id=provider_id
    )


def bot_message(text: str) -> session_pb2.Message:
    return session_pb2.Message(role=session_pb2.MESSAGE_ROLE_ASSISTANT, content=text)
