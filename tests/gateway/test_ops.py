"""Health, info, metrics (also across WEB_CONCURRENCY processes), production start-up rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.gateway.runtime import Role, Runtime
from services.gateway.settings import GatewaySettings
from tests.gateway import engines
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import ROOT, Valkey, descendants, still_running, wait_for
from tests.support.stack import (
    API_KEY,
    APP_SECRET,
    TWILIO_TOKEN,
    VERIFY_TOKEN,
    Gateway,
    Services,
    cloud_payload,
    create_business,
    metric,
    new_wa_id,
    next_db,
    post_cloud,
    start_gateway,
)


def test_health_endpoints(gateway: Gateway) -> None:
    with gateway.http as client:
        health = client.get("/health").json()
        assert health["status"] == "healthy" and health["service"] == "gateway"
        for path in ("/ready", "/health/ready"):
            ready = client.get(path)
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert set(ready.json()["checks"]) == {
                "redis",
                "parley.session.v1.SessionService",
                "parley.business.v1.BusinessService",
                "parley.search.v1.SearchService",
            }
        # What the web replicas' readiness probe asks: only what taking webhooks needs.
        queue_only = client.get("/ready", params={"checks": "redis"})
        assert queue_only.status_code == 200 and queue_only.json()["checks"] == {"redis": "SERVING"}
        assert client.get("/ready", params={"checks": "everything"}).status_code == 400
        info = client.get("/health/info")
        assert info.status_code == 200
        body = info.json()
        assert body["version"] and body["commit"] and body["uptime_seconds"] >= 0
        assert body["config"]["whatsapp_app_secret"] == "***"
        assert body["config"]["api_key"] == "***"
        for secret in (APP_SECRET, VERIFY_TOKEN, API_KEY, TWILIO_TOKEN):
            assert secret not in info.text
        detailed = client.get("/health/detailed").json()
    assert detailed["status"] == "healthy"
    assert detailed["dependencies"]["redis"]["status"] == "SERVING"
    assert all("latency_ms" in d for d in detailed["dependencies"].values())
    assert {"length", "pending", "retrying", "dead_letters"} <= set(detailed["queue"])
    assert isinstance(detailed["circuit_breakers"], list) and detailed["circuit_breakers"]
    assert "hits" in detailed["business_cache"] or "misses" in detailed["business_cache"]
    assert detailed["session_storage"]["backend"] == "STORAGE_BACKEND_REDIS"
    assert detailed["engine"] == {"engine": "echo (tests)"}
    assert detailed["workers"]["held_partitions"]


def test_metrics_cover_the_pipeline(gateway: Gateway, fake_clouds: FakeClouds) -> None:
    business = gateway.business
    assert business is not None
    wa_id = new_wa_id()
    payload = cloud_payload(business.phone_number_id, wa_id, "count me")
    with gateway.http as client:
        post_cloud(client, payload)
        post_cloud(client, payload)
    assert wait_for(lambda: fake_clouds.replies(wa_id), 20)
    text = httpx.get(f"{gateway.url}/metrics").text
    for name in (
        'gateway_webhooks_total{channel="cloud_api",outcome="accepted"}',
        'gateway_webhooks_total{channel="cloud_api",outcome="duplicate"}',
        "gateway_webhook_ack_seconds_bucket",
        "gateway_end_to_end_seconds_bucket",
        "gateway_duplicates_dropped_total",
        'gateway_sends_total{outcome="accepted",sender="cloud_api"}',
        "gateway_queue_length",
        "gateway_queue_pending",
        "gateway_dead_letters",
        "gateway_retries_total",
    ):
        assert name in text, name
    # The gateway serves no gRPC: a server's metrics here would be its clients' module's, never
    # updated (grpc_server_in_flight was always 0).
    assert "grpc_server_" not in text and "parley_serving" not in text


def test_metrics_are_summed_across_web_processes(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, tmp_path: object
) -> None:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "multiprocess",
        role="web",
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    try:
        for i in range(12):
            # A new connection each time, so both processes answer some.
            response = httpx.post(
                f"{gw.url}/webhooks/whatsapp",
                content=b"{}",
                headers={"content-type": "application/json", "x-hub-signature-256": f"sha256={i}"},
            )
            assert response.status_code == 403

        def counted() -> float:
            text = httpx.get(f"{gw.url}/metrics").text
            line = next(
                (
                    entry
                    for entry in text.splitlines()
                    if entry.startswith(
                        'gateway_webhooks_total{channel="cloud_api",outcome="bad_signature"}'
                    )
                ),
                "x 0",
            )
            return float(line.rsplit(" ", 1)[1])

        assert [counted() for _ in range(4)] == [12.0] * 4
        pids = {f.split("_")[-1] for f in os.listdir(str(tmp_path)) if f.endswith(".db")}
        assert len(pids) >= 2, "expected metrics files from two processes"
        # No gRPC server's metrics here either: a multiprocess gauge is a series per process
        # (pid label) that outlives it, so grpc_server_in_flight{pid=…} 0 once grew by one
        # series for every web process ever started.
        text = httpx.get(f"{gw.url}/metrics").text
        assert "grpc_server_" not in text and "parley_serving" not in text
        assert 'pid="' not in text
    finally:
        gw.stop()


def test_a_web_process_that_has_to_be_killed_takes_its_children_with_it(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, tmp_path: Path
) -> None:
    """With WEB_CONCURRENCY > 1 the process a test starts is uvicorn's supervisor, and the web
    processes are its children. One that did not stop within its grace was killed alone: its
    children ran on, orphaned, serving the test's port for the rest of the run."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "killed-supervisor",
        role="web",
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    web = gw.processes[0]
    assert web.process is not None
    children = descendants(web.process.pid)
    try:
        assert len(children) >= 2, children  # the two web processes (and a resource tracker)
        web.signal(signal.SIGSTOP)  # a supervisor that does not get through its shutdown
        web.stop(grace=0.5)
        assert wait_for(lambda: not still_running(children), 10), still_running(children)
    finally:
        for pid in still_running(children):
            os.kill(pid, signal.SIGKILL)
        gw.stop()


