"""The session service on a real three-node Valkey cluster (``redis+cluster://``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from parley.session.v1 import session_pb2 as pb
from parley.session.v1.session_pb2_grpc import SessionServiceStub
from services.common.redis_client import make_client, make_redis
from services.common.redis_pipeline import AutoPipeline
from services.gateway.ratelimit import RateLimits
from services.search.ratelimit import ProviderRateLimiter, RateLimitTimeout
from services.session.model import ConversationKey
from services.session.redis_store import RedisStore
from tests.session.conftest import Running, ValkeyCluster, new_key, start_session, user_message
from tests.session.test_service import list_all
from tests.support.processes import Valkey, free_port, wait_for
from tests.support.proxy import ReplyCutter


@pytest.fixture(scope="module")
def cluster_service(
    valkey_cluster: ValkeyCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    running = start_session(
        tmp_path_factory.mktemp("cluster-session"),
        "redis://127.0.0.1:1/0",  # SESSION_REDIS_URL must win over this unreachable one
        SESSION_REDIS_URL=valkey_cluster.url,
    )
    yield running
    running.stop()


@pytest.fixture
async def cluster_stub(cluster_service: Running) -> AsyncIterator[SessionServiceStub]:
    async with grpc.aio.insecure_channel(cluster_service.address) as channel:
        yield SessionServiceStub(channel)


async def test_make_redis_talks_to_the_cluster(valkey_cluster: ValkeyCluster) -> None:
    client = make_redis(valkey_cluster.url, decode_responses=True)
    try:
        for n in range(20):
            await client.set(f"cluster-check:{n}", n)
        assert await client.get("cluster-check:7") == "7"
    finally:
        await client.aclose()
    holding = [node.client().dbsize() for node in valkey_cluster.nodes]
    assert sum(holding) >= 20 and sum(1 for n in holding if n) >= 2  # spread over the nodes


async def test_conversations_spread_over_the_nodes_and_list_completely(
    cluster_stub: SessionServiceStub, valkey_cluster: ValkeyCluster
) -> None:
    keys = [new_key(f"cluster-biz-{n % 3}") for n in range(30)]
    for key in keys:
        response = await cluster_stub.UpdateConversation(
            pb.UpdateConversationRequest(key=key, append=[user_message("hello")])
        )
        assert response.created
        again = await cluster_stub.UpdateConversation(
            pb.UpdateConversationRequest(
                key=key, append=[user_message("again")], expected_version=1
            )
        )
        assert [m.content for m in again.conversation.history] == ["hello", "again"]
    per_node = [
        sum(1 for _ in node.client().scan_iter(match="conversation:*:meta"))
        for node in valkey_cluster.nodes
    ]
    assert sum(per_node) == 30
    assert sum(1 for n in per_node if n) >= 2, per_node
    for business in ("cluster-biz-0", "cluster-biz-1", "cluster-biz-2"):
        found = await list_all(cluster_stub, business, 4)
        expected = {k.user_id for k in keys if k.business_id == business}
        assert {c.key.user_id for c in found} == expected


async def test_racing_writers_on_the_cluster_lose_nothing(cluster_stub: SessionServiceStub) -> None:
    key = new_key("cluster-race")

    async def writer(n: int) -> None:
        while True:
            current = (
                await cluster_stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
            ).conversation
            request = pb.UpdateConversationRequest(
                key=key, append=[user_message(f"m{n}")], expected_version=current.version
            )
            request.set_state[f"seen {n}"].bool_value = True
            try:
                await cluster_stub.UpdateConversation(request)
                return
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.ABORTED

    await asyncio.gather(*(writer(n) for n in range(20)))
    final = (await cluster_stub.GetConversation(pb.GetConversationRequest(key=key))).conversation
    assert final.version == 21
    assert len(final.state) == 20


async def test_scan_finds_conversations_on_every_primary(
    cluster_stub: SessionServiceStub, valkey_cluster: ValkeyCluster, tmp_path: Path
) -> None:
    keys = [new_key("cluster-scan") for _ in range(12)]
    for key in keys:
        await cluster_stub.GetConversation(pb.GetConversationRequest(key=key, create=True))
    client = make_client(valkey_cluster.url)
    try:
        found = await RedisStore(client, ttl_seconds=60, history_limit=10).scan_conversations()
    finally:
        await client.aclose()
    wanted = {ConversationKey("cluster-scan", k.user_id, "client") for k in keys}
    assert wanted <= set(found)


async def test_the_search_rate_limit_counts_on_the_cluster(valkey_cluster: ValkeyCluster) -> None:
    """The search service's rate limit (one script on one key) is kept on a Cluster, not in
    each process: a second replica finds the gap the first one's request left."""
    first = ProviderRateLimiter("cluster", 0.5, valkey_cluster.url)  # one request per 2 s
    second = ProviderRateLimiter("cluster", 0.5, valkey_cluster.url)
    try:
        await first.acquire(time.monotonic() + 5)
        with pytest.raises(RateLimitTimeout):
            await second.acquire(time.monotonic() + 0.5)
        assert first.key and not second._outage.failures  # on the cluster, not in-process
    finally:
        await first.aclose()
        await second.aclose()


