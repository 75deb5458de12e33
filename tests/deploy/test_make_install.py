"""``make install``, the first step of ``make run`` and ``make test`` on a fresh clone: the
virtual environment it makes with the interpreter named on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_venv_left_without_pip_is_made_again(tmp_path: Path) -> None:
    """Where Debian's or Ubuntu's python3-venv is not installed (as with their Python 3.12 and
    3.13), ``python3 -m venv`` writes bin/python, then fails before pip: ``--without-pip`` leaves
    the same. Once the package is installed, the next make must carry on, not fail on "No module
    named pip" on every run until the directory is removed by hand."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # No index: the dependencies are not the subject and nothing is downloaded; the install
    # stops at them, after the step this test is about. No make of ours around this one either.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    result = subprocess.run(
        ["make", "install", f"PYTHON={sys.executable}", f"VENV={venv}"],
        cwd=ROOT,
        env={**env, "PIP_NO_INDEX": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert "No module named pip" not in output, output
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True)
    assert pip.returncode == 0, output
