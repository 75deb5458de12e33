"""Fixtures shared by the whole suite: real Valkey servers on free ports. And a check at the end
of the run that no process a test started is still running."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import RUN_MARK, SHARED_DATABASES, Valkey, left_by_the_run

os.environ[RUN_MARK] = secrets.token_hex(8)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every fixture has been torn down by now. A process left running (a gateway worker a
    test did not stop, the children of one killed alone) went on answering the messages of
    later tests on the same Redis database: named here, killed, and the run fails."""
    deadline = time.monotonic() + 5  # time for ones stopped just now to exit
    while (left := left_by_the_run()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")  # after the progress dots
        reporter.section("processes left running by the tests", sep="!", red=True)
        for pid, what in sorted(left.items()):
            reporter.write_line(f"{pid}: {what}")
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
