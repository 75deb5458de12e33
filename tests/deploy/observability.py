"""deploy/observability read once for every test of it: the alert rules, the PromQL the
dashboard and the alerts read, and Prometheus's ``promtool`` (Debian's ``prometheus`` package;
``.ci/run`` installs it); and the way to run the alerts on what a real process exports: scrape it
(:func:`scrape`), lay the scrapes out as promtool series (:func:`timeline`), and evaluate
(:func:`evaluate`, :func:`expected`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "parley.json"
PROMTOOL = shutil.which("promtool")
# The rule tests need Prometheus's own rule engine; without it they are listed as skipped.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt-get install prometheus): alert rules NOT run",
)

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


def panel_queries() -> dict[str, str]:
    """The dashboard's PromQL by panel and query (``"<panel id><refId>"``), as Grafana sends it
    but for ``$__rate_interval``, which Grafana fills in (one minute here)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['id']}{target['refId']}": target["expr"].replace("$__rate_interval", "1m")
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }


def queries() -> list[str]:
    """Every PromQL expression of the dashboard and the alerts."""
    return [*panel_queries().values(), *(rule["expr"] for rule in alert_rules().values())]


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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample a ``/metrics`` endpoint writes now."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def timeline(
    *phases: tuple[Samples, int], used: set[str], target: Mapping[str, str]
) -> list[dict[str, str]]:
    """promtool series of the ``used`` metrics, with the scrape's ``target`` labels (job,
    instance), one phase of ``steps`` after another; a sample missing from a phase is absent
    then (``_``), as it is to Prometheus. And ``up`` of the target, which Prometheus writes at
    every scrape: 1 in each phase that has samples (a scrape that answered), 0 in one without."""
    up = ", ".join(f'{k}="{v}"' for k, v in sorted(target.items()))
    values: dict[str, list[str]] = {f"up{{{up}}}": []}
    done = 0
    for samples, steps in phases:
        values[f"up{{{up}}}"].extend(["1" if samples else "0"] * steps)
        for (name, labels), value in samples.items():
            if name not in used:
                continue
            pairs = sorted({**dict(labels), **target}.items())
            matchers = ", ".join(f'{k}="{v}"' for k, v in pairs)
            selector = f"{name}{{{matchers}}}"
            values.setdefault(selector, ["_"] * done).extend([f"{value:g}"] * steps)
        done += steps
        for line in values.values():
            line.extend(["_"] * (done - len(line)))
    return [{"series": name, "values": " ".join(line)} for name, line in values.items()]


def evaluate(
    tmp_path: Path, input_series: list[dict[str, str]], cases: list[dict[str, object]]
) -> None:
    """Run alerts.yml on ``input_series`` (one sample every 30 s) and check ``cases``."""
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "30s",
        "tests": [{"interval": "30s", "input_series": input_series, "alert_rule_test": cases}],
    }
    path = tmp_path / "scraped.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def expected(alertname: str, minute: int, firing: bool = False, **labels: str) -> dict[str, object]:
    """An alert case: firing with ``labels`` (its severity and summary as alerts.yml gives
    them, ``{{ $labels.x }}`` filled in), or quiet when neither ``firing`` nor labels are
    given."""
    rule = alert_rules()[alertname]
    alerts = []
    if firing or labels:
        summary = re.sub(
            r"{{ \$labels\.(\w+) }}", lambda m: labels[m.group(1)], rule["annotations"]["summary"]
        )
        alerts.append(
            {
                "exp_labels": {**rule["labels"], **labels},
                "exp_annotations": {"summary": summary},
            }
        )
    return {"eval_time": f"{minute}m", "alertname": alertname, "exp_alerts": alerts}
