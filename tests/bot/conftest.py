"""Fixtures for the engine tests: the real search service process (offline provider) on a free
port with a real Valkey, and a gRPC stub to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from parley.search.v1 import search_pb2, search_pb2_grpc
from services.common.clients import make_channel, with_call_defaults
from tests.support.processes import ServiceProcess, Valkey, free_port

SEARCH = "parley.search.v1.SearchService"
NEW_YORK = ZoneInfo("America/New_York")  # the test businesses' time zone


def today() -> date:
    """The test businesses' today, as the engine reads relative dates."""
    return datetime.now(UTC).astimezone(NEW_YORK).date()


def coming(weekday: int) -> date:
    """What "next <weekday>" means to the engine today."""
    days = (weekday - today().weekday()) % 7 or 7
    return today() + timedelta(days=days)


class SearchServer:
    def __init__(self, process: ServiceProcess, address: str, failure_file: Path) -> None:
        self.process, self.address, self.failure_file = process, address, failure_file

    def fail(self, failing: bool) -> None:
        """Make every provider call fail as an outage would (the offline provider's switch)."""
        if failing:
            self.failure_file.touch()
        else:
            self.failure_file.unlink(missing_ok=True)

    def first_page(self, origin: str, destination: str, departure: date, **fields: Any) -> int:
        """How many offers the bot's first page shows for this search: three, or fewer on a
        day the offline schedule has fewer. It varies with the date (Oslo to Helsinki has two
        on some days), so a test that expects three fails on some days, whatever the code."""
        request = search_pb2.SearchFlightsRequest(
            origin=origin,
            destination=destination,
            departure_date=departure.isoformat(),
            max_results=9,
            **fields,
        )
        with grpc.insecure_channel(self.address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            response = stub.SearchFlights(request, timeout=10)
        return min(3, len(response.offers))


@pytest.fixture(scope="session")
def search_server(
    valkey: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchServer]:
    directory = tmp_path_factory.mktemp("search")
    port = free_port()
    failure_file = directory / "provider-down"
    process = ServiceProcess(
        "services.search.server",
        {
            "SEARCH_PORT": str(port),
            "SEARCH_METRICS_PORT": "0",
            "REDIS_URL": valkey.url.replace("/0", "/5"),
            "SEARCH_PROVIDER": "offline",
            "SEARCH_OFFLINE_FAILURE_FILE": str(failure_file),
            "SEARCH_BREAKER_FAILURE_THRESHOLD": "1",
            "SEARCH_BREAKER_RECOVERY_SECONDS": "1",
            # Short so a test can make cached results go stale in a second or two.
            "REDIS_CACHE_TTL_SECONDS": "2",
        },
        directory / "search.log",
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        process.wait_serving(address, SEARCH, timeout=60)
        yield SearchServer(process, address, failure_file)
    finally:
        process.stop()


@pytest.fixture(scope="session")
async def search_channel(search_server: SearchServer) -> AsyncIterator[grpc.aio.Channel]:
    channel = make_channel(search_server.address, SEARCH)
    yield channel
    await channel.close()


@pytest.fixture(scope="session")
def search_stub(search_channel: grpc.aio.Channel) -> search_pb2_grpc.SearchServiceStub:
    return with_call_defaults(search_pb2_grpc.SearchServiceStub(search_channel), 5.0)


# The whole-stack harness (session and business services, the gateway launcher, a fake of
# the Graph API), registered here for the conversations through the real gateway.
from tests.support.stack import fake_clouds, log_dir, services  # noqa: E402, F401
