"""Fixtures shared by the whole suite: real Valkey servers on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import SHARED_DATABASES, Valkey


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """One real Valkey for the session; tests use their own key prefixes or databases."""
    directory = tmp_path_factory.mktemp("valkey")
    server = Valkey(directory, None, "--databases", str(SHARED_DATABASES)).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_valkey(tmp_path: Path) -> Iterator[Valkey]:
    """A Valkey of the test's own, for tests that stop or restart it."""
    server = Valkey(tmp_path / "valkey").start()
    yield server
    server.stop()
