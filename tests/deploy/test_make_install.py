"""``make install``, the first step of ``make run`` and ``make test`` on a fresh clone: the
virtual environment it makes with the interpreter named on the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_install(python: str, venv: Path, **env: str) -> str:
    """``make install PYTHON=<python> VENV=<venv>``'s output, as from a terminal: no make of
    ours around this one."""
    clean = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    result = subprocess.run(
        ["make", "install", f"PYTHON={python}", f"VENV={venv}"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    return result.stdout + result.stderr


def test_a_venv_left_without_pip_is_made_again(tmp_path: Path) -> None:
    """Where Debian's or Ubuntu's python3-venv is not installed (as with their Python 3.12 and
    3.13), ``python3 -m venv`` writes bin/python, then fails before pip: ``--without-pip`` leaves
    the same. Once the package is installed, the next make must carry on, not fail on "No module
    named pip" on every run until the directory is removed by hand."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # No index: the dependencies are not the subject and nothing is downloaded; the install
    # stops at them, after the step this test is about.
    output = make_install(sys.executable, venv, PIP_NO_INDEX="1")
    assert "No module named pip" not in output, output
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True)
    assert pip.returncode == 0, output


def test_an_interpreter_that_is_not_there_is_named_as_such(tmp_path: Path) -> None:
    """``make test PYTHON=python3.13`` (the README's example) where no python3.13 runs: the
    answer is that it does not run, not that Parley needs Python 3.11 or newer."""
    missing = tmp_path / "bin" / "python3.13"
    output = make_install(str(missing), tmp_path / "venv")
    assert f"PYTHON={missing} does not run" in output, output
    assert "needs Python 3.11" not in output, output
    assert not (tmp_path / "venv").exists()


def test_the_supported_pythons_are_named_alike_everywhere() -> None:
    """The oldest Python is one number in requires-python, the Makefile's check, ruff's and
    mypy's targets and the README; the classifiers name it and each one the README says the
    suite passes on, and no other."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    oldest = re.fullmatch(r">=3\.(\d+)", project["project"]["requires-python"])
    assert oldest, project["project"]["requires-python"]
    minor = int(oldest.group(1))
    assert project["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert project["tool"]["mypy"]["python_version"] == f"3.{minor}"
    assert f"sys.version_info < (3, {minor})" in (ROOT / "Makefile").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"with Python 3.{minor}+ and `make`" in readme
    tested = re.search(
        r"on Python 3\.(\d+); the test suite passes on 3\.(\d+) and 3\.(\d+) too", readme
    )
    assert tested and int(tested.group(1)) == minor, "the README's tested Pythons moved"
    prefix = "Programming Language :: Python :: 3."
    named = {
        int(c.removeprefix(prefix))
        for c in project["project"]["classifiers"]
        if c.startswith(prefix)
    }
    assert named == {int(v) for v in tested.groups()}
