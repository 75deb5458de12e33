"""A short headless Locust run of bench/locustfile.py against a real stack (Valkey, the three
services, a gateway with its workers, a fake Graph API): every path is hit with a signed
webhook, none is refused, and the messages are answered. Not a benchmark: nothing is timed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import bench_system
from tests.support.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]
TWILIO_TOKEN = "locust-twilio-token"
LOAD = ("--users", "20", "--spawn-rate", "20", "--run-time", "6s", "--json", "--only-summary")
LOAD = (*LOAD, "--stop-timeout", "2", "--host")
PATHS = {"/webhooks/whatsapp", "/whatsapp_response", "/webhooks/twilio", "/whatsapp/webhook"}


# Not imported here: locust monkey-patches the standard library (gevent) when imported.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is in the bench extra"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bench_system.SystemStack]:
    stack = bench_system.SystemStack(tmp_path_factory.mktemp("locust-stack"))
    stack.extra_gateway_env = {"TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    try:
        stack.start_gateway("all")
        base = f"http://127.0.0.1:{stack.ports['gw']}"
        assert wait_for(lambda: bench_system.up(f"{base}/ready"), 60, 0.2)
        bench_system.create_businesses(base)
        yield stack
    finally:
        stack.close()


def run_locust(stack: bench_system.SystemStack, **env: str) -> dict[str, dict[str, Any]]:
    """The Locust file headless against ``stack``; its stats by path, none of them failed."""
    host = f"http://127.0.0.1:{stack.ports['gw']}"
    businesses = ",".join(f"{pnid}:{number}" for pnid, number, _, _ in bench_system.BUSINESSES)
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WHATSAPP_APP_SECRET", "TWILIO_AUTH_TOKEN", "PARLEY_VAR_DIR")
    }
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--headless", *LOAD, host],
        cwd=ROOT,
        env={
            **inherited,
            "PARLEY_BUSINESSES": businesses,
            "PARLEY_THINK_SECONDS": "0.1,0.3",
            "PARLEY_TWILIO_SHARE": "0.3",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = {s["name"]: s for s in json.loads(done.stdout)}
    assert set(stats) >= PATHS, stats.keys()
    for path in PATHS:
        assert stats[path]["num_requests"] > 0
        assert stats[path]["num_failures"] == 0, done.stderr[-3000:]
    return stats


def test_the_guides_locust_command_runs_clean(stack: bench_system.SystemStack) -> None:
    run_locust(stack, WHATSAPP_APP_SECRET=bench_system.SECRET, TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    # The webhooks were taken up and answered through the Graph API (Cloud API businesses).
    fake = httpx.Client(base_url=stack.fake, timeout=10)
    assert wait_for(
        lambda: sum(1 for r in fake.get("/_received").json() if r[0] == "m") >= 20, 30, 0.5
    )


def test_the_secrets_come_from_make_runs_var_dir(
    stack: bench_system.SystemStack, tmp_path: Path
) -> None:
    # `make run` with PARLEY_VAR_DIR keeps its dev secrets there, but the Locust file read only
    # ./var: every Cloud API webhook went unsigned and was refused (401).
    (tmp_path / "dev-app-secret").write_text(bench_system.SECRET + "\n")
    (tmp_path / "dev-twilio-auth-token").write_text(TWILIO_TOKEN + "\n")
    run_locust(stack, PARLEY_VAR_DIR=str(tmp_path))
