"""The processes as the base's Deployments run them: their command's role and the variables of
their ConfigMaps, a real Valkey, and the kubelet's probes sent to each of the pod's addresses."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.deploy.kustomize import Resource, render
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
# What parley-secrets holds (docs/deployment.md), made up: no secret of a real deployment.
SECRETS = {
    "API_KEY": "a-made-up-admin-key-of-forty-characters!!",
    "WHATSAPP_VERIFY_TOKEN": "made-up-verify-token",
    "WHATSAPP_APP_SECRET": "made-up-app-secret",
}


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render(BASE)


def pod_environment(resources: list[Resource], deployment: str) -> tuple[dict[str, str], str]:
    """The variables a Deployment's container gets from its ConfigMaps (the last source of a
    variable wins, as in Kubernetes) and the role its command names."""
    named = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    (container,) = named["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(named["ConfigMap", source["configMapRef"]["name"]].get("data", {}))
    command = container["command"]
    return env, command[command.index("--role") + 1]


@pytest.mark.parametrize("deployment", ["gateway-web", "gateway-worker"])
def test_the_gateway_s_probes_are_answered_on_the_pod_s_ipv6_and_ipv4_addresses(
    base: list[Resource], deployment: str, tmp_path: Path, valkey: Valkey
) -> None:
    """An IPv6-only or dual-stack cluster probes and scrapes a pod at its IPv6 address, and the
    ingress sends webhooks there. (Was a bug: the gateway listened on IPv4 alone, `0.0.0.0`,
    while the services' gRPC and metrics ports listen on both, so in such a cluster no gateway
    pod ever passed its startup probe.)"""
    env, role = pod_environment(base, deployment)
    port = free_port()
    # The pod's port is 8000; here any free one, through the variable that names it.
    env["WORKER_HTTP_PORT" if role == "worker" else "GATEWAY_PORT"] = str(port)
    dead = f"127.0.0.1:{free_port()}"  # the services play no part in /health
    gateway = ServiceProcess(
        "services.gateway.main",
        {
            **env,
            **SECRETS,
            "GATEWAY_ROLE": role,
            "REDIS_URL": valkey.url,
            "SESSION_SERVICE_ADDR": dead,
            "BUSINESS_SERVICE_ADDR": dead,
            "SEARCH_SERVICE_ADDR": dead,
        },
        tmp_path / f"{deployment}.log",
    ).start()
    try:

        def answers(host: str) -> bool:
            try:
                return httpx.get(f"http://{host}:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(lambda: answers("127.0.0.1"), 30), gateway.log
        assert answers("[::1]"), gateway.log
    finally:
        gateway.stop()


def test_a_port_the_gateway_cannot_take_stops_startup_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as holder:  # another process's listener, IPv6 and IPv4
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        holder.bind(("::", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gateway = ServiceProcess(
            "services.gateway.main",
            {"GATEWAY_ROLE": "web", "GATEWAY_PORT": str(port)},
            tmp_path / "gateway.log",
        ).start()
        assert gateway.wait() == 2, gateway.log
    assert f"GATEWAY_PORT: cannot listen on port {port} (Address already in use)" in gateway.log
