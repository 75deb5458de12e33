"""One contract suite for every business store: SQLite, and MongoDB (real or the stand-in).

What the SecantusDB stand-in cannot check (run with MONGODB_URI against a real server for these):
a real mongod's query planner actually choosing the indexes, replica-set behaviour (elections,
write concerns, retryable writes across a failover), authentication and TLS to Atlas, and
performance under a real WiredTiger deployment.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bson import Binary, ObjectId

from services.business.core import BusinessCore, RequestId
from services.business.crypto import TokenCipher
from services.business.model import BusinessRecord, TokenStatus, utcnow
from services.business.mongo_store import MongoStore
from services.business.sqlite_store import SqliteStore
from services.business.store import BusinessStore, RememberedRequest, UpdateTimeConflict
from services.common.business_keys import KeyKind, identity_key
from services.common.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument
from services.common.tasks import wait_shielded
from tests.business.conftest import SecretRegistry, create_business, when_writer_starts

_n = itertools.count(1)
Apply = Callable[[], Awaitable[BusinessRecord]]


def record(
    *,
    subdomain: str | None = None,
    pnids: tuple[str, ...] | None = None,
    numbers: tuple[str, ...] | None = None,
    active: bool = True,
    enabled: bool = True,
    secrets: dict[str, str] | None = None,
) -> BusinessRecord:
    n = next(_n)
    now = utcnow()
    return BusinessRecord(
        id=str(ObjectId()),
        name=f"Business {n}",
        subdomain=subdomain or f"biz-{n}",
        phone_number_ids=pnids if pnids is not None else (f"2000000000{n:05d}",),
        numbers=numbers if numbers is not None else (f"+1555200{n:04d}",),
        whatsapp_enabled=enabled,
        active=active,
        time_zone="Europe/Madrid",
        locale="es-ES",
        access_token_status=TokenStatus.NONE,
        create_time=now,
        update_time=now,
        secrets=secrets or {},
    )


async def test_create_then_get_round_trips_every_field(store: BusinessStore) -> None:
    original = record(
        pnids=("111", "222"),
        numbers=("+14155550001", "+14155550002"),
        secrets={"whatsapp_access_token": "enc:v1:abc:xyz"},
    ).with_changes(access_token_status=TokenStatus.VALID)
    await store.create(original)
    assert await store.get(original.id) == original
    assert await store.get(str(ObjectId())) is None


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (KeyKind.PHONE_NUMBER_ID, "222"),
        (KeyKind.WHATSAPP_NUMBER, "+14155550002"),
        (KeyKind.SUBDOMAIN, "lookup-me"),
    ],
)
async def test_find_by_each_identity_counts_one_query(
    store: BusinessStore, kind: KeyKind, value: str
) -> None:
    original = record(
        subdomain="lookup-me", pnids=("111", "222"), numbers=("+14155550001", "+14155550002")
    )
    await store.create(original)
    before = store.queries
    assert await store.find(kind, value) == original
    assert (
        await store.find(kind, "999" if kind is KeyKind.PHONE_NUMBER_ID else "+19995550000") is None
    )
    assert store.queries - before == 2


async def test_find_returns_inactive_businesses_for_the_caller_to_judge(
    store: BusinessStore,
) -> None:
    inactive = record(active=False)
    await store.create(inactive)
    found = await store.find(KeyKind.PHONE_NUMBER_ID, inactive.phone_number_ids[0])
    assert found is not None and not found.active


@pytest.mark.parametrize(
    ("field", "clash"),
    [
        ("subdomain", {"subdomain": "taken"}),
        ("whatsapp_phone_number_ids", {"pnids": ("5550", "777")}),
        ("whatsapp_numbers", {"numbers": ("+14155550777",)}),
    ],
)
async def test_a_second_claim_is_already_exists_naming_the_field(
    store: BusinessStore, field: str, clash: dict[str, object]
) -> None:
    await store.create(record(subdomain="taken", pnids=("777",), numbers=("+14155550777",)))
    second = record(**clash)  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists) as raised:
        await store.create(second)
    assert raised.value.message.startswith(f"business.{field}")
    assert await store.get(second.id) is None  # nothing of the failed claim was stored
    assert await store.find(KeyKind.PHONE_NUMBER_ID, "5550") is None


async def test_businesses_without_identities_do_not_collide(store: BusinessStore) -> None:
    await store.create(record(pnids=(), numbers=()))
    await store.create(record(pnids=(), numbers=()))
    listed = await store.list(after_id=None, limit=10, include_inactive=True, servable_only=False)
    assert len(listed) == 2


async def test_update_moves_identities_and_keeps_the_rules(store: BusinessStore) -> None:
    first = record(pnids=("100",), numbers=("+14155550100",))
    other = record(pnids=("200",))
    await store.create(first)
    await store.create(other)
    later = first.update_time + timedelta(seconds=1)
    updated = await store.update(
        first.id,
        {"phone_number_ids": ("101",), "name": "Renamed", "update_time": later},
        {"whatsapp_access_token": "enc:v1:k:v"},
    )
    assert updated is not None
    assert (updated.name, updated.phone_number_ids, updated.update_time) == (
        "Renamed",
        ("101",),
        later,
    )
    assert updated.secrets == {"whatsapp_access_token": "enc:v1:k:v"}
    assert await store.find(KeyKind.PHONE_NUMBER_ID, "100") is None
    assert (await store.find(KeyKind.PHONE_NUMBER_ID, "101")) == updated

    with pytest.raises(AlreadyExists, match="phone_number_id"):
        await store.update(other.id, {"phone_number_ids": ("101",), "update_time": later})
    assert (await store.find(KeyKind.PHONE_NUMBER_ID, "200")) == other  # unchanged

    cleared = await store.update(first.id, {"update_time": later}, {"whatsapp_access_token": None})
    assert cleared is not None and cleared.secrets == {}
    assert await store.update(str(ObjectId()), {"update_time": later}) is None


async def test_list_pages_by_id_and_filters(store: BusinessStore) -> None:
    made = [record(), record(active=False), record(enabled=False), record()]
    for r in made:
        await store.create(r)
    ids = sorted(r.id for r in made)
    everything = await store.list(
        after_id=None, limit=10, include_inactive=True, servable_only=False
    )
    assert [r.id for r in everything] == ids
    page = await store.list(after_id=ids[1], limit=1, include_inactive=True, servable_only=False)
    assert [r.id for r in page] == [ids[2]]
    active = await store.list(after_id=None, limit=10, include_inactive=False, servable_only=False)
    assert {r.id for r in active} == {made[0].id, made[2].id, made[3].id}
    servable = await store.list(after_id=None, limit=10, include_inactive=False, servable_only=True)
    assert {r.id for r in servable} == {made[0].id, made[3].id}


async def test_replace_secret_is_compare_and_set(store: BusinessStore) -> None:
    original = record(secrets={"twilio_auth_token": "old"})
    await store.create(original)
    assert not await store.replace_secret(original.id, "twilio_auth_token", "stale", "new")
    assert await store.replace_secret(original.id, "twilio_auth_token", "old", "new")
    got = await store.get(original.id)
    assert got is not None and got.secrets == {"twilio_auth_token": "new"}


async def test_an_update_expecting_an_update_time_applies_only_while_it_is_current(
    store: BusinessStore,
) -> None:
    original = record()
    await store.create(original)
    later = original.update_time + timedelta(milliseconds=1)
    changed = await store.update(
        original.id,
        {"name": "First", "update_time": later},
        expected_update_time=original.update_time,
    )
    assert changed is not None and changed.name == "First" and changed.update_time == later
    # A second writer that read the business before the first change: refused, told the
    # update_time it would have to have read, and nothing of its change is stored.
    with pytest.raises(UpdateTimeConflict) as conflict:
        await store.update(
            original.id,
            {"name": "Second", "update_time": later + timedelta(milliseconds=1)},
            {"whatsapp_access_token": "stale"},
            expected_update_time=original.update_time,
        )
    assert conflict.value.current == later
    got = await store.get(original.id)
    assert got is not None and got.name == "First" and got.secrets == {}
    missing = str(ObjectId())
    assert await store.update(missing, {"update_time": later}, expected_update_time=later) is None


async def test_every_update_moves_update_time_past_the_stored_one(store: BusinessStore) -> None:
    """Two writers that read the same version in the same millisecond compute the same next
    update_time: the store still gives the second write a later one, so a conditional writer
    that read between them sees it changed."""
    original = record()
    await store.create(original)
    same = original.update_time + timedelta(milliseconds=1)
    first = await store.update(original.id, {"name": "First", "update_time": same})
    assert first is not None and first.update_time == same
    second = await store.update(original.id, {"name": "Second", "update_time": same})
    assert second is not None and second.update_time > same
    with pytest.raises(UpdateTimeConflict) as conflict:
        await store.update(
            original.id,
            {"name": "Stale", "update_time": same + timedelta(milliseconds=1)},
            expected_update_time=first.update_time,
        )
    assert conflict.value.current == second.update_time
    got = await store.get(original.id)
    assert got is not None and got.name == "Second" and got.update_time == second.update_time


async def test_indexes_exist_and_open_is_idempotent(
    store: BusinessStore, request: pytest.FixtureRequest
) -> None:
    await store.open()  # a second start-up must not fail on existing indexes
    if isinstance(store, MongoStore):
        indexes = {i["name"]: i async for i in await store.collection.list_indexes()}
        assert dict(indexes["webhook_lookup_idx"]["key"]) == {
            "whatsappPhoneNumberIds": 1,
            "whatsappEnabled": 1,
            "isActive": 1,
        }
        assert dict(indexes["subdomain_lookup_idx"]["key"]) == {"subDomain": 1, "isActive": 1}
        for name in ("subdomain_unique", "phone_number_id_unique", "whatsapp_number_unique"):
            assert indexes[name]["unique"] is True
        expiry = {i["name"]: i async for i in await store.requests.list_indexes()}
        assert expiry["request_expiry_ttl"]["expireAfterSeconds"] == 0
        # A second client re-running the index creation is a no-op too.
        again = MongoStore(
            request.getfixturevalue("mongo_uri"), database=store.database, min_pool_size=0
        )
        await again.open()
        await again.close()
    else:
        assert isinstance(store, SqliteStore)
        assert {
            "subdomain_unique",
            "subdomain_lookup_idx",
            "servable_idx",
            "identities_business_idx",
            "requests_expiry_idx",
        } <= (await store.index_names())
        assert await store.journal_mode() == "wal"


async def test_mongo_documents_use_the_guides_field_names(store: BusinessStore) -> None:
    r = record(secrets={"whatsapp_access_token": "enc:v1:k:v"})
    await store.create(r)
    if not isinstance(store, MongoStore):
        assert await store.get(r.id) == r
        return
    doc = await store.collection.find_one({"_id": ObjectId(r.id)})
    assert doc is not None
    assert {
        "name",
        "subDomain",
        "whatsappPhoneNumberIds",
        "whatsappNumbers",
        "whatsappEnabled",
        "isActive",
        "timeZone",
        "locale",
        "whatsappAccessToken",
        "createdAt",
        "updatedAt",
    } <= set(doc)


async def test_no_plaintext_token_at_rest(
    store: BusinessStore, core: BusinessCore, registry: SecretRegistry, tmp_path: Path
) -> None:
    token, auth = registry.token("access"), registry.token("twilio")
    created = await create_business(
        core,
        "secretive",
        "31337",
        secrets={"whatsapp_access_token": token, "twilio_auth_token": auth},
    )
    await core.set_secret(created.id, "webhook_app_secret", registry.token("appsecret"))
    dump = await store.raw_dump()
    assert "enc:v1:" in dump
    for plain in registry.tokens:
        assert plain not in dump
    if isinstance(store, SqliteStore):  # the bytes on disk, WAL included
        raw = await asyncio.to_thread(
            lambda: b"".join(p.read_bytes() for p in tmp_path.glob("business.db*"))
        )
        assert b"enc:v1:" in raw
        for plain in registry.tokens:
            assert plain.encode() not in raw
    # ... and the service can still read them back.
    got = await core.get(created.id)
    assert core.credentials(got)["whatsapp_access_token"] == token
    assert token not in repr(got) and token not in str(got)


async def test_rotation_re_encrypts_everything_once(store: BusinessStore) -> None:
    old = TokenCipher("the-old-secret-0123456789abcdef")
    old_core = BusinessCore(store, old)
    ids = []
    for i in range(3):
        created = await create_business(
            old_core,
            f"rot-{i}",
            f"90{i}",
            active=i != 1,  # inactive businesses are rotated too
            secrets={"whatsapp_access_token": f"token-{i}", "twilio_auth_token": f"auth-{i}"},
        )
        ids.append(created.id)
    new = TokenCipher("the-new-secret-0123456789abcdef", ["the-old-secret-0123456789abcdef"])
    new_core = BusinessCore(store, new)
    dry = await new_core.rotate(dry_run=True)
    assert (dry.businesses, dry.secrets, dry.rotated) == (3, 6, 6)
    assert all(
        old.current_key_id in v
        for r in [await store.get(i) for i in ids]
        if r
        for v in r.secrets.values()
    )
    done = await new_core.rotate(dry_run=False, page_size=2)
    assert (done.rotated, done.failed) == (6, 0)
    again = await new_core.rotate(dry_run=False)
    assert (again.rotated, again.already_current) == (0, 6)
    only_new = BusinessCore(store, TokenCipher("the-new-secret-0123456789abcdef"))
    for i, business_id in enumerate(ids):
        got = await store.get(business_id)
        assert got is not None
        assert only_new.credentials(got) == {
            "whatsapp_access_token": f"token-{i}",
            "twilio_auth_token": f"auth-{i}",
        }


async def test_concurrent_writers_keep_uniqueness(store: BusinessStore) -> None:
    """Ten writers race for one phone_number_id: exactly one wins."""
    results = await asyncio.gather(
        *(store.create(record(pnids=("4242",))) for _ in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if isinstance(r, BaseException))


async def test_a_create_sent_again_with_its_key_answers_the_first_business(
    store: BusinessStore, core: BusinessCore
) -> None:
    """A create whose answer was lost, sent again (at once, too) with its idempotency key, is
    the business the first one made; the key reused for another subdomain is refused."""
    key = str(ObjectId())
    first = await create_business(core, "once", "7001", idempotency_key=key)
    again = await asyncio.gather(
        *(create_business(core, "once", "7001", idempotency_key=key) for _ in range(5))
    )
    assert {b.id for b in again} == {first.id}
    assert [b.id for b in await store.list(
        after_id=None, limit=10, include_inactive=True, servable_only=False
    ) if b.subdomain == "once"] == [first.id]  # fmt: skip
    # Five sends of a new key at once: one business, all five answered with it.
    racing = await asyncio.gather(
        *(create_business(core, "racing", "7002", idempotency_key="race") for _ in range(5))
    )
    assert len({b.id for b in racing}) == 1
    with pytest.raises(InvalidArgument, match="already used to create business"):
        await create_business(core, "other", "7003", idempotency_key=key)
    with pytest.raises(AlreadyExists, match="subdomain"):  # no key: a second claim as before
        await create_business(core, "once", "7004")


async def test_a_request_id_is_claimed_once_and_remembers_its_answer(
    store: BusinessStore,
) -> None:
    """The store's half of AIP-155 request ids: one claim wins, the others see it (pending,
    then with its answer); a released claim is free again, an expired one is taken over."""
    now = utcnow()
    lease, hour = now + timedelta(seconds=60), now + timedelta(hours=1)
    assert await store.claim_request("r1", "k:fp", "first", now, lease) is None
    assert await store.claim_request("r1", "k:fp", "second", now, lease) == RememberedRequest(
        "k:fp", None
    )
    await store.release_request("r1", "second")  # not its claim: changes nothing
    await store.finish_request("r1", "second", b"not mine", hour)
    assert await store.claim_request("r1", "k:fp", "third", now, lease) == RememberedRequest(
        "k:fp", None
    )
    await store.finish_request("r1", "first", b"\x00answer", hour)
    later = now + timedelta(minutes=59)
    assert await store.claim_request("r1", "k:other", "fourth", later, hour) == (
        RememberedRequest("k:fp", b"\x00answer")
    )
    await store.release_request("r1", "first")  # an answer, once remembered, stays
    past = now + timedelta(hours=1, milliseconds=1)
    assert (
        await store.claim_request("r1", "k:new", "fifth", past, past + timedelta(hours=1)) is None
    )
    # A claim whose call failed is dropped: a retry runs again.
    assert await store.claim_request("r2", "k:fp", "first", now, lease) is None
    await store.release_request("r2", "first")
    assert await store.claim_request("r2", "k:fp", "second", now, lease) is None
    # A claim whose call died (never finished nor released) is taken over once its lease ends.
    after_lease = lease + timedelta(milliseconds=1)
    assert await store.claim_request("r2", "k:fp", "third", after_lease, hour) is None
    claims = await asyncio.gather(
        *(store.claim_request("r3", "k:fp", f"c{i}", now, lease) for i in range(10))
    )
    assert claims.count(None) == 1


async def test_a_change_sent_again_with_its_request_id_is_applied_once(
    store: BusinessStore, core: BusinessCore
) -> None:
    """A conditional change whose answer was lost, sent again (and five times at once) with
    its request id: applied once, every send answered with the first answer (not ABORTED by
    its own write); the id reused for another request is refused."""
    business = await create_business(core, "remember", "7101")

    def rename(name: str, request_id: str, at: datetime) -> tuple[RequestId, Apply]:
        asked = f"rename {business.id} {name} {at.isoformat()}".encode()
        return RequestId(request_id, asked), functools.partial(
            core.update, business.id, {"name": name}, at
        )

    read = business.update_time
    once = "9b2d7c36-0d7e-4f0e-8c2a-3b1f6d2e5a01"
    first = await core.once(*rename("Renamed", once, read))
    assert first.name == "Renamed"
    stored = await store.get(business.id)
    assert stored is not None and stored.name == "Renamed"
    again = await asyncio.gather(*(core.once(*rename("Renamed", once, read)) for _ in range(5)))
    assert all(answer == first for answer in again)
    assert await store.get(business.id) == stored  # no second write: update_time unmoved
    # Five sends of a new id at once, at the current version: one write, all answered alike.
    racing = await asyncio.gather(
        *(
            core.once(*rename("Raced", "0e4c1a59-7a3b-4d8e-9f21-6c5b8a7d3e02", stored.update_time))
            for _ in range(5)
        )
    )
    assert racing[0].name == "Raced" and all(answer == racing[0] for answer in racing)
    with pytest.raises(InvalidArgument, match="already used for another request"):
        await core.once(*rename("Other", once, read))
    # A change that failed is not remembered: its id runs again (here, still ABORTED).
    stale = "4f1e2d3c-5b6a-4789-8a0b-1c2d3e4f5a03"
    for _ in range(2):
        with pytest.raises(Aborted):
            await core.once(*rename("Stale", stale, read))


async def test_sqlite_write_cancelled_while_waiting_for_the_file_lock_still_ends(
    tmp_path: Path,
) -> None:
    """An RPC's deadline cancels a write while its BEGIN IMMEDIATE waits for another process's
    lock (the CLI's, a backup's). The transaction still ends: later writes succeed and the file
    is not left locked (before: every later write failed, "cannot start a transaction within a
    transaction", and other processes got "database is locked", until a restart)."""
    store = SqliteStore(tmp_path / "business.db")
    await store.open()
    cli = sqlite3.connect(store.path, isolation_level=None)
    try:
        created = await store.create(record())
        cli.execute("BEGIN IMMEDIATE")
        waiting = asyncio.Event()
        await when_writer_starts(store, "BEGIN IMMEDIATE", waiting.set)
        cancelled = asyncio.create_task(store.update(created.id, {"name": "First"}))
        await waiting.wait()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        cli.execute("COMMIT")

        later = await store.update(created.id, {"name": "Second"})
        assert later is not None and later.name == "Second"
        cli.execute("BEGIN IMMEDIATE")
        cli.execute("COMMIT")
    finally:
        cli.close()
        await store.close()


async def test_a_call_cancelled_as_it_claims_its_request_id_still_applies_it(
    tmp_path: Path, cipher: TokenCipher
) -> None:
    """An RPC's deadline cancels a write with a request id just as the store commits its claim.
    The write still happens and is remembered, so the retry is answered at once (a claim left
    behind without its write would hold the retry up for the claim's whole lease)."""
    store = SqliteStore(tmp_path / "business.db")
    await store.open()
    try:
        core = BusinessCore(store, cipher)
        business = await create_business(core, "cut", "7201")
        request = RequestId("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", b"rename cut")
        rename = functools.partial(core.update, business.id, {"name": "Cut"})
        cancelled = asyncio.create_task(core.once(request, rename))
        fired: list[bool] = []

        def cancel_once() -> None:  # at the first COMMIT: the claim's
            if not fired:
                fired.append(True)
                cancelled.cancel()

        await when_writer_starts(store, "COMMIT", cancel_once)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await wait_shielded()
        stored = await store.get(business.id)
        assert stored is not None and stored.name == "Cut"
        assert (await core.once(request, rename)).name == "Cut"
        assert await store.get(business.id) == stored  # answered from memory
    finally:
        await store.close()


async def test_existing_mongo_collection_breaking_a_rule_keeps_the_service_not_ready(
    mongo_uri: str,
) -> None:
    """A team's collection where two businesses claim one phone_number_id: readiness says why."""
    database = f"parley_test_dup_{ObjectId()}"
    store = MongoStore(mongo_uri, database=database, min_pool_size=0)
    try:
        await store.collection.insert_many(
            [
                {"name": "A", "subDomain": "a", "whatsappPhoneNumberIds": ["1"], "isActive": True},
                {"name": "B", "subDomain": "b", "whatsappPhoneNumberIds": ["1"], "isActive": True},
            ]
        )
        with pytest.raises(ConnectionError, match="refused the business indexes"):
            await store.ping()
    finally:
        await store.collection.database.client.drop_database(database)
        await store.close()


async def test_mongo_document_with_a_single_identity_not_in_a_list(mongo_uri: str) -> None:
    """A collection kept by hand or by older code may hold one identity as a plain value
    (``whatsappPhoneNumberIds: "123456"``): MongoDB's query for an array element matches it
    too, so the business is found. It was read one character per identity ("1", "2", …): the
    answer listed digits, and the cache filed the business under them, so no lookup by the
    real identity was ever a hit."""
    store = MongoStore(mongo_uri, database=f"parley_test_scalar_{ObjectId()}", min_pool_size=0)
    try:
        await store.open()
        await store.collection.insert_one(
            {
                "name": "Old",
                "subDomain": "old",
                "whatsappPhoneNumberIds": "123456",
                "whatsappNumbers": "+14155550100",
                "whatsappEnabled": True,
                "isActive": True,
            }
        )
        found = await store.find(KeyKind.PHONE_NUMBER_ID, "123456")
        assert found is not None
        assert found.phone_number_ids == ("123456",)
        assert found.numbers == ("+14155550100",)
        assert identity_key(KeyKind.PHONE_NUMBER_ID, "123456") in found.lookup_keys
    finally:
        await store.collection.database.client.drop_database(store.database)
        await store.close()


async def test_mongo_update_of_a_document_without_a_date_update_time(mongo_uri: str) -> None:
    """A hand-kept document's ``updatedAt`` may be missing or a string: an update still applies
    and stores the given update_time (the step past the stored one needs a date to step from)."""
    store = MongoStore(mongo_uri, database=f"parley_test_dates_{ObjectId()}", min_pool_size=0)
    try:
        await store.open()
        later = datetime(2030, 1, 1, tzinfo=UTC)
        for updated_at in ("2024-01-01T00:00:00Z", None):
            doc: dict[str, object] = {"name": "Old", "subDomain": f"old{ObjectId()}"}
            if updated_at is not None:
                doc["updatedAt"] = updated_at
            inserted = await store.collection.insert_one(doc)
            changed = await store.update(
                str(inserted.inserted_id), {"name": "New", "update_time": later}
            )
            assert changed is not None and changed.name == "New"
            assert changed.update_time == later
    finally:
        await store.collection.database.client.drop_database(store.database)
        await store.close()


async def test_mongo_secret_an_older_system_stored_as_no_string_is_reported_not_dropped(
    mongo_uri: str, cipher: TokenCipher
) -> None:
    """Another system's encrypted token kept as an object (``{iv, content}``) or as binary:
    docs/business.md says it cannot be read, FAILED_PRECONDITION when asked for and a failure
    of rotate-keys. It read as no token at all: the business had no access token (every reply
    dead-lettered as such), `show` said *not set* and rotate-keys counted nothing."""
    store = MongoStore(mongo_uri, database=f"parley_test_formats_{ObjectId()}", min_pool_size=0)
    try:
        await store.open()
        inserted = await store.collection.insert_one(
            {
                "name": "Old",
                "subDomain": "old-format",
                "whatsappPhoneNumberIds": ["123457"],
                "whatsappEnabled": True,
                "isActive": True,
                "whatsappAccessToken": {"iv": "00ff", "content": "a1b2c3"},
                "twilioAuthToken": Binary(b"\x01\x02\x03"),
            }
        )
        core = BusinessCore(store, cipher)
        found = await core.get(str(inserted.inserted_id))
        assert sorted(found.secrets) == ["twilio_auth_token", "whatsapp_access_token"]
        with pytest.raises(FailedPrecondition):
            core.credentials(found)
        report = await core.rotate(dry_run=False)
        assert (report.secrets, report.failed, report.rotated) == (2, 2, 0)
    finally:
        await store.collection.database.client.drop_database(store.database)
        await store.close()
