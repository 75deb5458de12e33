"""docker-compose.yml, the Dockerfile and the observability files, checked without a container
engine: the Compose specification schema, the rules of the issue, and names that must exist."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.metrics import GO_CODE_NAMES
from services.gateway.settings import GatewaySettings
from tests.deploy.envvars import read_by
from tests.deploy.observability import (
    ALERTS,
    DASHBOARD,
    OBSERVABILITY,
    alert_rules,
    metric_names,
    metrics_read,
    panel_queries,
    queries,
)

ROOT = Path(__file__).resolve().parents[2]
GRPC = {
    "session": (50051, 9101, "parley.session.v1.SessionService"),
    "business": (50052, 9102, "parley.business.v1.BusinessService"),
    "search": (50053, 9103, "parley.search.v1.SearchService"),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def parley_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Parley's own image (the rest are Valkey, MongoDB, Prometheus…)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_compose_file_passes_the_compose_specification_schema() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_misspelt_condition(tmp_path: Path) -> None:
    """The check bites: a typo that compose would only report at `up` fails here."""
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["gateway"]["depends_on"]["session"]["condition"] = "service_healty"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "service_healty" in result.stdout


def test_datastores_persist_and_report_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    valkey = services["valkey"]
    assert valkey["command"][valkey["command"].index("--appendonly") + 1] == "yes"
    # Bounded, and refusing at the bound: eviction would drop queued messages and conversations.
    assert valkey["command"][valkey["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert valkey["command"][valkey["command"].index("--maxmemory") + 1].startswith("${VALKEY_")
    assert "healthcheck" in valkey and valkey["volumes"]
    mongo = services["mongo"]
    assert re.fullmatch(r"mongo:7(\.\d+)*", mongo["image"])
    assert "healthcheck" in mongo and mongo["volumes"]


def test_parley_services_wait_for_healthy_dependencies_and_probe_themselves(
    compose: dict[str, Any],
) -> None:
    services = parley_services(compose)
    assert set(services) == {*GRPC, "gateway"}
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["user"] == "10001:10001"
        assert service["env_file"] == [{"path": ".env", "required": False}]
        assert service["depends_on"], name
        for dependency in service["depends_on"].values():
            assert dependency["condition"] == "service_healthy", name
        module = service["command"][2]
        assert importlib.util.find_spec(module) is not None, module
    for name, (port, metrics_port, full_name) in GRPC.items():
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
        assert test[test.index("--addr") + 1] == f"localhost:{port}"
        assert test[test.index("--service") + 1] == full_name
        env = service["environment"]
        assert env[f"{name.upper()}_PORT"] == str(port)
        assert env[f"{name.upper()}_METRICS_PORT"] == str(metrics_port)
    business = services["business"]["environment"]
    assert business["MONGODB_URI"].startswith("mongodb://mongo:27017/")
    gateway = services["gateway"]
    assert gateway["ports"] == ["${GATEWAY_PUBLISH:-127.0.0.1:8000}:8000"]
    assert set(gateway["depends_on"]) == {"valkey", *GRPC}
    for name, (port, _, _) in GRPC.items():
        assert gateway["environment"][f"{name.upper()}_SERVICE_ADDR"] == f"{name}:{port}"
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])


def test_compose_stops_each_process_after_its_grace_and_a_gateway_message_fits_it(
    compose: dict[str, Any],
) -> None:
    """Each container gets longer than its SHUTDOWN_GRACE_SECONDS to stop; the gateway, whose
    workers run messages, a grace one message fits in (the engine's deadline and a send): a
    message cut at its end is retried, and a reply being sent then can reach the user twice."""
    defaults = GatewaySettings.model_fields
    message = defaults["engine_timeout_seconds"].default + defaults["send_timeout_seconds"].default
    for name, service in parley_services(compose).items():
        given = str(service.get("environment", {}).get("SHUTDOWN_GRACE_SECONDS", ""))
        default = re.fullmatch(r"\$\{SHUTDOWN_GRACE_SECONDS:-([0-9.]+)\}", given)
        grace = float(default[1]) if default else defaults["shutdown_grace_seconds"].default
        stop = re.fullmatch(r"([0-9]+)s", service["stop_grace_period"])
        assert stop and float(stop[1]) > grace, name
        if name == "gateway":
            assert grace >= message, grace


def test_compose_sets_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    for name, service in parley_services(compose).items():
        part = service["command"][2].split(".")[1]
        unread = set(service.get("environment", {})) - read_by(part)
        assert not unread, f"{name} sets variables its code never reads: {sorted(unread)}"


def test_observability_profile_scrapes_all_four_and_valkey(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana", "redis-exporter"):
        assert services[name]["profiles"] == ["observability"]
    exporter = services["redis-exporter"]
    assert exporter["image"].startswith("oliver006/redis_exporter:v")
    assert exporter["environment"]["REDIS_ADDR"] == "redis://valkey:6379"
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        **{name: [f"{name}:{metrics}"] for name, (_, metrics, _) in GRPC.items()},
        "gateway": ["gateway:8000"],
        "redis": ["redis-exporter:9121"],  # redis_exporter's default port
    }
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("prometheus.yml", "alerts.yml", "grafana/provisioning", "grafana/dashboards"):
        assert f"./deploy/observability/{path}:" in mounts
        assert (OBSERVABILITY / path).exists()
    provider = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/dashboards/parley.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_docs_say_where_the_compose_prometheus_sends_its_alerts() -> None:
    """Compose's Prometheus has no Alertmanager: its alerts reach no one unless the operator adds
    one, and the docs must say so where they start it. (Was a gap: nothing said it, and the
    alerts and their runbook read as if someone would be paged.)"""
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    if config.get("alerting"):
        return
    compose_section = (ROOT / "docs" / "deployment.md").read_text().split("## Kubernetes")[0]
    said = " ".join(compose_section.split())
    assert "sends them nowhere" in said and "`alerting:`" in said
    assert "# alerting:" in (OBSERVABILITY / "prometheus.yml").read_text()


def _code_strings() -> set[str]:
    strings: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return strings


def exported(name: str, strings: set[str]) -> bool:
    if name in strings:
        return True
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix) and name.removesuffix(suffix) in strings:
            return True
    return False


def test_dashboard_and_alerts_use_only_metrics_the_services_export() -> None:
    strings = _code_strings()
    # redis_exporter's names: test_redis_alerts.py checks them against the real exporter.
    used = {name for name in metrics_read() if not name.startswith("redis_")}
    missing = sorted(name for name in used if not exported(name, strings))
    assert not missing, f"dashboard/alerts name metrics no code exports: {missing}"
    # What the issue asks the dashboard to show, each by at least one panel.
    shown = " ".join(queries())
    for needed in (
        "gateway_webhooks_total",
        "grpc_server_handling_seconds_bucket",
        "gateway_queue_length",
        "business_cache_hits_total",
        "search_circuit_breaker_state",
        "parley_session_fallback_active",
    ):
        assert needed in shown, needed
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert datasources == {"prometheus"}


def test_every_alert_reads_what_a_panel_shows() -> None:
    """Paged at night, the on-call opens the dashboard to see what the alert saw and since when:
    every metric an alert reads, and ``up``, is drawn by a panel. (Was a gap: ParleyTargetDown,
    ParleyQueueUnattended, ParleyQueueStale, ParleyLanguageModelFailing, ParleyTlsCertificate…,
    ParleyLogsDropped and three Redis alerts read metrics no panel drew.)"""
    panels = list(panel_queries().values())
    shown = set().union(*(metric_names(expr) for expr in panels))
    for name, rule in alert_rules().items():
        assert metric_names(rule["expr"]) <= shown, (name, metric_names(rule["expr"]) - shown)
        if re.search(r"\bup\{", rule["expr"]):
            assert any(re.search(r"\bup\{", expr) for expr in panels), name


def test_the_dashboard_draws_what_counts_lost_or_refused_work() -> None:
    """The counters of work that silently goes nowhere: without a panel the on-call learns of it
    from users. (Was a gap: none of these was drawn, nor read by an alert.)"""
    shown = set().union(*(metric_names(expr) for expr in panel_queries().values()))
    lost = {
        "gateway_rate_limited_total",  # a user's messages over the limit: not processed
        "gateway_message_statuses_total",  # replies the channel accepted and then failed
        "parley_session_fallback_dropped_total",  # outage writes evicted: conversations lost
        "parley_session_writeback_discarded_total",  # outage writes not written back
        "business_decrypt_failures_total",  # tokens the keys cannot open: the business is mute
        "search_cache_errors_total",  # searches uncached: every one reaches the provider
    }
    assert lost - shown == set()


def test_every_panel_legend_tells_its_series_apart() -> None:
    """A query grouped by labels draws one series per combination: a legend that leaves one out
    draws two lines under one name. (Was a defect: the latency panel grouped by service and
    method and named the method only, so business's and search's ``WarmCache`` read alike.)"""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            grouped = {
                label.strip()
                for grouping in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"])
                for label in grouping.split(",")
            } - {"le"}
            named = set(re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"]))
            assert grouped <= named, (panel["title"], target["refId"], grouped - named)


METRIC_CLASSES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "CounterMetricFamily": ("_total",),
    "GaugeMetricFamily": ("",),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
}


def code_metric_labels() -> dict[str, set[str]]:
    """Every series name the code defines with a literal name (``Counter("x_total", …,
    ["a"])``, ``CounterMetricFamily("x", …, labels=[…])``) → its label names (``le`` on
    buckets)."""
    labels: dict[str, set[str]] = {}
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            kind = getattr(node.func, "id", getattr(node.func, "attr", ""))
            name = node.args[0]
            if kind not in METRIC_CLASSES or not isinstance(name, ast.Constant):
                continue
            given = [kw.value for kw in node.keywords if kw.arg in ("labelnames", "labels")]
            listed = node.args[2] if len(node.args) > 2 else given[0] if given else None
            names = (
                set(ast.literal_eval(listed)) if isinstance(listed, ast.List | ast.Tuple) else set()
            )
            base = str(name.value).removesuffix("_total")
            for suffix in METRIC_CLASSES[kind]:
                labels[base + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    return labels


def test_dashboard_and_alerts_select_only_labels_their_metrics_have() -> None:
    """A matcher or a ``by`` on a label the metric does not have selects nothing, or folds every
    series into one: the alert is silent, the panel flat, and neither says why."""
    labels = code_metric_labels()
    scrape = {"job", "instance"}  # added by Prometheus to every series
    checked = 0
    for expr in queries():
        for name, matchers in re.findall(r"([a-z_][a-z0-9_]*)\{([^}]*)\}", expr):
            if name in labels:
                used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers))
                assert used <= labels[name] | scrape, (name, used - labels[name], expr)
                checked += 1
        named = [labels[name] for name in metric_names(expr) if name in labels]
        if not named:  # redis_exporter's: test_redis_alerts.py runs those on the real one
            continue
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert any(label in have for have in named) or label in scrape, (label, expr)
                checked += 1
    assert checked > 20, checked


def test_the_docs_name_only_metrics_the_code_exports_with_labels_they_have() -> None:
    """What the README and docs/ tell an operator to graph or grep: a counter, histogram or
    ``_seconds`` gauge by name, or any metric with a selector (``x{label="…"}``)."""
    strings = _code_strings()
    labels = code_metric_labels()
    checked = 0
    # reliability.md quotes what bugs looked like (a series that should not have existed).
    pages = [p for p in (ROOT / "docs").glob("*.md") if p.name != "reliability.md"]
    for path in [ROOT / "README.md", *pages]:
        for span in re.findall(r"`([^`\n]+)`", path.read_text()):
            for name, selector in re.findall(
                r"\b((?:gateway|grpc_server|parley|business|search)_[a-z0-9_]+)(\{[^}]*\})?", span
            ):
                if not (selector or name.endswith(("_total", "_seconds", "_bucket"))):
                    continue
                assert exported(name, strings), f"{path.name}: {span}"
                used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
                assert used <= labels.get(name, used) | {"job", "instance"}, f"{path.name}: {span}"
                checked += 1
    assert checked > 30, checked


def test_label_check_reads_the_code_and_the_expressions() -> None:
    labels = code_metric_labels()
    assert labels["gateway_webhooks_total"] == {"channel", "outcome"}
    assert labels["grpc_server_handled_total"] >= {"grpc_service", "grpc_code"}
    assert labels["search_provider_seconds_bucket"] == {"provider", "le"}
    assert labels["parley_session_fallback_active"] == set()


def test_alerts_select_grpc_codes_the_services_label_calls_with() -> None:
    """A grpc_code the services never write would make its alert silent, not wrong."""
    alerts = ALERTS.read_text()
    dashboard = DASHBOARD.read_text()
    selected = re.findall(r'grpc_code=~?\\?"([^"\\]+)', alerts + dashboard)
    assert selected, "the error-rate alert selects codes by name"
    names = {name for pattern in selected for name in pattern.split("|")}
    assert names <= set(GO_CODE_NAMES.values()), names - set(GO_CODE_NAMES.values())


def test_metric_name_extraction_sees_names_not_functions() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (grpc_service, le) "
        '(rate(grpc_server_handling_seconds_bucket{x="a_b"}[5m])))'
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket"}


def test_dockerfile_is_multi_stage_pinned_non_root_without_build_tools() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base, "the base image is one ARG, used by every stage"
    # An exact tag (x.y.z) or a digest: never a moving tag such as 3.11-slim or latest.
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 2
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    build, final = stages[0], stages[-1]
    assert re.search(r"pip install \.(\s|$)", build)
    assert "COPY --from=build /opt/parley /opt/parley" in final
    for tool in ("apt-get", "build-essential", "gcc", "pip install"):
        assert tool not in final, f"{tool} in the final stage"
    user = re.findall(r"^USER (\S+)$", final, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert "PYTHONDONTWRITEBYTECODE=1" in final  # read-only root filesystem
    cmd = re.search(r'^CMD \["python", "-m", "([\w.]+)"', final, re.M)
    assert cmd and importlib.util.find_spec(cmd.group(1)) is not None


def test_image_build_stage_byte_compiles_without_failing_on_its_dependencies(
    tmp_path: Path,
) -> None:
    """The build stage byte-compiles the virtual environment (the final root filesystem is
    read-only), and ``docker build`` stops at a command that fails. It ran ``python -m
    compileall``, which exits 1 on any module this Python cannot parse: coredis (which
    ``limits[async-redis]`` brought then) ships ``_py_312_typing.py``, which only Python 3.12
    imports, so the image did not build. pip byte-compiles what it installs and skips such a
    module; every compileall the build stage runs must pass on the installed dependencies (this
    venv's, pinned alike; its cache files go under ``tmp_path``)."""
    build = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1]
    assert "--no-compile" not in build and "PIP_NO_COMPILE" not in build  # pip compiles
    venv_lib = Path(sys.prefix) / "lib"
    for command in re.findall(r"python -m compileall([^&\n]*)", build):
        args = [venv_lib.as_posix() if a == "/opt/parley/lib" else a for a in command.split()]
        done = subprocess.run(
            [sys.executable, "-m", "compileall", *args],
            env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)},
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:]


def test_image_build_context_builds_a_wheel_with_every_module(tmp_path: Path) -> None:
    """What the Dockerfile copies into the build stage, and nothing else, builds a wheel that holds
    every module under services/ and parley/ (a directory without ``__init__.py`` would be left
    out of ``pip install .`` although every test passes in the source tree)."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore  # everything is excluded unless listed
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    sources = [word.rstrip("/") for line in copied for word in line.split()]
    context = tmp_path / "context"
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is .dockerignored"
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(origin, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), "."],
        cwd=context, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("parley-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if name.endswith(".py")}
    expected = {
        str(path.relative_to(ROOT))
        for top in ("services", "parley")
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected - packaged == set()
    # Installed as the build stage installs it (PYTHONDONTWRITEBYTECODE=1), every module gets
    # its byte code there: the final stage's root filesystem is read-only.
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def byte_code(module: str) -> Path:
        source = site / module
        return source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc"

    assert {module for module in expected if not byte_code(module).exists()} == set()