def test_a_queue_redis_without_an_append_only_file_is_named_at_start_up(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, tmp_path: Path
) -> None:
    # The 200 promises the message is stored; a Redis without AOF (a managed one's default, or
    # one set up for a cache) loses every accepted message not yet answered when it restarts.
    warning = "Redis writes no append-only file: set appendonly yes"
    volatile = Valkey(tmp_path / "no-aof", None, "--appendonly", "no").start()
    try:
        for url, aof in (
            (volatile.url, False),
            (f"redis://127.0.0.1:{valkey.port}/{next_db()}", True),
        ):
            gw = start_gateway(services, fake_clouds, url, f"aof-{aof}", role="web")
            try:  # ready: after the start-up check that warns
                said = gw.processes[0].log_events(warning)
                assert [event["store"] for event in said] == (
                    [] if aof else ["gateway: the queue, dedupe markers and sent log"]
                )
            finally:
                gw.stop()
    finally:
        volatile.stop()


def test_a_web_restart_keeps_the_counts_of_workers_sharing_its_metrics_directory(
    services: Services, fake_clouds: FakeClouds, fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """Worker processes on the host with the same PROMETHEUS_MULTIPROC_DIR are in /metrics (as
    docs/gateway.md says). The web's start removed every file there, the running workers' too:
    from the first restart of the web (a deploy, a crash) on, what the workers counted (replies
    sent, dead letters, end-to-end latency) was in no file anyone read, for as long as they ran,
    and the alerts on it never fired. Only files of processes no longer running go now."""
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{fresh_valkey.port}/0",  # its own: no other test's worker on its queue
        "shared-multiprocess-dir",
        role="web",
        workers=1,
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    try:
        business = create_business(gw)

        def answered(text: str) -> None:
            wa_id = new_wa_id()
            with gw.http as client:
                post_cloud(client, cloud_payload(business.phone_number_id, wa_id, text))
            assert wait_for(lambda: fake_clouds.replies(wa_id), 20)

        accepted = 'gateway_sends_total{outcome="accepted",sender="cloud_api"}'
        answered("before the restart")
        # The worker counts a send once the provider has answered it, a moment after the fake
        # recorded the reply: wait for the count, as after the restart.
        assert wait_for(lambda: metric(gw, accepted) == 1, 5), metric(gw, accepted)
        web = gw.processes[0]
        web.stop()
        web.start()
        assert wait_for(lambda: ready(gw.url), 40, 0.2)
        answered("after the restart")
        assert wait_for(lambda: metric(gw, accepted) == 2, 5), metric(gw, accepted)
    finally:
        gw.stop()


def test_one_web_process_given_a_metrics_directory_not_made_yet_makes_it(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set (for the WEB_CONCURRENCY > 1 to come, or shared with
    workers) with one web process: prometheus_client counts into files there whatever the
    concurrency, and the directory was made only for several processes, so a fresh one was a
    FileNotFoundError traceback at start-up."""
    directory = tmp_path / "not-made-yet"
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "one-process-multiprocess-dir",
        role="web",
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    try:
        response = httpx.post(
            f"{gw.url}/webhooks/whatsapp",
            content=b"{}",
            headers={"content-type": "application/json", "x-hub-signature-256": "sha256=0"},
        )
        assert response.status_code == 403
        outcome = 'gateway_webhooks_total{channel="cloud_api",outcome="bad_signature"}'
        assert metric(gw, outcome) == 1
        assert list(directory.glob("*.db"))
    finally:
        gw.stop()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("role", ["web", "worker"])
async def test_stopping_closes_the_http_client_of_the_engine(
    valkey: Valkey, monkeypatch: pytest.MonkeyPatch, role: Role
) -> None:
    """With ``OPENAI_API_KEY`` the conversation engine holds an HTTP client of its own (the
    language model's), in every role: stopping the gateway closes it with the senders' client,
    Redis and the gRPC channels. (Was a bug: it was left open, its connections with it.)"""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    settings = GatewaySettings(
        redis_url=f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        gateway_engine="tests.gateway.engines:create_llm_engine",
        queue_partitions=2,
    )
    runtime = Runtime.build(settings, role)
    [client] = engines.LLM_CLIENTS[-1:]
    await runtime.start()
    assert not client.is_closed
    await runtime.stop()
    assert client.is_closed


def start_gateway_process(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The gateway started with ``env`` alone, run until it exits (a refused start-up)."""
    return subprocess.run(
        [sys.executable, "-m", "services.gateway.main"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_production_refuses_to_start_without_secrets() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "API_KEY")
    }
    env.update({"APP_ENV": "production", "WHATSAPP_APP_SECRET": "set-but-others-missing"})
    result = start_gateway_process(env)
    assert result.returncode == 2
    # Named as every refusal is, VARIABLE: why (was "(settings): Value error, …").
    assert "  APP_ENV: production needs these secrets set: " in result.stderr
    assert "WHATSAPP_VERIFY_TOKEN" in result.stderr and "API_KEY" in result.stderr
    assert "set-but-others-missing" not in result.stderr + result.stdout


def test_production_refuses_an_api_key_short_enough_to_guess() -> None:
    """The admin key reads every conversation, erases users and replays dead letters; the
    admin API has no rate limit, so a short key falls to guessing. With APP_ENV=production it
    must be 16 characters or more, as ENCRYPTION_SECRET. (Was a bug: `API_KEY=admin` started.)"""
    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}
    env.update(
        {
            "APP_ENV": "production",
            "WHATSAPP_APP_SECRET": "an-app-secret-of-meta",
            "WHATSAPP_VERIFY_TOKEN": "a-verify-token",
            "API_KEY": "adm1n-key",
        }
    )
    result = start_gateway_process(env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "API_KEY" in result.stderr and "16" in result.stderr, result.stderr
    assert "adm1n-key" not in result.stderr + result.stdout


def test_an_api_key_no_header_can_carry_is_refused_at_start() -> None:
    """A header is bytes that the gateway reads as Latin-1, so a key with "é" sent by curl
    from a UTF-8 terminal never matched: 403 with the right key (and httpx, `make chat`'s
    client, cannot send it at all). (Was a bug: such a key started, in every APP_ENV.)"""
    env = {**os.environ, "API_KEY": "clé-d'administration-2026", "APP_ENV": "dev"}
    result = start_gateway_process(env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "API_KEY" in result.stderr and "ASCII" in result.stderr, result.stderr
    assert "administration" not in result.stderr + result.stdout


def test_secrets_from_a_file_lose_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubectl create secret --from-file` keeps the file's newline in the variable: the app
    secret then signed nothing Meta sent (every webhook 403) and the API key matched no header."""
    from services.common.settings import load_settings
    from services.gateway.settings import GatewaySettings

    for name in ("WHATSAPP_APP_SECRET", "API_KEY", "TWILIO_AUTH_TOKEN", "WHATSAPP_VERIFY_TOKEN"):
        monkeypatch.setenv(name, f"value-of-{name}\n")
    settings = load_settings(GatewaySettings)
    assert settings.whatsapp_app_secret == "value-of-WHATSAPP_APP_SECRET"
    assert settings.api_key == "value-of-API_KEY"
    assert settings.twilio_auth_token == "value-of-TWILIO_AUTH_TOKEN"
    assert settings.whatsapp_verify_token == "value-of-WHATSAPP_VERIFY_TOKEN"


def test_info_masks_credentials_in_every_url() -> None:
    """/health/info needs no key: no password may show, in userinfo or as a query value."""
    from services.gateway.settings import GatewaySettings

    config = GatewaySettings(
        redis_url="redis://10.0.0.5:6379/0?password=hunter2&socket_timeout=1",
        gateway_redis_url="redis+sentinel://:S3nt@s1:26379,s2:26379/m/0?sentinel_password=S3nt",
        public_base_url="https://ops:hunter2@bot.example.com",
    ).masked()
    assert "hunter2" not in str(config) and "S3nt" not in str(config)
    assert config["redis_url"] == "redis://10.0.0.5:6379/0?password=***&socket_timeout=1"
    assert config["gateway_redis_url"] == (
        "redis+sentinel://:***@s1:26379,s2:26379/m/0?sentinel_password=***"
    )
    assert config["public_base_url"] == "https://ops:***@bot.example.com"
