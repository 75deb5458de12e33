"""The alert rules, run by Prometheus's own rule engine (``promtool``, Debian's ``prometheus``
package; ``.ci/run`` installs it): each alert fires on the series that should wake someone, with
the labels and summary they will read, and stays quiet on the ones that should not."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.observability import (
    ALERTS,
    OBSERVABILITY,
    alert_rules,
    needs_promtool,
    panel_queries,
    promtool,
)

RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
ROOT = OBSERVABILITY.parents[1]


@needs_promtool
def test_the_rules_are_valid_prometheus_rules() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_every_alert_fires_and_stays_quiet_as_its_tests_say() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Grafana shows a panel whose query Prometheus refuses as an error icon, not as a failure
    anyone is told of: each query goes through Prometheus's own parser (as a recording rule)."""
    rules = [{"record": f"panel_{key}", "expr": expr} for key, expr in panel_queries().items()]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = set(alert_rules())
    cases: list[dict[str, Any]] = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fires == set(), "alerts never seen firing in alerts.test.yml"
    assert alerts - quiet == set(), "alerts never seen staying quiet in alerts.test.yml"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_the_runbooks_table_of_alerts_says_what_each_rule_reads() -> None:
    """docs/runbook.md lists every alert with how long it waits and the condition it reads (in
    short where the rule is long): its label matchers must be the rule's, or the operator reads
    a condition that is not the one that fired. (Was a gap: ParleyWebhooksRejected's row still
    counted Groups API messages, ``group_message``, as rejections after the rule stopped.)"""
    rows = {
        match["name"]: match
        for match in re.finditer(
            r"^\| (?P<name>Parley\w+)(?: \((?P<for>[^)]*)\))? \| `(?P<expr>[^`]*)`",
            (ROOT / "docs" / "runbook.md").read_text(),
            re.MULTILINE,
        )
    }
    rules = alert_rules()
    assert set(rows) == set(rules)
    for name, rule in rules.items():
        row = rows[name]
        assert (row["for"] or "").replace(" ", "") == rule.get("for", ""), name
        written = " ".join(row["expr"].replace("\\|", "|").split())
        for matchers in re.findall(r"\{[^}]*\}", written):
            assert matchers in " ".join(rule["expr"].split()), (name, matchers)


def _strings(path: Path, function: str | None = None) -> set[str]:
    """The string constants of a module, or of one function of it."""
    tree: ast.AST = ast.parse(path.read_text())
    if function is not None:
        tree = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == function
        )
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_the_runbook_says_what_to_do_about_every_outcome_an_alert_counts() -> None:
    """ParleySendFailures and ParleyLanguageModelFailing count every outcome but success, and
    ParleyWebhooksRejected every refusal of a webhook; their runbook rows say what to do by
    outcome: each outcome the code writes is named there.
    (Was a gap: the sends' row left out ``error``, what a channel outage writes, ``timeout`` and
    ``no_credentials``; the model's left out ``client_error``, what a wrong ``OPENAI_MODEL``
    writes, ``breaker_open`` and ``no_time``; the webhooks' named ``too_large`` and ``incomplete``
    alone, and nothing of ``no_secret``, ``malformed`` or ``unavailable``.)"""
    services = ROOT / "services" / "gateway"
    senders = set().union(
        *(
            set(re.findall(r'outcome="(\w+)"', path.read_text()))
            for path in (services / "senders").glob("*.py")
        ),
        re.findall(r'SENDS\.labels\(sender\.name, "(\w+)"\)', (services / "worker.py").read_text()),
    )
    llm = services / "bot" / "llm.py"
    model = set(re.findall(r'LLM_CALLS\.labels\("(\w+)"\)', llm.read_text())) | {
        word for word in _strings(llm, "_outcome") if word.isidentifier()
    }
    assert {"error", "token_expired", "timeout"} <= senders and {"refused", "no_time"} <= model
    # The webhooks' refusals: the outcomes ParleyWebhooksRejected counts are those its rule does
    # not leave out (``outcome!~"accepted|…"``).
    webhooks = (services / "webhooks.py").read_text()
    refusals = {
        *re.findall(r'_reject\(\s*"\w+",\s*\d+,\s*"(\w+)"', webhooks),
        *re.findall(r'WEBHOOKS, \w+, "(\w+)"\)', webhooks),
    }
    left_out = re.search(r'outcome!~"([^"]+)"', alert_rules()["ParleyWebhooksRejected"]["expr"])
    assert left_out is not None and {"unsigned", "no_secret", "too_large"} <= refusals
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for alert, outcomes, success in (
        ("ParleySendFailures", senders, "accepted"),
        ("ParleyLanguageModelFailing", model, "ok"),
        ("ParleyWebhooksRejected", refusals - set(left_out[1].split("|")), ""),
    ):
        row = next(line for line in runbook.splitlines() if line.startswith(f"| {alert} "))
        advice = row.split(" | ")[2]
        named = set(re.findall(r"`(\w+)`", advice))
        assert outcomes - {success} - named == set(), alert
