"""Every metric a Parley process exports is named on an operator page (README.md or a page of
docs/ other than the records of runs and bugs): a series an operator finds on ``/metrics`` or in
a dashboard has a page that says what it counts; and every dead-letter reason is explained in
docs/gateway.md. Checked on the code's text, without running
anything: the metrics' definitions (prometheus_client's classes and families, and the gauges the
gateway reads from Redis at scrape time)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The pages an operator reads for what a metric means; reliability.md and performance.md are
# records of bugs and runs, where a name may be mentioned without being explained.
PAGES = [ROOT / "README.md"] + [
    path
    for path in sorted((ROOT / "docs").glob("*.md"))
    if path.name not in ("reliability.md", "performance.md")
]
DEFINERS = {
    "Counter", "Gauge", "Histogram", "Summary",
    "CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily",
}  # fmt: skip
# The gauges /metrics reads from Redis at scrape time: the keys of the dict this function builds.
SCRAPE_TIME = (ROOT / "services" / "gateway" / "health.py", "prometheus")


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else None


def defined_metrics(source: str) -> set[str]:
    """The names of the metrics ``source`` defines, as Prometheus shows them (a counter family
    with ``_total``, as prometheus_client appends it)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or _called(node) not in DEFINERS or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            name = first.value
            if str(_called(node)).startswith("Counter") and not name.endswith("_total"):
                name += "_total"
            names.add(name)
    return names


def scrape_time_gauges() -> set[str]:
    path, function = SCRAPE_TIME
    body = next(
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == function
    )
    return {
        key.value
        for statement in body.body  # not its decorator's dicts (the OpenAPI responses)
        for node in ast.walk(statement)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    }


def all_metrics() -> set[str]:
    found = scrape_time_gauges()
    for path in (ROOT / "services").rglob("*.py"):
        found |= defined_metrics(path.read_text())
    return found


def test_every_metric_is_named_on_an_operator_page() -> None:
    """(Was drift: ``gateway_recent_searches_total``, the workers' reuse of search answers, was
    on the gateway's ``/metrics`` and on no page.)"""
    text = "\n".join(page.read_text() for page in PAGES)
    missing = sorted(name for name in all_metrics() if not re.search(rf"(?<!\w){name}(?!\w)", text))
    assert not missing, f"say what these count, in the metrics table of their service: {missing}"


def test_the_collector_sees_every_kind_of_definition() -> None:
    found = all_metrics()
    assert {
        "gateway_webhooks_total",  # Counter(...)
        "gateway_recent_searches_total",
        "parley_serving",  # Gauge(...)
        "search_provider_seconds",  # Histogram(...)
        "grpc_server_handled_total",  # CounterMetricFamily("grpc_server_handled", ...)
        "grpc_server_in_flight",  # GaugeMetricFamily(...)
        "parley_tls_certificate_expiry_timestamp_seconds",
        "gateway_queue_length",  # read from Redis at scrape time
        "gateway_queue_up",
    } <= found
    assert defined_metrics('Counter("a_total", "")\nCounterMetricFamily("b", "")') == {
        "a_total",
        "b_total",
    }


def dead_letter_reasons() -> set[str]:
    """The reasons (``gateway_dead_letters_total{reason}``, a record's ``reason``) the gateway's
    code writes as constants; ``send_<outcome>``, made from a send's outcome, is not among them."""
    found: set[str] = set()
    for path in (ROOT / "services" / "gateway").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'DeadLetter\(\s*"(\w+)"', text))
        found |= set(re.findall(r'(?:_dead\(entry, token,|\.dead_letter\()\s*"(\w+)"', text))
    return found


def test_every_dead_letter_reason_is_explained_in_the_gateway_page() -> None:
    """An operator replays or deletes dead letters by reason. (Was a gap: ``invalid_message``,
    a message whose conversation the session service refuses to read, was named nowhere.)"""
    reasons = dead_letter_reasons()
    assert {"unknown_business", "outside_window", "corrupt_entry", "max_attempts"} <= reasons
    page = (ROOT / "docs" / "gateway.md").read_text()
    missing = sorted(reason for reason in reasons if f"`{reason}`" not in page)
    assert not missing, f"say in docs/gateway.md when a message is dead-lettered as: {missing}"
