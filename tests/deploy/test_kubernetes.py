"""The Kubernetes manifests, checked without a cluster: rendered by a strict kustomize subset,
validated by ``kubernetes-validate --strict`` (bundled schemas), and held to the issue's rules."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.server import LIVENESS
from services.gateway.bot.switches import Switch
from services.gateway.settings import GatewaySettings
from tests.deploy.envvars import read_by
from tests.deploy.kustomize import Resource, apply_json6902, read_env_file, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
TREES = [BASE, *OVERLAYS]
GRPC = {
    "session": (50051, "parley.session.v1.SessionService"),
    "business": (50052, "parley.business.v1.BusinessService"),
    "search": (50053, "parley.search.v1.SearchService"),
}
MIN_KUBERNETES = "1.30.0"
METADATA_NAME = "kubernetes.io/metadata.name"
# What one message may take by default: the engine's deadline, then a reply's send.
MESSAGE_SECONDS = (
    GatewaySettings.model_fields["engine_timeout_seconds"].default
    + GatewaySettings.model_fields["send_timeout_seconds"].default
)
# Secrets created out of band (docs/deployment.md), never committed.
EXTERNAL_SECRETS = {"parley-secrets", *(f"{name}-grpc-tls" for name in [*GRPC, "gateway"])}


def tree_id(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(scope="module")
def rendered() -> dict[Path, list[Resource]]:
    return {tree: render(tree) for tree in TREES}


def of_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_spec(deployment: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def part_of(deployment: Resource) -> str:
    """Which part of Parley runs in it, from its command (``services.<part>...``)."""
    module = pod_spec(deployment)["containers"][0]["command"][2]
    return str(module.split(".")[1])


def test_every_rendered_manifest_passes_kubernetes_validate_strict(
    rendered: dict[Path, list[Resource]], tmp_path: Path
) -> None:
    files = []
    for tree, resources in rendered.items():
        for index, resource in enumerate(resources):
            path = tmp_path / f"{tree_id(tree).replace('/', '-')}-{index:02d}.yaml"
            path.write_text(yaml.safe_dump(resource, sort_keys=False))
            files.append(str(path))
    # The command line as a person runs it, once over every resource of every tree.
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--quiet",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(files) >= 3 * 25
    # And against the oldest Kubernetes the manifests support (the preStop `sleep` action is on
    # by default from 1.30), in process: the same validator and bundled schemas.
    for resources in rendered.values():
        for resource in resources:
            kubernetes_validate.validate(resource, MIN_KUBERNETES, strict=True)


def _hashes_masked(resources: list[Resource]) -> list[Resource]:
    """Each generated ConfigMap's name, and every reference that uses it, as ``<name>-<hash>``:
    the suffixes differ between kustomize and ``tests/deploy/kustomize.py``; a reference left
    without its suffix stays as it is."""
    hashed = {
        name: re.sub(r"-[a-z0-9]{10}$", "-<hash>", name)
        for name in of_kind(resources, "ConfigMap")
        if re.search(r"-[a-z0-9]{10}$", name)
    }

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mask(item) for item in value]
        return hashed.get(value, value) if isinstance(value, str) else value

    return sorted(
        (mask(resource) for resource in resources),
        key=lambda r: (r["kind"], r["metadata"]["name"]),
    )


KUBECTL = shutil.which("kubectl")


# As the alert rules' tests without promtool: a fresh machine without kubectl runs the other
# checks, on our renderer, and says which one it skipped.
@pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: our renderer NOT compared with kustomize"
)
@pytest.mark.parametrize("tree", [*TREES, K8S / "monitoring"], ids=tree_id)
def test_kubectl_kustomize_builds_the_resources_these_checks_check(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    """The checks read `tests/deploy/kustomize.py`'s rendering: it must be what `kubectl apply -k`
    applies, suffixes aside."""
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    real = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    ours = rendered[tree] if tree in rendered else render(tree)
    assert _hashes_masked(real) == _hashes_masked(ours)


def test_strict_validation_catches_a_misspelt_field(rendered: dict[Path, list[Resource]]) -> None:
    """The check bites: a typo in a probe is an error, not a warning."""
    deployment = of_kind(rendered[BASE], "Deployment")["session"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def test_kustomization_lists_every_file_in_the_base() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    envs = {env for g in kustomization["configMapGenerator"] for env in g.get("envs", [])}
    assert envs == {f"config/{p.name}" for p in (BASE / "config").glob("*.env")}


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_every_resource_is_in_the_parley_namespace(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    """Where the Secrets are created and the NetworkPolicies apply; a resource an overlay adds
    without a `namespace:` of its own would land in kubectl's current namespace."""
    for resource in rendered[tree]:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == "parley", resource["metadata"]


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_every_configmap_and_secret_reference_resolves(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    resources = rendered[tree]
    # A pod reads ConfigMaps of its own namespace only.
    configmaps = {
        name
        for name, configmap in of_kind(resources, "ConfigMap").items()
        if configmap["metadata"].get("namespace") == "parley"
    }
    for deployment in of_kind(resources, "Deployment").values():
        assert deployment["metadata"]["namespace"] == "parley"
        spec = pod_spec(deployment)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for variable in container.get("env", []):
                ref = variable["valueFrom"]  # every variable comes from a ConfigMap or a Secret
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in EXTERNAL_SECRETS
                    assert ref["secretKeyRef"]["key"] == variable["name"]
                else:
                    assert ref["configMapKeyRef"]["name"] in configmaps
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in EXTERNAL_SECRETS


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_deployments_run_hardened_with_probes_resources_and_grace(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    resources = rendered[tree]
    configmaps = {n: c.get("data", {}) for n, c in of_kind(resources, "ConfigMap").items()}
    deployments = of_kind(resources, "Deployment")
    assert set(deployments) == {*GRPC, "gateway-web", "gateway-worker"}
    for name, deployment in deployments.items():
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        env: dict[str, str] = {}
        for source in container["envFrom"]:  # the last source of a variable wins
            env.update(configmaps[source["configMapRef"]["name"]])
        grace = float(env["SHUTDOWN_GRACE_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > grace + pre_stop, name
        if name == "gateway-worker":
            # A message running at SIGTERM may finish: cut, it is retried, and a reply being
            # sent at that moment can reach the user twice.
            assert grace >= MESSAGE_SECONDS, grace
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        if name != "gateway-worker":  # the worker role serves no HTTP and takes no traffic
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, (name, probe)
        module = container["command"][2]
        assert container["command"][:2] == ["python", "-m"]
        assert importlib.util.find_spec(module) is not None, module
        if tree == BASE:
            assert container["image"] == "parley"
        else:
            assert container["image"].startswith("registry.example.com/parley:")


def test_services_use_native_grpc_probes_and_the_gateway_http_probes(
    rendered: dict[Path, list[Resource]],
) -> None:
    deployments = of_kind(rendered[BASE], "Deployment")
    for name, (port, full_name) in GRPC.items():
        container = pod_spec(deployments[name])["containers"][0]
        # The process answers; a datastore outage must not restart it.
        liveness = {"port": port, "service": LIVENESS}
        assert container["livenessProbe"]["grpc"] == liveness
        assert container["startupProbe"]["grpc"] == liveness
        # Search answers without its cache Redis (tests/deploy/test_pod_processes.py).
        ready = LIVENESS if name == "search" else full_name
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": ready}
    web = pod_spec(deployments["gateway-web"])["containers"][0]
    assert web["command"][-2:] == ["--role", "web"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert web["startupProbe"]["httpGet"]["path"] == "/health"
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready?checks=redis"
    worker = pod_spec(deployments["gateway-worker"])["containers"][0]
    assert worker["command"][-2:] == ["--role", "worker"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_mtls_overlay_probes_with_the_healthcheck_command_over_tls(
    rendered: dict[Path, list[Resource]],
) -> None:
    mtls = K8S / "overlays" / "mtls"
    deployments = of_kind(rendered[mtls], "Deployment")
    for name, (port, full_name) in GRPC.items():
        container = pod_spec(deployments[name])["containers"][0]
        readiness = container["readinessProbe"]["exec"]["command"]
        assert "grpc" not in container["readinessProbe"]
        assert readiness[:3] == ["python", "-m", "services.common.healthcheck"]
        assert readiness[readiness.index("--addr") + 1] == f"localhost:{port}"
        ready = LIVENESS if name == "search" else full_name
        assert readiness[readiness.index("--service") + 1] == ready
        for probe in ("livenessProbe", "startupProbe"):
            command = container[probe]["exec"]["command"]
            assert "--tls-cert" in command
            assert command[command.index("--service") + 1] == LIVENESS
    for deployment in deployments.values():
        spec = pod_spec(deployment)
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["grpc-tls"]["readOnly"] is True
    tls = next(r for r in rendered[mtls] if r["metadata"]["name"].startswith("grpc-tls"))
    assert set(tls["data"]) == {"GRPC_TLS_CERT", "GRPC_TLS_KEY", "GRPC_TLS_CA"}


def test_grpc_services_are_headless_and_autoscaling_covers_workers_and_search(
    rendered: dict[Path, list[Resource]],
) -> None:
    resources = rendered[BASE]
    services = of_kind(resources, "Service")
    for name, (port, _) in GRPC.items():
        assert services[name]["spec"]["clusterIP"] == "None"
        assert port in {p["port"] for p in services[name]["spec"]["ports"]}
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in of_kind(resources, "HorizontalPodAutoscaler").values()
    }
    assert {"gateway-worker", "search"} <= hpas
    pdbs = of_kind(resources, "PodDisruptionBudget")
    for deployment in of_kind(resources, "Deployment").values():
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert any(p["spec"]["selector"]["matchLabels"] == labels for p in pdbs.values())


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_a_deployment_its_hpa_scales_names_no_replica_count(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    """Kubernetes' advice for autoscaled Deployments: with `spec.replicas` in the manifest, every
    `kubectl apply -k` (a new image, a switch's next percentage) sets the count back to it, and
    workers an HPA added under load are stopped until it scales them up again."""
    resources = rendered[tree]
    deployments = of_kind(resources, "Deployment")
    for hpa in of_kind(resources, "HorizontalPodAutoscaler").values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], target["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2  # what the count starts from, and PDBs allow for


def test_network_policies_let_only_the_gateway_reach_the_services(
    rendered: dict[Path, list[Resource]],
) -> None:
    policies = of_kind(rendered[BASE], "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    for name, (port, _) in GRPC.items():
        spec = policies[name]["spec"]
        assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        grpc_rules = [r for r in spec["ingress"] if {"protocol": "TCP", "port": port} in r["ports"]]
        assert grpc_rules == [
            {
                "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        ]
        for rule in spec["ingress"]:
            assert rule.get("from"), f"{name}: an ingress rule open to everyone"
        # Each service goes out only to its datastore's ports (and the provider's HTTPS, search).
        egress_ports = {p["port"] for r in spec["egress"] for p in r["ports"]}
        allowed = {
            "session": {6379, 6380, 26379},
            "business": {27017, 6379, 6380, 26379},
            "search": {6379, 6380, 26379, 443},
        }
        assert egress_ports <= allowed[name], name
        assert not any(p in egress_ports for p, _ in GRPC.values())


# What the pods reach outside the cluster, by port.
DESTINATIONS = {"MongoDB": {27017}, "Redis": {6379, 6380, 26379}, "HTTPS": {443}}


def test_each_open_egress_rule_reaches_one_kind_of_destination(
    rendered: dict[Path, list[Resource]],
) -> None:
    """The base opens these by port; an overlay narrows a rule to addresses (adds `to`, as
    docs/deployment.md shows). A rule holding MongoDB's and Redis's ports together, narrowed to
    the MongoDB replica set, would cut Redis off."""
    for name, policy in of_kind(rendered[BASE], "NetworkPolicy").items():
        for rule in policy["spec"].get("egress", []):
            if "to" in rule:
                continue
            ports = {p["port"] for p in rule["ports"]}
            assert any(ports <= kind for kind in DESTINATIONS.values()), (name, ports)


def test_the_documented_narrowing_patch_narrows_what_it_says(
    rendered: dict[Path, list[Resource]],
) -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    found = re.search(r"with a patch in your overlay, for example:\s*```yaml\n(.*?)```", text, re.S)
    assert found, "docs/deployment.md: the NetworkPolicy patch example"
    (patch,) = yaml.safe_load(textwrap.dedent(found.group(1)))["patches"]
    policy = copy.deepcopy(of_kind(rendered[BASE], "NetworkPolicy")[patch["target"]["name"]])
    apply_json6902(policy, yaml.safe_load(patch["patch"]))
    narrowed = [r for r in policy["spec"]["egress"] if any("ipBlock" in t for t in r.get("to", []))]
    assert [{p["port"] for p in r["ports"]} for r in narrowed] == [DESTINATIONS["MongoDB"]]
    still_open = {p["port"] for r in policy["spec"]["egress"] if "to" not in r for p in r["ports"]}
    assert DESTINATIONS["Redis"] <= still_open


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_manifests_set_only_variables_the_code_reads(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    resources = rendered[tree]
    configmaps = of_kind(resources, "ConfigMap")
    for name, deployment in of_kind(resources, "Deployment").items():
        container = pod_spec(deployment)["containers"][0]
        names = {v["name"] for v in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(configmaps[source["configMapRef"]["name"]]["data"])
        unread = names - read_by(part_of(deployment))
        assert not unread, (
            f"{tree_id(tree)} {name} sets variables its code never reads: {sorted(unread)}"
        )


def test_config_env_files_hold_only_variables_their_service_reads() -> None:
    parts = {
        "common": "common",
        "session": "session",
        "business": "business",
        "search": "search",
        "gateway": "gateway",
        "gateway-worker": "gateway",
    }
    for path in (BASE / "config").glob("*.env"):
        unread = set(read_env_file(path)) - read_by(parts[path.stem])
        assert not unread, f"{path.name}: {sorted(unread)}"


def settings_of(resources: list[Resource]) -> dict[str, dict[str, str]]:
    """Each generated ConfigMap's variables, by its name without the content hash."""
    return {
        name.rsplit("-", 1)[0]: dict(configmap.get("data", {}))
        for name, configmap in of_kind(resources, "ConfigMap").items()
    }


@pytest.mark.parametrize("tree", OVERLAYS, ids=tree_id)
def test_an_overlay_as_shipped_changes_no_setting_of_the_base(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    """`kubectl apply -k deploy/k8s/overlays/production`, with the image set, is the install
    step: it must run the settings the base and the code's defaults describe. (Was a bug: the
    production overlay shipped docs/deployment.md's roll-out example, `USE_SMART_HANDLER=25%`,
    so three users in four got the step-by-step engine, where the default is the
    extract-everything one for everyone: *NYC to London next Friday* answered *Where do you
    want to go?*, a whole request taking three messages.)"""
    base = settings_of(rendered[BASE])
    overlay = settings_of(rendered[tree])
    for name, data in base.items():
        assert overlay[name] == data, name
    # What that means to users: every one of them gets the extract-everything engine.
    worker = pod_spec(of_kind(rendered[tree], "Deployment")["gateway-worker"])["containers"][0]
    env: dict[str, str] = {}
    for source in worker["envFrom"]:
        env.update(of_kind(rendered[tree], "ConfigMap")[source["configMapRef"]["name"]]["data"])
    switch = Switch.parse("use_smart_handler", env.get("USE_SMART_HANDLER", "true"))
    assert all(switch.enabled_for("b-1", f"1555{n:07d}") for n in range(1000))


@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_the_workers_hpa_stops_where_a_worker_would_hold_no_partition(
    rendered: dict[Path, list[Resource]], tree: Path
) -> None:
    """A gateway worker holds its share of QUEUE_PARTITIONS; past that many workers the rest
    hold none and take no message. (Was a bug: the HPA went up to 20 workers on the default 16
    partitions, four ready pods doing nothing, their idle CPU lowering the average it scales
    on.)"""
    resources = rendered[tree]
    worker = pod_spec(of_kind(resources, "Deployment")["gateway-worker"])["containers"][0]
    env: dict[str, str] = {}
    for source in worker["envFrom"]:
        env.update(of_kind(resources, "ConfigMap")[source["configMapRef"]["name"]]["data"])
    default = GatewaySettings.model_fields["queue_partitions"].default
    partitions = int(env.get("QUEUE_PARTITIONS", default))
    hpa = of_kind(resources, "HorizontalPodAutoscaler")["gateway-worker"]
    assert hpa["spec"]["maxReplicas"] <= partitions


def admitted(policies: dict[str, Resource], labels: dict[str, str], port: int) -> list[Any]:
    """Who may reach ``port`` of a pod with ``labels``: the `from` of every ingress rule of the
    policies selecting it (None: anyone), as Kubernetes unites them."""
    sources: list[Any] = []
    for policy in policies.values():
        spec = policy["spec"]
        selector = spec["podSelector"].get("matchLabels", {})
        if "Ingress" not in spec["policyTypes"] or selector.items() - labels.items():
            continue
        for rule in spec.get("ingress", []):
            if not rule.get("ports") or {"protocol": "TCP", "port": port} in rule["ports"]:
                sources.append(rule.get("from"))
    return sources


def test_only_prometheus_reaches_the_gateway_workers(rendered: dict[Path, list[Resource]]) -> None:
    """The web pods take webhooks from anywhere (the ingress, a load balancer); the workers take
    no traffic: their port serves the probes (the kubelet's, from the node), /metrics and the
    /health pages. (Was a bug: the workers' 8000 was open to every pod of the cluster and beyond,
    /health/info's configuration and /health/detailed, which calls every dependency on each
    request, included.)"""
    policies = of_kind(rendered[BASE], "NetworkPolicy")
    prometheus = [{"namespaceSelector": {"matchLabels": {METADATA_NAME: "monitoring"}}}]
    web = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "web"}
    worker = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "worker"}
    assert None in admitted(policies, web, 8000)
    assert admitted(policies, worker, 8000) == [prometheus]
