"""``make run``'s launcher, end to end: the whole stack up on embedded defaults, answering, and
stopped by Ctrl-C (SIGINT to the terminal's process group) cleanly and in order."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from services.common.healthcheck import check
from services.dev.launcher import process_running
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
UP = "Parley is up."
DEMO = "Demo business"


class Lines:
    """A child's output, read on a thread so the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self._process.poll() is not None:
                    return any(text in line for line in self.lines)
                self._changed.wait(min(left, 0.5))
            return True

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def test_make_run_serves_then_stops_on_ctrl_c_dependents_first(tmp_path: Path) -> None:
    env = _launcher_env(tmp_path)
    ports = {name: env[f"{name.upper()}_PORT"] for name in ("session", "business", "search")}
    launcher, output = _launch(env)
    try:
        assert output.wait_for(DEMO, 120), output.text()[-4000:]
        assert (tmp_path / "var" / "valkey").is_dir()  # data where it was told, not in ./var
        gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        assert httpx.get(f"{gateway}/health", timeout=5).status_code == 200
        for name in ("session", "business", "search"):
            assert check(f"127.0.0.1:{ports[name]}", "", timeout=5) == "SERVING", name
        started = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", output.text())]
        assert len(started) == 5, output.text()  # valkey and the four services
        # The banner's `make chat`, typed in another terminal (none of this one's variables),
        # reaches this stack: its moved port, and its var/ with the dev secrets chat signs with.
        chat = _run_banner_chat(output.text())
        assert chat.returncode == 0 and f"via {gateway}." in chat.stdout, chat.stdout

        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C does
        assert launcher.wait(timeout=60) == 0, output.text()[-4000:]
    finally:
        _stop_everything(launcher, output)

    text = output.text()
    shutdown = text[text.index("SIGINT received") :]
    # Nothing complains while stopping: Valkey outlives every client of it.
    assert not re.search(r"\[(warning|error)|Traceback", shutdown), shutdown
    # Dependents first, as docker compose stops them: the gateway, then the services it
    # calls, then Valkey.
    gateway_done = shutdown.index("gateway stopped")
    for name in ("session", "business", "search"):
        assert re.search(rf"{name} +\| .*shutting down", shutdown[gateway_done:]), shutdown
        assert not re.search(rf"{name} +\| .*shutting down", shutdown[:gateway_done]), shutdown
    assert shutdown.index("sending SIGTERM to valkey") > gateway_done, shutdown
    assert "valkey stopped (rc=0)" in shutdown, shutdown
    for pid in started:
        assert not process_running(pid), f"pid {pid} still running after make run stopped"


