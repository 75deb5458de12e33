"""`--role worker` with WORKER_HTTP_PORT: probes and metrics for workers, never webhooks."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for


def test_worker_serves_probes_and_metrics_but_no_webhooks(tmp_path: Path, valkey: Valkey) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"  # no service there: the worker is alive but not ready
    worker = ServiceProcess(
        "services.gateway.main",
        {
            "GATEWAY_ROLE": "worker",
            "WORKER_HTTP_PORT": str(port),
            "GATEWAY_HOST": "127.0.0.1",
            "REDIS_URL": valkey.url,
            "SESSION_SERVICE_ADDR": dead,
            "BUSINESS_SERVICE_ADDR": dead,
            "SEARCH_SERVICE_ADDR": dead,
        },
        tmp_path / "worker.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 30), worker.log
        assert httpx.get(f"{base}/ready", timeout=5).status_code == 503
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "# TYPE" in metrics.text
        assert httpx.post(f"{base}/webhooks/whatsapp", content=b"{}").status_code == 404
        assert httpx.get(f"{base}/admin/outbox").status_code == 404
    finally:
        worker.stop()
