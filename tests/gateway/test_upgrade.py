"""This release's gateway on a business service of the release before it (``git archive``),
as when the gateway rolls before the business service (``kubectl apply -k`` rolling every
Deployment at once) or the business service is rolled back first: what docs/deployment.md's
*Upgrade* says an operator's scripts meet then."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_clouds import FakeClouds
from tests.support.processes import ServiceProcess, Valkey, free_port
from tests.support.releases import REQUEST_ID_RELEASE, previous_release
from tests.support.stack import (
    ENCRYPTION_SECRET,
    Gateway,
    Services,
    create_business,
    next_db,
    start_gateway,
)

BUSINESS = "parley.business.v1.BusinessService"


@pytest.fixture(scope="module")
def gateway_on_previous_business(
    services: Services,
    fake_clouds: FakeClouds,
    valkey: Valkey,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    root = previous_release(tmp_path_factory.mktemp("previous-release"), REQUEST_ID_RELEASE)
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