def _run_banner_chat(text: str) -> subprocess.CompletedProcess[str]:
    """``make chat`` as the banner shows it, from a terminal with none of the stack's settings."""
    line = next(line for line in text.splitlines() if "(in another terminal" in line)
    settings = dict(word.split("=", 1) for word in shlex.split(line.split("make chat")[0]))
    unset = {"PARLEY_VAR_DIR", "GATEWAY_URL", "API_KEY", "WHATSAPP_APP_SECRET"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    return subprocess.run(
        [sys.executable, "-m", "services.dev.chat"],
        env=env | settings,
        cwd=ROOT,
        input="/quit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stop_everything(launcher: subprocess.Popen[str], output: Lines) -> None:
    """After a failure too: the services run in sessions of their own, so killing the
    launcher's group alone would leave them running."""
    if launcher.poll() is None:
        launcher.terminate()  # honcho stops its processes, the launcher then Valkey
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    for pid in re.findall(r"started \(pid=(\d+)\)", output.text()):
        if process_running(int(pid)):
            os.kill(int(pid), signal.SIGKILL)


def _launcher_env(tmp_path: Path) -> dict[str, str]:
    """The launcher's environment with every port free and its data under ``tmp_path``."""
    ports = {name: free_port() for name in ("session", "business", "search", "gateway")}
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env |= {f"{name.upper()}_PORT": str(port) for name, port in ports.items()}
    env |= {f"{name.upper()}_METRICS_PORT": "0" for name in ("session", "business", "search")}
    return env | {"PARLEY_VAR_DIR": str(tmp_path / "var"), "DEV_STARTUP_TIMEOUT_SECONDS": "90"}


def test_closing_the_terminal_stops_everything(tmp_path: Path) -> None:
    """Closing the terminal window of `make run`: the shell sends SIGHUP to the job's process
    group, and the terminal is gone (writes to it fail). Valkey and the services run in
    sessions of their own, so the launcher has to stop them, or they hold the ports and the next
    `make run` cannot start."""
    master, slave = pty.openpty()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.dev.launcher"],
        cwd=ROOT,
        env=_launcher_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen: list[str] = []

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                seen.append(chunk.decode("utf-8", "replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while DEMO not in "".join(seen) and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    text = "".join(seen)
    started = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", text)]
    try:
        assert DEMO in text, text[-4000:]
        assert len(started) == 5, text  # valkey and the four services
        os.close(master)  # the window is gone: every later write to the terminal fails
        os.killpg(launcher.pid, signal.SIGHUP)
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(process_running(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in started if process_running(pid)] == []
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for pid in started:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)


def _launch(env: dict[str, str]) -> tuple[subprocess.Popen[str], Lines]:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.dev.launcher"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    return launcher, Lines(launcher)


def test_a_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    """Something already on the gateway's port (another make run, another program): one line
    naming the port and its variable, and nothing started, rather than four services and a
    Valkey started and stopped around a bind traceback."""
    env = _launcher_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["GATEWAY_PORT"])))
        holder.listen()
        launcher, output = _launch(env)
        try:
            assert launcher.wait(timeout=60) == 1, output.text()
        finally:
            _stop_everything(launcher, output)
    time.sleep(0.2)  # the reader thread has the last line
    text = output.text()
    assert f"port {env['GATEWAY_PORT']} (GATEWAY_PORT) already in use" in text, text
    assert "started (pid=" not in text and "Traceback" not in text, text


def test_a_bad_startup_timeout_is_refused_in_one_line_and_nothing_starts(tmp_path: Path) -> None:
    """Like a bad setting of the services: one line naming the variable, status 2 (it was a
    ValueError traceback)."""
    env = _launcher_env(tmp_path) | {"DEV_STARTUP_TIMEOUT_SECONDS": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "services.dev.launcher"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("invalid configuration:\n  DEV_STARTUP_TIMEOUT_SECONDS: ")
    assert "started (pid=" not in done.stdout and not (tmp_path / "var").exists()


def test_a_make_run_that_was_killed_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    """A launcher killed with SIGKILL cannot stop anything: Valkey and the services, in sessions
    of their own, stay on their ports. The next `make run` with the same var/ stops them and
    starts; while a launcher is alive, a second one refuses instead."""
    env = _launcher_env(tmp_path)
    first, first_output = _launch(env)
    launched = [(first, first_output)]
    try:
        assert first_output.wait_for(DEMO, 120), first_output.text()[-4000:]
        left = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", first_output.text())]
        assert len(left) == 5, first_output.text()

        third, third_output = _launch(env)  # the first is still alive: refused
        launched.append((third, third_output))
        assert third.wait(timeout=30) == 1, third_output.text()
        time.sleep(0.2)
        assert f"already running with {tmp_path / 'var'} (pid {first.pid})" in third_output.text()

        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert all(process_running(pid) for pid in left)
        second, second_output = _launch(env)
        launched.append((second, second_output))
        assert second_output.wait_for(DEMO, 120), second_output.text()[-4000:]
        assert "Stopping what an earlier make run left running" in second_output.text()
        assert [pid for pid in left if process_running(pid)] == []
        gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        assert httpx.get(f"{gateway}/health", timeout=5).status_code == 200
        os.killpg(second.pid, signal.SIGINT)
        assert second.wait(timeout=60) == 0, second_output.text()[-4000:]
    finally:
        for launcher, output in launched:
            _stop_everything(launcher, output)
