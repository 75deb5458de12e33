"""The suite's own hygiene: what one test leaves behind must not reach another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.processes import ROOT, SHARED_DATABASES, Valkey, wait_for
from tests.support.stack import next_db


def test_each_gateway_database_is_handed_out_once_and_none_is_named_by_hand(
    valkey: Valkey,
) -> None:
    numbers = [next_db() for _ in range(40)]  # more than the 16 a Valkey has by default
    assert len(set(numbers)) == len(numbers), numbers
    assert min(numbers) >= 16, numbers  # 0-15: the services' and tests' fixed numbers
    assert valkey.client().config_get("databases") == {"databases": str(SHARED_DATABASES)}
    client = redis.Redis(port=valkey.port, db=max(numbers))
    try:
        assert client.ping()
    finally:
        client.close()


LEAKING_TEST = """
import subprocess
import sys


def test_leaves_two_processes_behind(tmp_path):
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # the run's pipes
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], **quiet)
    # And one whose parent has exited: no longer below the run's process.
    orphan = "sleep 120 >/dev/null 2>&1 & echo $! > %s" % (tmp_path / "orphan")
    subprocess.run(["sh", "-c", orphan], check=True)
    print("orphan", (tmp_path / "orphan").read_text().strip())
"""


def test_a_run_that_leaves_a_process_running_names_it_kills_it_and_fails(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_sessionfinish\n")
    (tmp_path / "test_leaking.py").write_text(LEAKING_TEST)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "--rootdir", tmp_path],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    report = run.stdout.split("processes left running by the tests", 1)[1]
    assert "-c import time; time.sleep(120)" in report and "sleep 120" in report, report
    orphan = int(next(line for line in run.stdout.splitlines() if "orphan" in line).split()[-1])
    assert wait_for(lambda: _gone(orphan), 5)


def _gone(pid: int) -> bool:
    try:  # exited, or a zombie left to its new parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
