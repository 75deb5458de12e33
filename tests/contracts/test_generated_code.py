"""The committed generated code in parley/ is exactly what `make protos` makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = _files(tmp_path / "parley")
    committed = _files(ROOT / "parley")
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"parley/ is out of date with protos/; run `make protos`. Differs: {stale}"


def test_every_service_is_generated() -> None:
    from parley.business.v1 import business_pb2_grpc
    from parley.search.v1 import search_pb2_grpc
    from parley.session.v1 import session_pb2_grpc

    assert session_pb2_grpc.SessionServiceServicer
    assert business_pb2_grpc.BusinessServiceServicer
    assert search_pb2_grpc.SearchServiceServicer
