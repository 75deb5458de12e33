"""The processes as the base's Deployments run them: their command's role and the variables of
their ConfigMaps, a real Valkey, and the kubelet's probes sent to each of the pod's addresses."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import httpx
import pytest

from parley.search.v1 import search_pb2, search_pb2_grpc
from services.common.healthcheck import check
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


def pod_environment(resources: list[Resource], deployment: str) -> tuple[dict[str, str], Resource]:
    """The variables a Deployment's container gets from its ConfigMaps (the last source of a
    variable wins, as in Kubernetes), and the container."""
    named = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    (container,) = named["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(named["ConfigMap", source["configMapRef"]["name"]].get("data", {}))
    return env, container


@pytest.mark.parametrize(
    ("deployment", "processes"),
    [("gateway-web", 1), ("gateway-worker", 1), ("gateway-web", 2)],
    ids=["gateway-web", "gateway-worker", "gateway-web-2-processes"],
)
def test_the_gateway_s_probes_are_answered_on_the_pod_s_ipv6_and_ipv4_addresses(
    base: list[Resource], deployment: str, processes: int, tmp_path: Path, valkey: Valkey
) -> None:
    """An IPv6-only or dual-stack cluster probes and scrapes a pod at its IPv6 address, and the
    ingress sends webhooks there. (Was a bug: the gateway listened on IPv4 alone, `0.0.0.0`,
    while the services' gRPC and metrics ports listen on both, so in such a cluster no gateway
    pod ever passed its startup probe.) Several web processes share the one socket."""
    env, container = pod_environment(base, deployment)
    if processes > 1:
        env["WEB_CONCURRENCY"] = str(processes)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    role = container["command"][container["command"].index("--role") + 1]
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


def test_search_stays_in_rotation_while_it_answers_without_its_cache_redis(
    base: list[Resource], tmp_path: Path
) -> None:
    """Every search replica shares one cache Redis; without it they all answer, uncached
    (docs/search.md). (Was a bug: the readiness probe asked for the service's own name, which
    follows the cache Redis, so its outage took every replica out of the headless Service: DNS
    then has no address for `search`, and a gateway process started meanwhile (a worker the HPA
    added or that restarted, a rollout) could not reach search at all, its users told that
    search was unavailable, while the processes started before went on calling the replicas.
    Reproduced with a DNS server answering NXDOMAIN, as cluster DNS does for a headless Service
    with no ready pod: the running channel's calls went on, a new channel's failed UNAVAILABLE.)"""
    env, container = pod_environment(base, "search")
    probe = container["readinessProbe"]["grpc"]
    port = free_port()
    search = ServiceProcess(
        "services.search.server",
        {
            **env,
            "SEARCH_PORT": str(port),
            "SEARCH_METRICS_PORT": "0",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody listens there
        },
        tmp_path / "search.log",
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        # The datastore's outage is still told, for dashboards and alerts (parley_serving).
        assert wait_for(lambda: check(address, "") == "NOT_SERVING", 30), search.log
        assert check(address, probe["service"]) == "SERVING", search.log
        with grpc.insecure_channel(address) as channel:
            found = search_pb2_grpc.SearchServiceStub(channel).ResolvePlace(
                search_pb2.ResolvePlaceRequest(query="London"), timeout=10
            )
        assert found.candidates, search.log
    finally:
        search.stop()
