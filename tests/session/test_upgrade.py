"""Session replicas of this release beside those of the release before it (``git archive``),
on one Valkey, as during a rolling upgrade: one listing paged through both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest

from parley.session.v1 import session_pb2 as pb
from parley.session.v1.session_pb2_grpc import SessionServiceStub
from services.common.errors import field_violations
from tests.session.conftest import SERVICE, Running, new_key
from tests.support.processes import ServiceProcess, free_port
from tests.support.releases import REQUEST_ID_RELEASE, previous_release


@pytest.fixture(scope="module")
def previous_session(
    session_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    root = previous_release(tmp_path_factory.mktemp("previous-release"), REQUEST_ID_RELEASE)
    port = free_port()
    process = ServiceProcess(
        "services.session.server",
        {
            "PYTHONPATH": str(root),
            "SESSION_PORT": str(port),
            "SESSION_METRICS_PORT": "0",
            "REDIS_URL": session_redis_url,
        },
        root / "session.log",
        root=root,
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        process.wait_serving(address, SERVICE, timeout=60)
        yield Running(process, address, 0)
    finally:
        process.stop()


async def test_a_listing_paged_across_both_releases_is_refused_cleanly_one_way(
    stub: SessionServiceStub, previous_session: Running
) -> None:
    """docs/session.md: this release takes the release before's page tokens, and a replica of
    that release refuses this one's with INVALID_ARGUMENT naming ``page_token`` (the client
    starts the listing over), never INTERNAL or a silently wrong page."""
    business = f"rolling-{uuid.uuid4().hex[:8]}"
    keys = [new_key(business) for _ in range(7)]
    await asyncio.gather(
        *(stub.GetConversation(pb.GetConversationRequest(key=k, create=True)) for k in keys)
    )
    async with grpc.aio.insecure_channel(previous_session.address) as channel:
        old = SessionServiceStub(channel)
        # Old replica first, then this release's: the rest of the listing follows.
        first = await old.ListConversations(
            pb.ListConversationsRequest(business_id=business, page_size=3)
        )
        assert first.next_page_token
        rest = await stub.ListConversations(
            pb.ListConversationsRequest(
                business_id=business, page_size=50, page_token=first.next_page_token
            )
        )
        seen = [c.key.user_id for c in [*first.conversations, *rest.conversations]]
        assert sorted(seen) == sorted(k.user_id for k in keys)
        # This release's token on an old replica: refused, naming the field.
        first = await stub.ListConversations(
            pb.ListConversationsRequest(business_id=business, page_size=3)
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await old.ListConversations(
                pb.ListConversationsRequest(
                    business_id=business, page_size=3, page_token=first.next_page_token
                )
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
        assert set(field_violations(error.value)) == {"page_token"}  # type: ignore[arg-type]
