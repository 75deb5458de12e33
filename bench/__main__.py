"""``make bench``: run every benchmark, print the table, write bench/results/latest.json.

Each figure is a ratio against a floor measured in the same run on the same machine, since
absolute numbers on shared machines drift. A missed target is reported, and the exit status is 1.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench import report

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run every ``bench/bench_*.py`` (or only those named on the command line)."""
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if argv:
        names = [n for n in names if n.removeprefix("bench_") in argv or n in argv]
    sections: list[report.Section] = []
    for name in names:
        print(f"running {name} ...", flush=True)
        sections.extend(importlib.import_module(f"bench.{name}").run())
    print(report.render(sections))
    path = report.write(sections, merge=bool(argv))  # a subset keeps the others' figures
    print(f"\nwritten: {path}")
    missed = [c.name for s in sections for c in s.checks if not c.passed]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
