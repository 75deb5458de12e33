"""Gateways and business services of this release and of the release before it (``git
archive``) side by side: this release's gateway on the old business service, as when the gateway
rolls before the business service (``kubectl apply -k`` rolling every Deployment at once) or the
business service is rolled back first, and the old gateway on this release's services, as
during the documented upgrade: what docs/deployment.md's *Upgrade* says an operator meets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_admin import new_business_body
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for
from tests.support.releases import REQUEST_ID_RELEASE, previous_release
from tests.support.stack import (
    ENCRYPTION_SECRET,
    Gateway,
    Services,
    create_business,
    gateway_env,
    next_db,
    start_gateway,
)

BUSINESS = "parley.business.v1.BusinessService"


@pytest.fixture(scope="module")
def previous_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return previous_release(tmp_path_factory.mktemp("previous-release"), REQUEST_ID_RELEASE)


@pytest.fixture(scope="module")
def gateway_on_previous_business(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, previous_root: Path
) -> Iterator[Gateway]:
    root = previous_root
    port = free_port()
    business = ServiceProcess(
        "services.business.server",
        {
            "PYTHONPATH": str(root),
            "BUSINESS_PORT": str(port),
            "BUSINESS_METRICS_PORT": "0",
            "BUSINESS_DB_PATH": str(Path(root) / "business.db"),
            "ENCRYPTION_SECRET": ENCRYPTION_SECRET,
            "BUSINESS_NEGATIVE_CACHE_TTL": "0",
        },
        root / "business.log",
        root=root,
    )
    for var in ("MONGODB_URI", "REDIS_URL", "GATEWAY_REDIS_URL"):
        business.env.pop(var, None)
    business.start()
    address = f"127.0.0.1:{port}"
    gateway: Gateway | None = None
    try:
        business.wait_serving(address, BUSINESS, timeout=60)
        mixed = dataclasses.replace(services, business=address, processes=[])
        redis_url = f"redis://127.0.0.1:{valkey.port}/{next_db()}"
        gateway = start_gateway(mixed, fake_clouds, redis_url, "upgrade", OUTBOX_ONLY="true")
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        business.stop()


def test_an_idempotency_key_is_not_honoured_by_a_business_service_of_the_release_before(
    gateway_on_previous_business: Gateway,
) -> None:
    """The release before knows no request_id: the admin API's changes are applied as before,
    and a change sent again with its Idempotency-Key is applied again, not answered from
    memory (with If-Match: 412, as before the header existed); a create keyed as before is
    still one business."""
    gateway = gateway_on_previous_business
    business = create_business(gateway)
    path = f"/admin/businesses/{business.id}"
    with gateway.admin() as admin:
        tag = admin.get(path).headers["ETag"]
        key = {"Idempotency-Key": "script-run-8/0", "If-Match": tag}
        first = admin.patch(path, json={"name": "Keyed"}, headers=key)
        assert first.status_code == 200, first.text
        again = admin.patch(path, json={"name": "Keyed"}, headers=key)
        assert again.status_code == 412, again.text
        # The key reused for another request is applied too, not refused with 400.
        other = admin.patch(
            path, json={"name": "Other"}, headers={"Idempotency-Key": "script-run-8/0"}
        )
        assert other.status_code == 200 and other.json()["name"] == "Other", other.text


@pytest.fixture(scope="module")
def previous_gateway(
    services: Services, fake_clouds: FakeClouds, valkey: Valkey, previous_root: Path
) -> Iterator[Gateway]:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{valkey.port}/{next_db()}"
    env = gateway_env(
        services,
        fake_clouds,
        redis_url,
        port,
        PYTHONPATH=str(previous_root),
        OUTBOX_ONLY="true",
        # The test engines are this release's test code: the old gateway runs its own bot.
        GATEWAY_ENGINE="services.gateway.bot:create_engine",
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", redis_url, env)
    web = ServiceProcess(
        "services.gateway.main",
        {**env, "GATEWAY_ROLE": "all"},
        previous_root / "gateway.log",
        root=previous_root,
    ).start()
    gateway.processes.append(web)
    try:
        assert wait_for(lambda: ready(gateway), 60, 0.2), web.log[-3000:]
        yield gateway
    finally:
        gateway.stop()


def ready(gateway: Gateway) -> bool:
    try:
        with gateway.http as client:
            return client.get("/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_previous_gateways_admin_api_works_on_this_releases_business_service(
    previous_gateway: Gateway,
) -> None:
    """Services first, then the gateway: until it rolls, the old gateway sends no request ids
    and reads this release's answers and errors as before."""
    body = new_business_body("Rolling")
    key = {"Idempotency-Key": "7d4c9a52-0f3e-4d8b-9a61-5b2e8c1d3f70"}
    with previous_gateway.admin() as admin:
        first = admin.post("/admin/businesses", json=body, headers=key)
        assert first.status_code == 201, first.text
        again = admin.post("/admin/businesses", json=body, headers=key)
        assert again.status_code == 201 and again.json()["id"] == first.json()["id"], again.text
        path = f"/admin/businesses/{first.json()['id']}"
        tag = admin.get(path).headers["ETag"]
        renamed = admin.patch(path, json={"name": "Renamed"}, headers={"If-Match": tag})
        assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed", renamed.text
        stale = admin.patch(path, json={"name": "Stale"}, headers={"If-Match": tag})
        assert stale.status_code == 412, stale.text
        token = admin.put(f"{path}/token", json={"access_token": "EAAG-rolling-token"})
        assert token.status_code == 200 and token.json()["has_access_token"], token.text
        refused = admin.patch(path, json={"timezone": "Mars/Olympus"})
        assert refused.status_code == 400, refused.text
        gone = admin.delete(path)
        assert gone.status_code == 200 and not gone.json()["active"], gone.text
