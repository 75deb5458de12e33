"""Business replicas of this release beside, before and after those of the release before it
(``git archive``), on one store: a rolling upgrade, and a rollback, of a store that release
made or this one used."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymongo
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from parley.business.v1 import business_pb2
from tests.business.conftest import (
    RunningService,
    SecretRegistry,
    demo_request,
    fresh_database,
    start_service,
)
from tests.support.releases import REQUEST_ID_RELEASE, previous_release


@pytest.fixture(scope="module")
def previous_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return previous_release(tmp_path_factory.mktemp("previous-release"), REQUEST_ID_RELEASE)


async def start_previous(
    registry: SecretRegistry, root: Path, db: Path, **env: str
) -> RunningService:
    return await start_service(
        registry, "replica-previous", db, root=root, PYTHONPATH=str(root), **env
    )


async def renamed(service: RunningService, business_id: str, name: str, request_id: str) -> str:
    request = business_pb2.UpdateBusinessRequest(
        business=business_pb2.Business(id=business_id, name=name),
        update_mask=FieldMask(paths=["name"]),
        request_id=request_id,
    )
    return (await service.stub.UpdateBusiness(request)).business.name


async def upgrade_and_roll_back(registry: SecretRegistry, root: Path, db: Path, **env: str) -> None:
    get = business_pb2.GetBusinessRequest
    old = await start_previous(registry, root, db, **env)
    try:
        request = demo_request(registry)
        made = (await old.stub.CreateBusiness(request)).business
        # A new replica starts beside the old one, which keeps serving from the store the new
        # one just added its table or collection to.
        new = await start_service(registry, "replica-new", db, **env)
        try:
            # Everything the old release stored is read, secrets too; a request id is
            # remembered.
            found = await new.stub.GetBusiness(get(id=made.id, include_credentials=True))
            assert found.business.name == made.name
            assert found.credentials.twilio_auth_token == request.credentials.twilio_auth_token
            once = str(uuid.uuid4())
            assert await renamed(new, made.id, "Renamed once", once) == "Renamed once"
            assert await renamed(new, made.id, "Renamed once", once) == "Renamed once"
            second = (await new.stub.CreateBusiness(demo_request(registry))).business
            assert (await old.stub.GetBusiness(get(id=second.id))).business.name == second.name
            third = (await old.stub.CreateBusiness(demo_request(registry))).business
            assert (await new.stub.GetBusiness(get(id=third.id))).business.name == third.name
        finally:
            await new.close()
    finally:
        await old.close()
    # Rolled back: the old release opens the store this one used and reads and writes it.
    old = await start_previous(registry, root, db, **env)
    try:
        found = await old.stub.GetBusiness(get(id=made.id, include_credentials=True))
        assert found.business.name == "Renamed once"
        assert found.credentials.twilio_auth_token == request.credentials.twilio_auth_token
        assert (await old.stub.GetBusiness(get(id=second.id))).business.name == second.name
        # A new gateway's request_id is a field the old release does not know: ignored.
        assert await renamed(old, made.id, "Renamed by the old", str(uuid.uuid4())) == (
            "Renamed by the old"
        )
    finally:
        await old.close()


async def test_a_sqlite_database_of_the_release_before_is_upgraded_and_rolled_back(
    registry: SecretRegistry, previous_root: Path, tmp_path: Path
) -> None:
    await upgrade_and_roll_back(registry, previous_root, tmp_path / "business.db")


async def test_a_mongodb_database_of_the_release_before_gets_the_request_index(
    registry: SecretRegistry, previous_root: Path, tmp_path: Path, mongo_uri: str
) -> None:
    database = fresh_database()
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri)
    try:
        await upgrade_and_roll_back(
            registry,
            previous_root,
            tmp_path / "unused.db",
            MONGODB_URI=mongo_uri,
            MONGODB_DATABASE=database,
        )
        indexes = client[database]["business_requests"].index_information()
        assert indexes["request_expiry_ttl"]["expireAfterSeconds"] == 0, indexes
    finally:
        client.drop_database(database)
        client.close()
