"""The release before this one, as sources to run beside this one's processes: a rolling
upgrade runs both on one Valkey (docs/deployment.md, "Upgrade")."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.processes import ROOT

# The release before SearchFlightsRequest had children and infants and Place a subdivision.
PREVIOUS_RELEASE = "bad4d0a"
# The release before page tokens named their listing and business writes took a request_id.
REQUEST_ID_RELEASE = "6c695e7"


def previous_release(directory: Path, release: str = PREVIOUS_RELEASE) -> Path:
    """The previous release's (or ``release``'s) Python sources (``services``, ``parley``) from
    this repository's history, extracted into ``directory``; run a module from there with
    PYTHONPATH set to it. Skipped, saying so, where the history is not here (a shallow clone,
    a source archive)."""
    known = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{release}^{{commit}}"],
        capture_output=True,
    )
    if known.returncode != 0:
        pytest.skip(
            f"the previous release ({release}) is not in this checkout's history "
            "(shallow clone or archive): the rolling-upgrade checks are NOT run; "
            "`git fetch --unshallow` runs them"
        )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", release, "services", "parley"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory
