"""The fault scenarios' table, printed at the end of the run and written to
``var/faults/latest.json``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: whole-stack fault scenarios (quick; FAULTS_FULL=1 for the full run)"
    )


def table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |"
    rule = "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"
    body = ["| " + " | ".join(str(r[c]).ljust(widths[c]) for c in columns) + " |" for r in rows]
    return [line, rule, *body]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    module = sys.modules.get("tests.faults.test_faults")
    if module is None or not module.RESULTS:
        return
    from tests.faults.harness import FULL

    rows = [r.row() for r in module.RESULTS]
    variant = "full" if FULL else "quick"
    terminalreporter.section(f"fault scenarios ({variant})")
    for text in table(rows):
        terminalreporter.write_line(text)
    out = ROOT / "var" / "faults" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"variant": variant, "time": time.time(), "scenarios": rows}, indent=2)
    )
    terminalreporter.write_line(f"written to {out.relative_to(ROOT)}")
