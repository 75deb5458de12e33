"""Fixtures for the search tests: the place index, a fake Amadeus server, engines on Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.search.places import Places
from tests.search.fake_amadeus import FakeAmadeus


@pytest.fixture(scope="session")
def places() -> Places:
    return Places()


@pytest.fixture(scope="session")
def amadeus_server() -> Iterator[FakeAmadeus]:
    server = FakeAmadeus().start()
    yield server
    server.stop()


@pytest.fixture
def amadeus(amadeus_server: FakeAmadeus) -> Iterator[FakeAmadeus]:
    amadeus_server.reset()
    yield amadeus_server
    amadeus_server.reset()