async def test_gateway_rate_limits_count_on_the_cluster(valkey_cluster: ValkeyCluster) -> None:
    """Both windows of a message share a slot, so one script counts them on a Cluster too."""
    client = make_redis(valkey_cluster.url)
    try:
        rate = RateLimits(AutoPipeline(client), "2/minute", "100/minute")
        outcomes = [(await rate.hit("cluster-rl", "user-1"))[:2] for _ in range(3)]
        assert outcomes == [(True, True), (True, True), (True, False)]
    finally:
        await client.aclose()


async def test_a_burst_past_the_pool_waits_for_a_connection_on_the_cluster(
    valkey_cluster: ValkeyCluster, tmp_path: Path
) -> None:
    """More calls at once than a node's pool holds wait for a free connection, as
    docs/session.md says, and Redis, which answers all along, is no outage. (Was a bug on
    Cluster: redis-py's cluster pool fails a call past its size at once (MaxConnectionsError,
    a ConnectionError), so the service took the burst for Redis gone and served from memory.)"""
    running = start_session(
        tmp_path, valkey_cluster.url, SESSION_REDIS_MAX_CONNECTIONS="2", LOG_LEVEL="INFO"
    )
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            keys = [new_key("cluster-burst") for _ in range(40)]
            replies = await asyncio.gather(
                *(stub.GetConversation(pb.GetConversationRequest(key=k, create=True)) for k in keys)
            )
            assert all(reply.created for reply in replies)
            status = await stub.GetStorageStatus(pb.GetStorageStatusRequest())
            assert status.backend == pb.STORAGE_BACKEND_REDIS and not status.fallback_active
        assert not [e for e in running.log_events() if "Redis unreachable" in str(e.get("event"))]
        per_node = sum(
            sum(1 for _ in node.client().scan_iter(match="conversation:{cluster-burst:*}:*:meta"))
            for node in valkey_cluster.nodes
        )
        assert per_node == 40  # in Redis, not in the fallback's memory
    finally:
        running.stop()


