"""deploy/k8s/monitoring (Prometheus Operator objects), checked without a cluster: the
PrometheusRule is alerts.yml as generated, and the PodMonitor scrapes every Parley pod on a port
it has, with the job names the alerts select. (No schema for the Operator's CRDs is on the test
machines, so their fields are checked here rather than by kubernetes-validate.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.kustomize import Resource, render
from tests.deploy.observability import ALERTS, alert_rules

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def monitoring() -> dict[str, Resource]:
    return {resource["kind"]: resource for resource in render(K8S / "monitoring")}


def pod_templates() -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in render(K8S / "base") if d["kind"] == "Deployment"]


def test_the_prometheusrule_is_alerts_yml_as_generated() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_prometheusrule", ROOT / "tools" / "gen_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.TARGET.read_text() == generator.render(), "run `make prometheusrule`"
    rule = monitoring()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "parley"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_the_podmonitor_scrapes_every_parley_pod_as_the_job_the_alerts_name() -> None:
    monitor = monitoring()["PodMonitor"]
    assert monitor["metadata"]["namespace"] == "parley"
    spec = monitor["spec"]
    endpoints = {e["port"]: e.get("path", "/metrics") for e in spec["podMetricsEndpoints"]}
    jobs = set()
    for template in pod_templates():
        labels = template["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        jobs.add(labels[spec["jobLabel"]])
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
                 for p in c.get("ports", [])}  # fmt: skip
        scraped = [name for name in ports if name in endpoints]
        assert len(scraped) == 1, (labels, ports)
        # The same port and path as the pod's prometheus.io annotations say.
        annotations = template["metadata"]["annotations"]
        assert str(ports[scraped[0]]) == annotations["prometheus.io/port"]
        assert endpoints[scraped[0]] == annotations.get("prometheus.io/path", "/metrics")
    target_down = alert_rules()["ParleyTargetDown"]["expr"]
    named = set(re.search(r'job=~"([^"]+)"', target_down).group(1).split("|"))  # type: ignore[union-attr]
    assert jobs == named - {"redis"}  # Redis is outside the cluster: its own exporter's job
    # And a job with no target at all pages too (scaled to zero, or this PodMonitor not selected).
    missing = alert_rules()["ParleyTargetMissing"]["expr"]
    assert jobs == set(re.findall(r'absent\(up\{job="(\w+)"\}\)', missing))
