"""The Redis alerts against what the real redis_exporter writes for a real Valkey: a healthy
instance, one that is full and refuses writes under an evicting policy, and one that is down;
then Prometheus's rule engine (promtool) evaluates alerts.yml on those very samples.

The exporter is Debian's ``prometheus-redis-exporter`` (oliver006/redis_exporter, the image the
compose file runs), and promtool comes from Debian's ``prometheus``; ``.ci/run`` installs both.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy import observability
from tests.deploy.observability import (
    PROMTOOL,
    Samples,
    alert_rules,
    evaluate,
    expected,
    metric_names,
    metrics_read,
    scrape,
)
from tests.support.processes import Valkey, free_port, wait_for

EXPORTER = shutil.which("prometheus-redis-exporter") or shutil.which("redis_exporter")
pytestmark = pytest.mark.skipif(
    EXPORTER is None or PROMTOOL is None,
    reason="redis_exporter or promtool not installed (apt-get install prometheus-redis-exporter "
    "prometheus): the Redis alerts are NOT checked against the real exporter",
)
RULES = alert_rules()
# What the alerts read of the exporter's. Prometheus adds job and instance when it scrapes.
USED = {
    name
    for rule in RULES.values()
    for name in metric_names(rule["expr"])
    if name.startswith("redis_")
}
TARGET = {"job": "redis", "instance": "valkey:6379"}


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[Valkey, str]]:
    valkey = Valkey(tmp_path / "valkey").start()
    port = free_port()
    assert EXPORTER is not None
    process = subprocess.Popen(
        [
            EXPORTER,
            "-redis.addr",
            f"redis://127.0.0.1:{valkey.port}",
            "-web.listen-address",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return bool(scrape(url))
        except OSError:
            return False

    try:
        assert wait_for(answers, 15), "redis_exporter did not start"
        yield valkey, url
    finally:
        process.terminate()
        process.wait(10)
        valkey.stop()


def timeline(*phases: tuple[Samples, int]) -> list[dict[str, str]]:
    return observability.timeline(*phases, used=USED, target=TARGET)


def test_a_full_valkey_that_refuses_writes_fires_the_memory_alerts(
    exporter: tuple[Valkey, str], tmp_path: Path
) -> None:
    valkey, url = exporter
    db = redis.Redis(port=valkey.port)
    db.config_set("maxmemory", 64 * 1024 * 1024)
    healthy = scrape(url)
    assert healthy[("redis_up", ())] == 1
    assert healthy[("redis_memory_max_bytes", ())] == 64 * 1024 * 1024

    db.config_set("maxmemory", 1)  # over it at once: noeviction (the default) refuses writes
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        db.set("conversation:x", "y")
    db.config_set("maxmemory-policy", "allkeys-lru")
    full = scrape(url)
    assert full[("redis_errors_total", (("err", "OOM"),))] >= 1
    policies = {
        dict(labels).get("maxmemory_policy")
        for (name, labels) in full
        if name == "redis_instance_info"
    }
    assert policies == {"allkeys-lru"}

    # Healthy for 5 minutes, then full and refusing for 15.
    evaluate(
        tmp_path,
        timeline((healthy, 10), (full, 30)),
        [
            *(
                expected(name, 4)
                for name in (
                    "ParleyRedisMemoryHigh",
                    "ParleyRedisRefusingWrites",
                    "ParleyRedisMayEvict",
                )
            ),
            expected("ParleyRedisRefusingWrites", 7, instance=TARGET["instance"], err="OOM"),
            expected("ParleyRedisMemoryHigh", 12, instance=TARGET["instance"]),
            expected(
                "ParleyRedisMayEvict",
                17,
                instance=TARGET["instance"],
                maxmemory_policy="allkeys-lru",
            ),
            expected("ParleyRedisDown", 17),
        ],
    )


def test_every_redis_metric_the_dashboard_and_alerts_read_is_one_the_exporter_writes(
    exporter: tuple[Valkey, str],
) -> None:
    valkey, url = exporter
    db = redis.Redis(port=valkey.port)
    db.config_set("maxmemory", 1)  # Redis lists an error kind only once it has happened
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        db.set("k", "v")
    written = {name for name, _ in scrape(url)}
    read = {name for name in metrics_read() if name.startswith("redis_")}
    assert len(read) >= 5
    assert read <= written, sorted(read - written)


def test_a_valkey_that_stops_answering_fires_redis_down(
    exporter: tuple[Valkey, str], tmp_path: Path
) -> None:
    valkey, url = exporter
    healthy = scrape(url)
    valkey.stop()
    down = scrape(url)  # the exporter itself still answers, with redis_up 0
    assert down[("redis_up", ())] == 0
    evaluate(
        tmp_path,
        timeline((healthy, 10), (down, 10)),
        [
            expected("ParleyRedisDown", 4),
            expected("ParleyRedisDown", 8, instance=TARGET["instance"]),
            expected("ParleyRedisMemoryHigh", 8),
        ],
    )


def test_a_valkey_without_an_append_only_file_fires_not_persisting(
    exporter: tuple[Valkey, str], tmp_path: Path
) -> None:
    # Without AOF a restart loses every accepted message not yet answered: nothing else says so
    # after start-up (a `CONFIG SET appendonly no`, a failover to a replica set up without it).
    valkey, url = exporter
    persisted = scrape(url)
    assert persisted[("redis_aof_enabled", ())] == 1
    redis.Redis(port=valkey.port).config_set("appendonly", "no")
    volatile = scrape(url)
    assert volatile[("redis_aof_enabled", ())] == 0
    evaluate(
        tmp_path,
        timeline((persisted, 10), (volatile, 30)),
        [
            expected("ParleyRedisNotPersisting", 4),
            expected("ParleyRedisNotPersisting", 12),
            expected("ParleyRedisNotPersisting", 17, instance=TARGET["instance"]),
        ],
    )
