"""``make bench``: run every benchmark, print the table, write bench/results/latest.json.

Each figure is a ratio against a floor measured in the same run on the same machine, since
absolute numbers on shared machines drift. A missed target is reported, and the exit status is 1.
"""

from __future__ import annotations

import sys

from bench import grpc_floor, report


def main() -> int:
    sections: list[report.Section] = []
    for benchmark in (grpc_floor,):
        sections.extend(benchmark.run())
    print(report.render(sections))
    path = report.write(sections)
    print(f"\nwritten: {path}")
    missed = [c.name for s in sections for c in s.checks if not c.passed]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
