"""BusinessService as users reach it: a real process, real gRPC over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from parley.business.v1 import business_pb2, business_pb2_grpc
from services.business.model import MAX_IDENTITIES, validate_numbers
from services.common.errors import InvalidArgument, error_info, field_violations
from services.common.healthcheck import check
from services.common.interceptors import REQUEST_ID_KEY
from tests.business.conftest import (
    TEST_SECRET,
    RunningService,
    SecretRegistry,
    demo_request,
    fresh_database,
    secantusdb,
    start_service,
)
from tests.support.processes import ROOT, ServiceProcess, Valkey, free_port, wait_for
from tests.support.proxy import ReplyCutter
from tests.support.releases import previous_release

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def service(
    registry: SecretRegistry, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    running = await start_service(
        registry, "business-sqlite", tmp_path_factory.mktemp("svc") / "business.db"
    )
    yield running
    await running.close()


async def code_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def test_create_then_lookup_by_every_identity(
    service: RunningService, registry: SecretRegistry
) -> None:
    request = demo_request(registry)
    created = (await service.stub.CreateBusiness(request)).business
    assert len(created.id) == 24 and created.has_access_token and created.has_twilio_credentials
    assert created.access_token_status == business_pb2.TOKEN_STATUS_VALID
    assert created.locale == "en-US" and created.time_zone == "America/New_York"

    pnid = request.business.whatsapp_phone_number_ids[0]
    number = request.business.whatsapp_numbers[0]
    first = await service.stub.LookupBusiness(
        business_pb2.LookupBusinessRequest(phone_number_id=pnid)
    )
    assert first.business.id == created.id and not first.cached
    assert not first.HasField("credentials")  # plaintext only when asked for
    for lookup in (
        business_pb2.LookupBusinessRequest(phone_number_id=pnid),
        business_pb2.LookupBusinessRequest(whatsapp_number=f"whatsapp:{number}"),
        business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain.upper()),
    ):
        answer = await service.stub.LookupBusiness(lookup)
        assert answer.business.id == created.id and answer.cached

    with_secrets = await service.stub.LookupBusiness(
        business_pb2.LookupBusinessRequest(phone_number_id=pnid, include_credentials=True)
    )
    assert with_secrets.credentials == request.credentials
    got = await service.stub.GetBusiness(
        business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
    )
    assert got.business == created and got.credentials == request.credentials


@pytest.mark.parametrize(
    ("field", "value", "violation"),
    [
        ("subdomain", "Bad_Sub", "business.subdomain"),
        ("subdomain", "-dash", "business.subdomain"),
        ("time_zone", "Mars/Olympus_Mons", "business.time_zone"),
        ("locale", "english!", "business.locale"),
        ("name", "  ", "business.name"),
        ("name", "Acme\x7f Trips", "business.name"),
        ("name", "Acme \x9b2J Trips", "business.name"),
    ],
)
async def test_bad_fields_are_invalid_argument_naming_the_field(
    service: RunningService, field: str, value: str, violation: str
) -> None:
    request = demo_request()
    setattr(request.business, field, value)
    error = await code_of(service.stub.CreateBusiness(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in field_violations(error)


async def test_bad_identities_name_the_element(service: RunningService) -> None:
    request = demo_request(numbers=["+14155550100", "555-0100"])
    error = await code_of(service.stub.CreateBusiness(request))
    assert field_violations(error).keys() == {"business.whatsapp_numbers[1]"}
    request = demo_request(pnids=["12ab"])
    error = await code_of(service.stub.CreateBusiness(request))
    assert "business.whatsapp_phone_number_ids[0]" in field_violations(error)
    error = await code_of(service.stub.LookupBusiness(business_pb2.LookupBusinessRequest()))
    assert "identity" in field_violations(error)
    error = await code_of(service.stub.GetBusiness(business_pb2.GetBusinessRequest(id="nope")))
    assert "id" in field_violations(error)


async def test_a_bad_value_quoted_in_its_violation_still_comes_back_invalid_argument(
    service: RunningService,
) -> None:
    """(Was a bug: an update_mask path of 20,000 characters, quoted whole in its violation,
    made a status past the client's 16 KiB trailer limit: RESOURCE_EXHAUSTED, naming nothing.)"""
    error = await code_of(
        service.stub.UpdateBusiness(
            business_pb2.UpdateBusinessRequest(
                business=business_pb2.Business(id="a" * 24),
                update_mask=FieldMask(paths=["x" * 20_000]),
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field_violations(error).keys() == {"update_mask"}


async def test_a_request_with_a_flood_of_identities_is_refused_at_once(
    service: RunningService,
) -> None:
    """250,000 distinct phone_number_ids (3 MB, under gRPC's 4 MiB bound): INVALID_ARGUMENT
    naming the list, after reading no more of it than the limit. (Was a bug: the list was
    de-duplicated by a quadratic scan of all of it before the limit was checked, which held
    the replica's event loop, every lookup and health check included, for minutes.)"""
    request = demo_request(pnids=[str(10**9 + i) for i in range(250_000)])
    error = await code_of(service.stub.CreateBusiness(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "business.whatsapp_phone_number_ids" in field_violations(error)
    read = itertools.count()

    def counted(n: int) -> Iterator[str]:
        for i in range(n):
            next(read)
            yield f"+1555{i:07d}"

    with pytest.raises(InvalidArgument):
        validate_numbers(counted(100_000))
    assert next(read) == MAX_IDENTITIES + 1


async def test_a_second_claim_is_already_exists(service: RunningService) -> None:
    first = demo_request()
    await service.stub.CreateBusiness(first)
    clashes = [
        demo_request(subdomain=first.business.subdomain),
        demo_request(pnids=["1", first.business.whatsapp_phone_number_ids[0]]),
        demo_request(numbers=[first.business.whatsapp_numbers[0]]),
    ]
    for clash, field in zip(
        clashes, ("subdomain", "whatsapp_phone_number_ids", "whatsapp_numbers"), strict=True
    ):
        error = await code_of(service.stub.CreateBusiness(clash))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert field in (error.details() or "")


async def test_lookups_find_only_active_whatsapp_enabled_businesses(
    service: RunningService,
) -> None:
    inactive = demo_request(active=False)
    disabled = demo_request(enabled=False)
    for request in (inactive, disabled):
        await service.stub.CreateBusiness(request)
    messages = set()
    for request, reason in ((inactive, "inactive"), (disabled, "whatsapp disabled")):
        pnid = request.business.whatsapp_phone_number_ids[0]
        error = await code_of(
            service.stub.LookupBusiness(business_pb2.LookupBusinessRequest(phone_number_id=pnid))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert reason not in (error.details() or "")
        messages.add(error.details())
        assert await wait_for_log(service, reason)  # the reason is in the log
    unknown = await code_of(
        service.stub.LookupBusiness(business_pb2.LookupBusinessRequest(phone_number_id="9"))
    )
    messages.add(unknown.details())
    assert len(messages) == 1  # inactive, disabled and unknown read the same to a client


async def wait_for_log(service: RunningService, text: str) -> bool:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if text in service.process.log:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_deactivate_and_update_take_effect_at_once(service: RunningService) -> None:
    request = demo_request()
    created = (await service.stub.CreateBusiness(request)).business
    lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
    assert (await service.stub.LookupBusiness(lookup)).business.id == created.id
    assert (await service.stub.LookupBusiness(lookup)).cached
    deactivated = await service.stub.DeactivateBusiness(
        business_pb2.DeactivateBusinessRequest(id=created.id)
    )
    assert not deactivated.business.active
    error = await code_of(service.stub.LookupBusiness(lookup))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    renamed = await service.stub.UpdateBusiness(
        business_pb2.UpdateBusinessRequest(
            business=business_pb2.Business(id=created.id, active=True, subdomain="renamed-one"),
            update_mask=FieldMask(paths=["active", "subdomain"]),
        )
    )
    assert renamed.business.subdomain == "renamed-one" and renamed.business.active
    found = await service.stub.LookupBusiness(
        business_pb2.LookupBusinessRequest(subdomain="renamed-one")
    )
    assert found.business.id == created.id
    error = await code_of(service.stub.LookupBusiness(lookup))  # the old name is gone
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_include_inactive_finds_a_business_lookups_do_not_serve(
    service: RunningService, registry: SecretRegistry
) -> None:
    """The gateway verifies a webhook for an inactive or WhatsApp-disabled business with the
    business's own secret, so a lookup may ask for such a business (``include_inactive``): it is
    found, with what it is, and an identity nobody owns is still NOT_FOUND."""
    off = demo_request(registry, enabled=False)
    created = (await service.stub.CreateBusiness(off)).business
    number = off.business.whatsapp_numbers[0]
    plain = business_pb2.LookupBusinessRequest(whatsapp_number=number, include_credentials=True)
    assert (await code_of(service.stub.LookupBusiness(plain))).code() == grpc.StatusCode.NOT_FOUND
    wider = business_pb2.LookupBusinessRequest(
        whatsapp_number=number, include_credentials=True, include_inactive=True
    )
    found = await service.stub.LookupBusiness(wider)
    assert (found.business.id, found.business.whatsapp_enabled) == (created.id, False)
    assert found.credentials.twilio_auth_token == off.credentials.twilio_auth_token
    assert found.cached  # the plain lookup's load: an inactive business is cached too
    nobody = business_pb2.LookupBusinessRequest(
        whatsapp_number="+15559999999", include_inactive=True
    )
    assert (await code_of(service.stub.LookupBusiness(nobody))).code() == grpc.StatusCode.NOT_FOUND
    # A servable business is answered as before, from the cache.
    on = demo_request(registry)
    await service.stub.CreateBusiness(on)
    wider = business_pb2.LookupBusinessRequest(
        whatsapp_number=on.business.whatsapp_numbers[0], include_inactive=True
    )
    await service.stub.LookupBusiness(wider)
    assert (await service.stub.LookupBusiness(wider)).cached


async def test_access_token_needs_renewal_then_a_new_token(
    service: RunningService, registry: SecretRegistry
) -> None:
    created = (await service.stub.CreateBusiness(demo_request(registry))).business
    marked = await service.stub.UpdateBusiness(
        business_pb2.UpdateBusinessRequest(
            business=business_pb2.Business(
                id=created.id, access_token_status=business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
            ),
            update_mask=FieldMask(paths=["access_token_status"]),
        )
    )
    assert marked.business.access_token_status == business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
    looked_up = await service.stub.LookupBusiness(
        business_pb2.LookupBusinessRequest(phone_number_id=created.whatsapp_phone_number_ids[0])
    )
    assert looked_up.business.access_token_status == business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
    fresh = registry.token("renewed")
    renewed = await service.stub.SetChannelToken(
        business_pb2.SetChannelTokenRequest(
            business_id=created.id,
            secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
            value=fresh,
        )
    )
    assert renewed.business.access_token_status == business_pb2.TOKEN_STATUS_VALID
    got = await service.stub.GetBusiness(
        business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
    )
    assert got.credentials.whatsapp_access_token == fresh

    error = await code_of(
        service.stub.UpdateBusiness(
            business_pb2.UpdateBusinessRequest(
                business=business_pb2.Business(id=created.id),
                update_mask=FieldMask(paths=["id"]),
            )
        )
    )
    assert "update_mask" in field_violations(error)
    error = await code_of(
        service.stub.SetChannelToken(business_pb2.SetChannelTokenRequest(business_id=created.id))
    )
    assert "secret" in field_violations(error)


async def test_a_create_takes_its_token_status_from_its_credentials_only(
    service: RunningService, registry: SecretRegistry
) -> None:
    """As CreateBusinessRequest's comment says (it used to name only id, timestamps and has_*
    flags as ignored, so a status sent along looked as if it were stored)."""
    request = demo_request(registry)
    request.business.access_token_status = business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
    created = (await service.stub.CreateBusiness(request)).business
    assert created.has_access_token
    assert created.access_token_status == business_pb2.TOKEN_STATUS_VALID
    request = demo_request()  # no credentials
    request.business.access_token_status = business_pb2.TOKEN_STATUS_VALID
    created = (await service.stub.CreateBusiness(request)).business
    assert not created.has_access_token
    assert created.access_token_status == business_pb2.TOKEN_STATUS_UNSPECIFIED


async def test_writes_expecting_an_update_time_are_aborted_once_it_changed(
    service: RunningService, registry: SecretRegistry
) -> None:
    created = (await service.stub.CreateBusiness(demo_request(registry))).business
    read_at = created.update_time
    renamed = await service.stub.UpdateBusiness(
        business_pb2.UpdateBusinessRequest(
            business=business_pb2.Business(id=created.id, name="First"),
            update_mask=FieldMask(paths=["name"]),
            expected_update_time=read_at,
        )
    )
    after = renamed.business.update_time
    assert after.ToDatetime() > read_at.ToDatetime()
    stale_token = registry.token("stale")
    # Two writers that read the business before the rename: both refused, with where it is now.
    for stale in (
        service.stub.UpdateBusiness(
            business_pb2.UpdateBusinessRequest(
                business=business_pb2.Business(id=created.id, name="Second"),
                update_mask=FieldMask(paths=["name"]),
                expected_update_time=read_at,
            )
        ),
        service.stub.SetChannelToken(
            business_pb2.SetChannelTokenRequest(
                business_id=created.id,
                secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
                value=stale_token,
                expected_update_time=read_at,
            )
        ),
    ):
        error = await code_of(stale)
        assert error.code() == grpc.StatusCode.ABORTED
        info = error_info(error)
        assert info is not None and info.reason == "UPDATE_TIME_CONFLICT"
        assert info.metadata["current_update_time"] == after.ToJsonString()
    got = await service.stub.GetBusiness(
        business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
    )
    assert got.business.name == "First" and got.business.update_time == after
    assert got.credentials.whatsapp_access_token != stale_token
    fresh = registry.token("fresh")
    stored = await service.stub.SetChannelToken(
        business_pb2.SetChannelTokenRequest(
            business_id=created.id,
            secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
            value=fresh,
            expected_update_time=after,
        )
    )
    assert stored.business.update_time.ToDatetime() > after.ToDatetime()


async def test_every_write_sent_again_with_its_request_id_is_answered_from_memory(
    service: RunningService, registry: SecretRegistry
) -> None:
    """Each write RPC sent twice with one request_id (AIP-155): the second is the first's
    answer, and nothing is written again (update_time unmoved, one business); the id in
    another spelling is the same id; reused with another request it is INVALID_ARGUMENT."""
    create = demo_request(registry)
    create.request_id = "6f1c2a3b-4d5e-4f60-8a71-92b3c4d5e6f7"
    first = await service.stub.CreateBusiness(create)
    create.request_id = "{6F1C2A3B4D5E4F608A7192B3C4D5E6F7}"  # braces, upper case, no hyphens
    assert await service.stub.CreateBusiness(create) == first
    created = first.business
    rename = business_pb2.UpdateBusinessRequest(
        business=business_pb2.Business(id=created.id, name="Once"),
        update_mask=FieldMask(paths=["name"]),
        expected_update_time=created.update_time,
        request_id="0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    )
    token = business_pb2.SetChannelTokenRequest(
        business_id=created.id,
        secret=business_pb2.CHANNEL_SECRET_WEBHOOK_APP_SECRET,
        value=registry.token("once"),
        request_id="1b2c3d4e-5f60-4b7c-8d9e-0f1a2b3c4d5e",
    )
    deactivate = business_pb2.DeactivateBusinessRequest(
        id=created.id, request_id="2c3d4e5f-6071-4c8d-9eaf-1a2b3c4d5e6f"
    )
    for call, request in (
        (service.stub.UpdateBusiness, rename),
        (service.stub.SetChannelToken, token),
        (service.stub.DeactivateBusiness, deactivate),
    ):
        answered = await call(request)
        stored = await service.stub.GetBusiness(business_pb2.GetBusinessRequest(id=created.id))
        assert answered.business == stored.business
        assert await call(request) == answered  # a conditional one is not ABORTED by itself
        # The business id in another case names the same business: the same request.
        shouted = type(request)()
        shouted.CopyFrom(request)
        if isinstance(shouted, business_pb2.UpdateBusinessRequest):
            shouted.business.id = created.id.upper()
        elif isinstance(shouted, business_pb2.SetChannelTokenRequest):
            shouted.business_id = created.id.upper()
        else:
            shouted.id = created.id.upper()
        assert await call(shouted) == answered
        again = await service.stub.GetBusiness(business_pb2.GetBusinessRequest(id=created.id))
        assert again.business.update_time == stored.business.update_time  # no second write
    assert again.business.name == "Once" and again.business.has_webhook_app_secret
    assert not again.business.active
    # Logged with the write's request id, and the call's own (trace) request id kept.
    await service.stub.UpdateBusiness(rename, metadata=((REQUEST_ID_KEY, "trace-once-1"),))

    def remembered() -> list[dict[str, object]]:
        lines = service.process.log_events("request answered from memory")
        return [line for line in lines if line.get("request_id") == "trace-once-1"]

    assert wait_for(remembered, 10)
    assert remembered()[0]["write_request_id"] == rename.request_id
    # Reused with another request (another value; another method): refused, nothing written.
    other_token = business_pb2.SetChannelTokenRequest()
    other_token.CopyFrom(token)
    other_token.value = registry.token("other")
    other_method = business_pb2.DeactivateBusinessRequest(
        id=created.id, request_id=rename.request_id
    )
    for refused in (
        service.stub.SetChannelToken(other_token),
        service.stub.DeactivateBusiness(other_method),
    ):
        error = await code_of(refused)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id" in field_violations(error)
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000", "x" * 300):
        error = await code_of(
            service.stub.DeactivateBusiness(
                business_pb2.DeactivateBusinessRequest(id=created.id, request_id=bad)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id" in field_violations(error)
    final = await service.stub.GetBusiness(business_pb2.GetBusinessRequest(id=created.id))
    assert final.business.update_time == again.business.update_time


async def test_list_pages_through_everything(service: RunningService) -> None:
    for _ in range(3):
        await service.stub.CreateBusiness(demo_request(active=False))
    seen: list[str] = []
    token = ""
    while True:
        page = await service.stub.ListBusinesses(
            business_pb2.ListBusinessesRequest(page_size=2, page_token=token, include_inactive=True)
        )
        seen.extend(b.id for b in page.businesses)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 3
    active_only = await service.stub.ListBusinesses(
        business_pb2.ListBusinessesRequest(page_size=500)
    )
    assert all(b.active for b in active_only.businesses)
    error = await code_of(
        service.stub.ListBusinesses(business_pb2.ListBusinessesRequest(page_token="garbage"))
    )
    assert "page_token" in field_violations(error)


async def test_warm_cache_stats_and_metrics(
    service: RunningService, registry: SecretRegistry
) -> None:
    request = demo_request(registry)
    await service.stub.CreateBusiness(request)
    warmed = await service.stub.WarmCache(business_pb2.WarmCacheRequest())
    assert warmed.loaded >= 1
    before = await service.stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
    answer = await service.stub.LookupBusiness(
        business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
    )
    assert answer.cached  # warmed: the first lookup is already a hit
    after = await service.stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
    assert after.hits == before.hits + 1 and after.size >= 1 and after.capacity == 1000
    assert 0 < after.hit_ratio <= 1

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{service.metrics_port}/metrics")).text
    for name in (
        "business_cache_hits_total",
        "business_cache_misses_total",
        "business_cache_negative_hits_total",
        "business_cache_evictions_total",
        "business_cache_size",
        "business_cache_hit_ratio",
        "business_store_queries_total",
    ):
        assert name in text
    for token in registry.tokens:
        assert token not in text


def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.business.cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("app_env", ["production", "test"])
def test_refuses_to_start_without_encryption_secret(tmp_path: Path, app_env: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "APP_ENV": app_env,
        "BUSINESS_PORT": "0",
        "BUSINESS_METRICS_PORT": "0",
        "BUSINESS_DB_PATH": str(tmp_path / "b.db"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.business.server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ENCRYPTION_SECRET" in done.stderr


@pytest.mark.parametrize("invalidation", [False, True], ids=["alone", "with-redis"])
async def test_warmup_cache_loads_before_serving(
    registry: SecretRegistry, tmp_path: Path, invalidation: bool, request: pytest.FixtureRequest
) -> None:
    """With REDIS_URL too: the first subscription clears the cache, so the warm-up waits for
    it rather than be cleared after it."""
    redis: dict[str, str] = {}
    if invalidation:
        redis = {
            "REDIS_URL": request.getfixturevalue("valkey").url,
            "BUSINESS_INVALIDATION_CHANNEL": f"test:business:invalidate:{tmp_path.name}",
        }
    db = tmp_path / "business.db"
    env = {"BUSINESS_DB_PATH": str(db), "ENCRYPTION_SECRET": TEST_SECRET, "PATH": "/usr/bin:/bin"}
    for i in range(3):
        done = await asyncio.to_thread(
            run_cli, env, "add", "--name", f"W{i}", "--subdomain", f"warm-{i}",
            "--phone-number-id", f"5000{i}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    running = await start_service(registry, "business-warmup", db, WARMUP_CACHE="true", **redis)
    try:
        stats = await running.stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
        assert stats.size == 3  # SERVING came only after the warm-up
        answer = await running.stub.LookupBusiness(
            business_pb2.LookupBusinessRequest(phone_number_id="50001")
        )
        assert answer.cached
    finally:
        await running.close()


async def test_cross_replica_invalidation_through_valkey(
    registry: SecretRegistry, tmp_path: Path, valkey: Valkey
) -> None:
    """Two replicas on one store and one Valkey: a write on A (or the CLI) empties B's entry."""
    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    env = {"REDIS_URL": valkey.url, "BUSINESS_INVALIDATION_CHANNEL": channel}
    a = await start_service(registry, "replica-a", db, **env)
    b = await start_service(registry, "replica-b", db, **env)
    try:
        await changes_reach(b, through=a, db=db, env=env)
    finally:
        await a.close()
        await b.close()


async def changes_reach(
    replica: RunningService, *, through: RunningService, db: Path, env: dict[str, str]
) -> None:
    """A business ``replica`` caches is dropped there when ``through`` deactivates it, reloaded
    when ``through`` reactivates it, and dropped again when the operator CLI (with ``env``)
    deactivates it: each change reaches ``replica`` well before its cache's TTL (300 s)."""
    request = demo_request()
    created = (await through.stub.CreateBusiness(request)).business
    lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
    await replica.stub.LookupBusiness(lookup)
    assert (await replica.stub.LookupBusiness(lookup)).cached

    await through.stub.DeactivateBusiness(business_pb2.DeactivateBusinessRequest(id=created.id))
    assert await eventually_not_found(replica, lookup)

    await through.stub.UpdateBusiness(
        business_pb2.UpdateBusinessRequest(
            business=business_pb2.Business(id=created.id, active=True),
            update_mask=FieldMask(paths=["active"]),
        )
    )
    assert await eventually_cached(replica, lookup)  # the reactivation reached it, reloaded
    cli_env = {
        "PATH": "/usr/bin:/bin",
        "BUSINESS_DB_PATH": str(db),
        "ENCRYPTION_SECRET": TEST_SECRET,
        **env,
    }
    done = await asyncio.to_thread(run_cli, cli_env, "deactivate", created.id)
    assert done.returncode == 0, done.stderr
    assert await eventually_not_found(replica, lookup)


async def test_changes_are_published_where_the_gateway_listens(
    registry: SecretRegistry, tmp_path: Path, valkey: Valkey, fresh_valkey: Valkey
) -> None:
    """With `GATEWAY_REDIS_URL` (the gateway's queue on a Redis of its own, an optional key of
    `parley-secrets`), the gateway's workers subscribe there: the service and the CLI publish
    there, not on `REDIS_URL`, and the replicas hear each other there."""
    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    env = {
        "REDIS_URL": valkey.url,
        "GATEWAY_REDIS_URL": fresh_valkey.url,
        "BUSINESS_INVALIDATION_CHANNEL": channel,
    }
    listener = fresh_valkey.client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)

    def heard() -> bool:
        return wait_for(lambda: listener.get_message() is not None, 10.0)

    a = await start_service(registry, "replica-a", db, **env)
    b = await start_service(registry, "replica-b", db, **env)
    try:
        request = demo_request()
        created = (await a.stub.CreateBusiness(request)).business
        assert await asyncio.to_thread(heard)
        lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
        await b.stub.LookupBusiness(lookup)
        assert (await b.stub.LookupBusiness(lookup)).cached
        cli_env = {
            "PATH": "/usr/bin:/bin",
            "BUSINESS_DB_PATH": str(db),
            "ENCRYPTION_SECRET": TEST_SECRET,
            **env,
        }
        done = await asyncio.to_thread(run_cli, cli_env, "deactivate", created.id)
        assert done.returncode == 0, done.stderr
        assert await asyncio.to_thread(heard)
        assert await eventually_not_found(b, lookup)
    finally:
        listener.close()
        await a.close()
        await b.close()


async def test_replicas_of_the_release_before_hear_changes_while_the_urls_differ(
    registry: SecretRegistry,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    valkey: Valkey,
    fresh_valkey: Valkey,
) -> None:
    """A rolling upgrade from a release that published and listened on `REDIS_URL` alone, with
    `GATEWAY_REDIS_URL` set to another Redis: while the replicas of that release still serve,
    a change made through a new replica or the new CLI must reach their caches too, not wait
    for their TTL (300 s)."""
    root = previous_release(tmp_path_factory.mktemp("previous-release"))
    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    env = {
        "REDIS_URL": valkey.url,
        "GATEWAY_REDIS_URL": fresh_valkey.url,
        "BUSINESS_INVALIDATION_CHANNEL": channel,
    }
    old = await start_service(
        registry, "replica-previous", db, root=root, PYTHONPATH=str(root), **env
    )
    new = await start_service(registry, "replica-new", db, **env)
    try:
        await changes_reach(old, through=new, db=db, env=env)
    finally:
        await old.close()
        await new.close()


async def test_a_key_rotation_rolled_as_documented_reads_every_value_on_every_replica(
    registry: SecretRegistry, tmp_path: Path
) -> None:
    """docs/business.md's *Rotating the key*: while replicas roll from one configuration to the
    next, a token stored through a replica of either must be readable by the other. A replica
    that does not know the new secret yet cannot read what one of the new configuration
    stores, so the new secret goes to ENCRYPTION_SECRET_PREVIOUS everywhere first."""
    db = tmp_path / "business.db"
    new_secret = "the-next-encryption-secret-0123456789"
    before = await start_service(registry, "keys-before", db)
    staged = await start_service(registry, "keys-staged", db, ENCRYPTION_SECRET_PREVIOUS=new_secret)
    swapped = await start_service(
        registry,
        "keys-swapped",
        db,
        ENCRYPTION_SECRET=new_secret,
        ENCRYPTION_SECRET_PREVIOUS=TEST_SECRET,
    )
    try:
        request = demo_request(registry)
        created = (await before.stub.CreateBusiness(request)).business
        token = registry.token("rotation")
        await swapped.stub.SetChannelToken(
            business_pb2.SetChannelTokenRequest(
                business_id=created.id,
                secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
                value=token,
            )
        )
        get = business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
        # The first step's configuration beside the second's: each reads the other's values.
        for replica in (staged, swapped):
            credentials = (await replica.stub.GetBusiness(get)).credentials
            assert credentials.whatsapp_access_token == token
            assert credentials.twilio_auth_token == request.credentials.twilio_auth_token
        # Why the first step: a replica without the new secret cannot read the new value.
        error = await code_of(before.stub.GetBusiness(get))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert token not in (error.details() or "")
    finally:
        for replica in (before, staged, swapped):
            await replica.close()


async def eventually_not_found(
    service: RunningService, lookup: business_pb2.LookupBusinessRequest
) -> bool:
    """NOT_FOUND within 5 s: far below the 300 s TTL, so only an invalidation explains it."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            await service.stub.LookupBusiness(lookup)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        await asyncio.sleep(0.05)
    return False


async def eventually_cached(
    service: RunningService, lookup: business_pb2.LookupBusinessRequest
) -> bool:
    """Found, from its cache, within 5 s (NOT_FOUND meanwhile: a change still on its way)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            if (await service.stub.LookupBusiness(lookup)).cached:
                return True
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.05)
    return False


async def test_service_on_mongodb(registry: SecretRegistry, tmp_path: Path, mongo_uri: str) -> None:
    """The same service wired to MongoDB through MONGODB_URI (real, or the stand-in)."""
    database = fresh_database()
    running = await start_service(
        registry, "business-mongo", tmp_path / "unused.db",
        MONGODB_URI=mongo_uri, MONGODB_DATABASE=database, MONGODB_MIN_POOL_SIZE="1",
    )  # fmt: skip
    try:
        request = demo_request(registry)
        created = (await running.stub.CreateBusiness(request)).business
        found = await running.stub.LookupBusiness(
            business_pb2.LookupBusinessRequest(
                phone_number_id=request.business.whatsapp_phone_number_ids[0],
                include_credentials=True,
            )
        )
        assert found.business.id == created.id
        assert found.credentials.whatsapp_access_token == request.credentials.whatsapp_access_token
        error = await code_of(
            running.stub.CreateBusiness(demo_request(subdomain=request.business.subdomain))
        )
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert not (tmp_path / "unused.db").exists()
        assert f"/{database}.businesses" in running.process.log  # the store it announced
    finally:
        await running.close()


async def test_not_serving_and_unavailable_while_mongodb_is_unreachable(
    registry: SecretRegistry, tmp_path: Path
) -> None:
    """No datastore: health says NOT_SERVING (with the reason logged) and RPCs are UNAVAILABLE."""
    port = free_port()
    process = ServiceProcess(
        "services.business.server",
        {
            "BUSINESS_PORT": str(port),
            "BUSINESS_METRICS_PORT": "0",
            "ENCRYPTION_SECRET": TEST_SECRET,
            "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/",  # nothing listens there
            "MONGODB_TIMEOUT_MS": "300",
        },
        registry.log_dir / "business-no-mongo.log",
    )
    process.env.pop("REDIS_URL", None)
    process.start()
    address = f"127.0.0.1:{port}"
    try:
        assert await asyncio.to_thread(
            wait_for, lambda: "MongoDB unavailable" in process.log, 20.0
        ), process.log[-2000:]
        assert check(address, "parley.business.v1.BusinessService", 1.0) == "NOT_SERVING"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = business_pb2_grpc.BusinessServiceStub(channel)
            for n in range(3):
                error = await code_of(
                    stub.LookupBusiness(business_pb2.LookupBusinessRequest(phone_number_id=str(n)))
                )
                assert error.code() == grpc.StatusCode.UNAVAILABLE
        # Every lookup failed on the store: one warning (the repeats are debug lines).
        warned = [e for e in process.log_events("business store error") if e["level"] != "debug"]
        assert [(e["level"], e["repeats_logged_at"]) for e in warned] == [("warning", "debug")]
    finally:
        await asyncio.to_thread(process.stop)


async def test_a_replica_that_lost_its_subscription_clears_its_cache(
    registry: SecretRegistry, tmp_path: Path, fresh_valkey: Valkey
) -> None:
    """Invalidations published while a replica was cut off are lost: it forgets everything."""
    running = await start_service(
        registry, "business-resubscribe", tmp_path / "business.db", REDIS_URL=fresh_valkey.url
    )
    try:
        request = demo_request()
        await running.stub.CreateBusiness(request)
        lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
        await running.stub.LookupBusiness(lookup)
        stats = await running.stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
        assert stats.size == 1
        await asyncio.to_thread(fresh_valkey.stop)
        assert await asyncio.to_thread(
            wait_for, lambda: "invalidation channel lost" in running.process.log, 20.0
        )
        assert (await running.stub.LookupBusiness(lookup)).cached  # still serving meanwhile
        await asyncio.to_thread(fresh_valkey.start)
        assert await asyncio.to_thread(
            wait_for, lambda: "re-subscribed" in running.process.log, 20.0
        )
        stats = await running.stub.GetCacheStats(business_pb2.GetCacheStatsRequest())
        assert stats.size == 0
    finally:
        await running.close()


async def test_a_warm_up_longer_than_a_readiness_check_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime gives a readiness check 5 s. A start-up cache load that takes longer (a large
    BUSINESS_CACHE_SIZE) used to run inside the check: cancelled and started over at every
    check, it never ended, and the service never turned SERVING."""
    from pydantic import SecretStr

    from services.business.core import BusinessCore
    from services.business.server import WarmingUp, build, make_cipher
    from services.business.settings import BusinessSettings

    loads: list[int] = []

    async def slow_warm(self: BusinessCore, limit: int) -> int:
        loads.append(limit)
        await asyncio.sleep(0.5)  # five times what the checks below allow
        return 7

    monkeypatch.setattr(BusinessCore, "warm", slow_warm)
    settings = BusinessSettings(
        business_db_path=str(tmp_path / "business.db"),
        encryption_secret=SecretStr(TEST_SECRET),
        warmup_cache=True,
        redis_url=None,
        mongodb_uri=None,
    )
    service = build(settings, make_cipher(settings))
    ready = False
    try:
        for _ in range(100):
            try:
                async with asyncio.timeout(0.1):  # the runtime's limit, scaled down
                    await service.readiness()
            except (TimeoutError, WarmingUp):
                await asyncio.sleep(0.05)
                continue
            ready = True
            break
        assert ready and loads == [settings.business_cache_size]
    finally:
        assert service.on_stop is not None
        await service.on_stop()


async def test_mongodb_down_at_start_with_default_timeouts_says_why_then_recovers(
    registry: SecretRegistry, tmp_path: Path
) -> None:
    """MONGODB_TIMEOUT_MS defaults to 5000, as long as the runtime gives one readiness check:
    the check used to be cut off first, so the only reason ever logged was "the readiness check
    took over 5 s", never that MongoDB could not be reached. Once MongoDB answers on that
    address, the same process turns SERVING without a restart."""
    mongo_port, port = free_port(), free_port()
    process = ServiceProcess(
        "services.business.server",
        {
            "BUSINESS_PORT": str(port),
            "BUSINESS_METRICS_PORT": "0",
            "ENCRYPTION_SECRET": TEST_SECRET,
            "MONGODB_URI": f"mongodb://127.0.0.1:{mongo_port}/",  # nothing listens there yet
            "MONGODB_DATABASE": fresh_database(),
            "READINESS_INTERVAL_SECONDS": "0.5",
        },
        registry.log_dir / "business-mongo-late.log",
    )
    for var in ("REDIS_URL", "MONGODB_TIMEOUT_MS", "WARMUP_CACHE"):
        process.env.pop(var, None)
    process.start()
    address = f"127.0.0.1:{port}"
    mongo: subprocess.Popen[bytes] | None = None
    try:
        assert await asyncio.to_thread(wait_for, lambda: "not ready" in process.log, 20.0), (
            process.log[-2000:]
        )
        reasons = [e["reason"] for e in process.log_events("not ready")]
        assert reasons[0] == "MongoDB unavailable: ServerSelectionTimeoutError", reasons
        assert check(address, "parley.business.v1.BusinessService", 1.0) == "NOT_SERVING"

        mongo = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(mongo_port),
             "--storage-path", ":memory:", "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert await asyncio.to_thread(
            wait_for,
            lambda: check(address, "parley.business.v1.BusinessService", 1.0) == "SERVING",
            40.0,
            0.5,
        ), process.log[-2000:]
    finally:
        await asyncio.to_thread(process.stop)
        if mongo is not None:
            mongo.terminate()
            mongo.wait(timeout=10)


class HeldLink:
    """A TCP link to Valkey whose server-to-client direction can be held: a subscriber behind it
    gets published messages late, as a busy or distant replica does. Its SUBSCRIBE commands can
    be held too (``subscribing``): a subscriber that sent one is not yet subscribed. ``cut``
    drops every connection, as a failover or a network device resetting them does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = asyncio.Event()
        self.open.set()
        self.subscribing = asyncio.Event()
        self.subscribing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{self.port}/0"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await src.read(65536):
                    if held:
                        await self.open.wait()
                    elif b"SUBSCRIBE" in data.upper():
                        await self.subscribing.wait()
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(
            pump(reader, up_writer, False), pump(up_reader, writer, True), return_exceptions=True
        )


async def test_a_gateway_never_keeps_an_old_token_reloaded_from_a_lagging_replica(
    registry: SecretRegistry, tmp_path: Path, valkey: Valkey
) -> None:
    """Two business replicas and a gateway worker's cache, all on one invalidation channel. A
    token set through replica A reaches the worker and replica B at about the same time; the
    worker drops its entry and its next miss may ask B before B has applied the same message:
    B answers from its cache with the old token. The worker used to keep that answer for its
    whole TTL (30 s by default, 300 s here), sending with the old token all along."""
    from services.gateway.businesses import BusinessDirectory
    from services.gateway.settings import GatewaySettings

    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    link = HeldLink(valkey.port)
    a = await start_service(
        registry, "replica-a", db, REDIS_URL=valkey.url, BUSINESS_INVALIDATION_CHANNEL=channel
    )
    b = await start_service(
        registry, "replica-b", db, REDIS_URL=await link.start(),
        BUSINESS_INVALIDATION_CHANNEL=channel,
    )  # fmt: skip
    settings = GatewaySettings(
        redis_url=valkey.url,
        business_invalidation_channel=channel,
        gateway_business_cache_ttl_seconds=300,
    )
    directory = BusinessDirectory(settings, b.stub)  # the worker reaches replica B
    await directory.start()
    assert directory.bus is not None and directory.cache is not None
    try:
        async with asyncio.timeout(10):
            await directory.bus.subscribed.wait()
        request = demo_request(registry)
        pnid = request.business.whatsapp_phone_number_ids[0]
        created = (await a.stub.CreateBusiness(request)).business
        old_token = request.credentials.whatsapp_access_token

        async def token_seen() -> str:
            known = await directory.lookup("cloud_api", pnid)
            assert known is not None
            return known.credentials.whatsapp_access_token

        assert await token_seen() == old_token  # B and the worker both cache it now

        link.open.clear()  # B hears of the next change late
        epoch = directory.cache.epoch
        new_token = registry.token("rotated")
        await a.stub.SetChannelToken(
            business_pb2.SetChannelTokenRequest(
                business_id=created.id,
                secret=business_pb2.CHANNEL_SECRET_WHATSAPP_ACCESS_TOKEN,
                value=new_token,
            )
        )
        assert await asyncio.to_thread(wait_for, lambda: directory.cache.epoch != epoch, 10.0)
        assert await token_seen() == old_token  # from B, which has not heard yet
        link.open.set()

        async def b_has_it() -> bool:
            answer = await b.stub.LookupBusiness(
                business_pb2.LookupBusinessRequest(phone_number_id=pnid, include_credentials=True)
            )
            return answer.credentials.whatsapp_access_token == new_token

        deadline = time.monotonic() + 10
        while not await b_has_it():
            assert time.monotonic() < deadline, "replica B never applied the invalidation"
            await asyncio.sleep(0.05)
        # Seconds, not the TTL: the worker stops using the old token soon after B caught up.
        deadline = time.monotonic() + 5
        while (seen := await token_seen()) != new_token and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert seen == new_token
    finally:
        await directory.stop()
        await a.close()
        await b.close()
        await link.stop()


async def test_a_subscription_restored_by_the_redis_client_itself_still_clears_the_cache(
    registry: SecretRegistry, tmp_path: Path, valkey: Valkey
) -> None:
    """redis-py re-establishes a dropped pub/sub connection and re-subscribes on its own when
    Redis answers at once (a connection reset by a failover or a network device, a health-check
    PING that timed out): what was published in between is lost all the same. The replica used
    to go on as if nothing had happened and serve a deactivated business for its whole TTL."""
    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    link = HeldLink(valkey.port)
    a = await start_service(
        registry, "replica-a", db, REDIS_URL=valkey.url, BUSINESS_INVALIDATION_CHANNEL=channel
    )
    b = await start_service(
        registry, "replica-b", db, REDIS_URL=await link.start(),
        BUSINESS_INVALIDATION_CHANNEL=channel,
    )  # fmt: skip
    admin = valkey.client()

    def subscribers() -> int:
        return int(admin.pubsub_numsub(channel)[0][1])

    try:
        assert await asyncio.to_thread(wait_for, lambda: subscribers() == 2, 10.0)
        request = demo_request()
        created = (await a.stub.CreateBusiness(request)).business
        lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
        await b.stub.LookupBusiness(lookup)
        assert (await b.stub.LookupBusiness(lookup)).cached

        link.subscribing.clear()  # B's next SUBSCRIBE waits: it is not subscribed meanwhile
        link.cut()
        assert await asyncio.to_thread(wait_for, lambda: subscribers() == 1, 10.0)
        await a.stub.DeactivateBusiness(business_pb2.DeactivateBusinessRequest(id=created.id))
        link.subscribing.set()
        assert await eventually_not_found(b, lookup)
    finally:
        admin.close()
        await a.close()
        await b.close()
        await link.stop()


async def test_what_a_replica_cached_before_its_first_subscription_is_dropped_once_subscribed(
    registry: SecretRegistry, tmp_path: Path, valkey: Valkey
) -> None:
    """A replica serves as soon as its store answers, and its first SUBSCRIBE may still be on
    its way to a slow or distant Redis: a change published meanwhile never reaches it. The
    cache used to be cleared only on later subscriptions (and as soon as SUBSCRIBE was sent, not
    once Redis had taken it), so what the replica cached meanwhile stayed for its whole TTL."""
    db = tmp_path / "business.db"
    channel = f"test:business:invalidate:{tmp_path.name}"
    link = HeldLink(valkey.port)
    link.subscribing.clear()  # B's first SUBSCRIBE waits
    a = await start_service(
        registry, "replica-a", db, REDIS_URL=valkey.url, BUSINESS_INVALIDATION_CHANNEL=channel
    )
    b = await start_service(
        registry, "replica-b", db, REDIS_URL=await link.start(),
        BUSINESS_INVALIDATION_CHANNEL=channel,
    )  # fmt: skip
    admin = valkey.client()
    try:
        request = demo_request()
        created = (await a.stub.CreateBusiness(request)).business
        lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
        await b.stub.LookupBusiness(lookup)
        assert (await b.stub.LookupBusiness(lookup)).cached
        assert admin.pubsub_numsub(channel)[0][1] == 1  # A only
        await a.stub.DeactivateBusiness(business_pb2.DeactivateBusinessRequest(id=created.id))
        link.subscribing.set()
        assert await eventually_not_found(b, lookup)
    finally:
        admin.close()
        await a.close()
        await b.close()
        await link.stop()


async def test_a_write_whose_answer_from_mongodb_was_lost_still_drops_the_cached_business(
    registry: SecretRegistry, tmp_path: Path
) -> None:
    """MongoDB applied the deactivation and its answer was lost (the connection dropped with no
    retryable write to repeat it: a standalone server, or `retryWrites=false`; or a write
    concern that timed out after the primary had it): the call is UNAVAILABLE, and the replica
    used to keep serving the business from its cache, active, for its whole TTL (and every
    other replica too: nothing was published). The stand-in always (a proxy in front of a real
    deployment would need its credentials and topology)."""
    async with contextlib.AsyncExitStack() as stack:
        uri = stack.enter_context(secantusdb(registry.log_dir / "secantusdb-cut.log"))
        cutter = ReplyCutter(uri.removeprefix("mongodb://").rstrip("/")).start()
        stack.callback(cutter.stop)
        # directConnection: the driver keeps to the proxy, not the address the server gives.
        running = await start_service(
            registry, "business-mongo-cut", tmp_path / "unused.db",
            MONGODB_URI=f"mongodb://{cutter.address}/?directConnection=true&retryWrites=false",
            MONGODB_DATABASE=fresh_database(),
            MONGODB_MIN_POOL_SIZE="1",
        )  # fmt: skip
        stack.push_async_callback(running.close)
        request = demo_request()
        created = (await running.stub.CreateBusiness(request)).business
        lookup = business_pb2.LookupBusinessRequest(subdomain=request.business.subdomain)
        await running.stub.LookupBusiness(lookup)
        assert (await running.stub.LookupBusiness(lookup)).cached

        cutter.cut_reply_to(b"findAndModify")
        error = await code_of(
            running.stub.DeactivateBusiness(business_pb2.DeactivateBusinessRequest(id=created.id))
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE and cutter.cuts == 1
        stored = await running.stub.GetBusiness(business_pb2.GetBusinessRequest(id=created.id))
        assert not stored.business.active  # applied all the same
        assert await eventually_not_found(running, lookup)
