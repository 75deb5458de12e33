"""deploy/observability read once for every test of it: the alert rules, the PromQL the
dashboard and the alerts read, and Prometheus's ``promtool`` (Debian's ``prometheus`` package;
``.ci/run`` installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "parley.json"
PROMTOOL = shutil.which("promtool")

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "by", "rate", "increase", "deriv", "histogram_quantile", "and",
    "or", "unless", "without", "le", "up", "count", "offset", "on", "ignoring",
}  # fmt: skip


def alert_rules() -> dict[str, dict[str, Any]]:
    """alerts.yml's rules by alert name."""
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }


def queries() -> list[str]:
    """Every PromQL expression of the dashboard and the alerts."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return exprs + [rule["expr"] for rule in alert_rules().values()]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers and legend templates removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\((?:[a-z_]+,\s*)*[a-z_]+\)(?=\s*\()", "", expr)  # by (a, b) (…)
    words = set(re.findall(r"[a-z_][a-z0-9_]*", expr))
    return {w for w in words - PROMQL_WORDS if "_" in w}


def metrics_read() -> set[str]:
    """The metric names the dashboard and the alerts read."""
    return set().union(*(metric_names(expr) for expr in queries()))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """``promtool`` run in deploy/observability (where alerts.test.yml names alerts.yml)."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=120
    )
