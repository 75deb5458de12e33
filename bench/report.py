"""Collecting benchmark figures into a table on stdout and bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Check:
    """One target: ``value`` compared against ``target`` (``>=`` or ``<=``)."""

    name: str
    value: float
    target: float
    op: str  # ">=" or "<="
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


@dataclass
class Section:
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)


def percentile(samples: list[float], pct: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize_latencies(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render(sections: list[Section]) -> str:
    lines = []
    for section in sections:
        lines.append(f"\n## {section.title}\n")
        lines.append("| figure | value |")
        lines.append("|---|---|")
        for key, value in section.figures.items():
            lines.append(f"| {key} | {value} |")
        for check in section.checks:
            mark = "PASS" if check.passed else "MISS"
            lines.append(
                f"| **{check.name}** | {check.value:.3f}{check.unit} "
                f"(target {check.op} {check.target}{check.unit}) {mark} |"
            )
    return "\n".join(lines)


def write(sections: list[Section], merge: bool = False) -> Path:
    """Write the report; with ``merge``, sections of an earlier run whose titles were not
    measured now are kept (``python -m bench system`` must not drop the other benches')."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.json"
    kept: list[Section] = []
    if merge and path.exists():
        try:
            earlier = json.loads(path.read_text()).get("sections", [])
        except (OSError, ValueError):
            earlier = []
        titles = {s.title for s in sections}
        for old in earlier:
            if old.get("title") not in titles:
                checks = [
                    Check(**{k: v for k, v in c.items() if k != "passed"})
                    for c in old.get("checks", [])
                ]
                kept.append(Section(old["title"], old.get("figures", {}), checks))
    every = kept + sections
    payload = {
        "machine": machine(),
        "sections": [
            {**asdict(s), "checks": [{**asdict(c), "passed": c.passed} for c in s.checks]}
            for s in every
        ],
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / "latest.md").write_text(render(every) + "\n")
    return path