def test_an_update_whose_answer_was_lost_is_applied_once_on_the_cluster(
    tmp_path: Path,
) -> None:
    """An update without ``expected_version`` ran, and the connection broke before its answer:
    redis-py's cluster client sent it again, and the message was appended twice (version 3).
    Now it is sent once, as on one link: the service takes the broken link for an outage,
    applies the update in memory, and its write-back finds Redis already holding it."""
    node = Valkey(
        tmp_path / "node",
        None,
        "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "node" / "nodes.conf"),
        "--cluster-port", str(free_port()),  # its default, port + 10000, may pass 65535
    ).start()  # fmt: skip
    cutter = ReplyCutter(f"127.0.0.1:{node.port}", hold=0.3).start()
    running: Running | None = None
    try:
        admin = node.client()
        # The node names the cutter as its address, so every call of the client goes through it.
        admin.config_set("cluster-announce-port", cutter.address.rsplit(":", 1)[1])
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        assert wait_for(lambda: b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"))
        running = start_session(tmp_path, f"redis+cluster://{cutter.address}")
        with grpc.insecure_channel(running.address) as channel:
            stub = SessionServiceStub(channel)
            key = new_key("cluster-lost-answer")
            stub.UpdateConversation(
                pb.UpdateConversationRequest(key=key, append=[user_message("first")])
            )
            cutter.cut_reply_to(b"only once")
            stub.UpdateConversation(
                pb.UpdateConversationRequest(key=key, append=[user_message("only once")])
            )
            assert cutter.cuts == 1

            def back_on_redis() -> bool:
                status = stub.GetStorageStatus(pb.GetStorageStatusRequest())
                return not status.fallback_active and status.pending_writebacks == 0

            assert wait_for(back_on_redis, 20, 0.1), running.process.log[-2000:]
            final = stub.GetConversation(pb.GetConversationRequest(key=key)).conversation
        assert [m.content for m in final.history] == ["first", "only once"]
        assert final.version == 2
    finally:
        if running is not None:
            running.stop()
        cutter.stop()
        node.stop()


class SlotMigration:
    """One slot of ``cluster`` moved to another node as ``valkey-cli --cluster reshard`` does:
    IMPORTING and MIGRATING, its keys MIGRATEd, then the slot given to its new node."""

    def __init__(self, cluster: ValkeyCluster, key: str) -> None:
        self.clients = [node.client() for node in cluster.nodes]
        self.slot = self.clients[0].execute_command("CLUSTER", "KEYSLOT", key)
        self.source = next(
            c for c in self.clients if c.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot)
        )
        self.target = next(c for c in self.clients if c is not self.source)
        self.target_id = self.target.execute_command("CLUSTER", "MYID").decode()
        source_id = self.source.execute_command("CLUSTER", "MYID").decode()
        self.target.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        self.source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)
        keys = self.source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100)
        port = self.target.connection_pool.connection_kwargs["port"]
        self.source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
        self.target.script_flush()  # a node that never ran the scripts: NOSCRIPT

    def finish(self) -> None:
        for client in self.clients:
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)


async def test_a_key_moved_mid_migration_is_read_on_its_new_node(
    valkey_cluster: ValkeyCluster,
) -> None:
    """While a slot migrates, a key already moved is answered ASK: redis-py sends ASKING and
    then the command, each on a free connection of the node, and ASKING holds for its own
    connection only. With several free, the command went on another one, was sent back
    (MOVED), then ASKed again, until the redirects ran out: every read or write of a moved key
    failed (``ClusterError: TTL exhausted``) until the migration ended."""
    client = make_client(valkey_cluster.url)
    try:
        await client.set("{cluster-ask}k", "moved")
        # Several free connections on every node.
        await asyncio.gather(*(client.get(f"{{cluster-ask-{n}}}k") for n in range(60)))
        migration = SlotMigration(valkey_cluster, "{cluster-ask}k")
        try:
            assert await client.get("{cluster-ask}k") == b"moved"
            assert await client.set("{cluster-ask}k", "written mid-migration")
        finally:
            migration.finish()
        assert await client.get("{cluster-ask}k") == b"written mid-migration"
    finally:
        await client.aclose()


def test_updates_follow_a_slot_migrating_to_another_node(
    cluster_service: Running, valkey_cluster: ValkeyCluster
) -> None:
    """A conversation's slot moved to another node whose script cache is empty. While it
    migrates, a script on the conversation's keys (some moved, some never written) is answered
    TRYAGAIN, which redis-py followed until its redirects ran out: INTERNAL, where
    docs/session.md promises UNAVAILABLE (retry later). Once moved, MOVED and NOSCRIPT are
    followed and the update is applied once, on Redis. (Also checks the cluster path that
    sends each script once, which at first loaded a refused script on the old node only.)"""
    key = new_key("cluster-migrating")
    with grpc.insecure_channel(cluster_service.address) as channel:
        stub = SessionServiceStub(channel)

        def update(text: str, version: int) -> pb.Conversation:
            request = pb.UpdateConversationRequest(
                key=key, append=[user_message(text)], expected_version=version
            )
            return stub.UpdateConversation(request).conversation

        update("before", 0)
        meta = ConversationKey(key.business_id, key.user_id, "client").redis_keys()[0]
        migration = SlotMigration(valkey_cluster, meta)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                update("while migrating", 1)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        finally:
            migration.finish()
        final = update("after", 1)  # MOVED, then NOSCRIPT
        status = stub.GetStorageStatus(pb.GetStorageStatusRequest())
    assert [m.content for m in final.history] == ["before", "after"]
    assert final.version == 2 and not status.fallback_active
    assert migration.target.execute_command("CLUSTER", "COUNTKEYSINSLOT", migration.slot) >= 2
