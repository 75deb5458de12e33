"""The gateway's alerts against what a real gateway exports: scraped before and after the event
the alert is about, then evaluated by Prometheus's rule engine (promtool) on those samples.

A labelled counter (``gateway_dead_letters_total{reason}``) has no series until its first
increment, so Prometheus first sees it at 1: an alert on ``increase()`` alone never counts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.observability import (
    Samples,
    alert_rules,
    evaluate,
    expected,
    metric_names,
    needs_promtool,
    scrape,
    timeline,
)
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for
from tests.support.stack import cloud_payload, signed_cloud

pytestmark = needs_promtool
APP_SECRET = "alerts-app-secret"
TARGET = {"job": "gateway", "instance": "gateway:8000"}


def start_gateway(tmp_path: Path, valkey: Valkey, **env: str) -> tuple[ServiceProcess, str]:
    """A real gateway process (the web role unless ``env`` says otherwise) on ``valkey``, once
    it answers; its process and base URL."""
    port = free_port()
    process = ServiceProcess(
        "services.gateway.main",
        {
            "GATEWAY_ROLE": "web",
            "GATEWAY_PORT": str(port),
            "REDIS_URL": valkey.url,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            **env,
        },
        tmp_path / "gateway.log",
    ).start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(up, 30):
        process.stop()
        raise AssertionError(process.log[-3000:])
    return process, url


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """A real gateway web process on a real Valkey; its base URL."""
    valkey = Valkey(tmp_path / "valkey").start()
    try:
        process, url = start_gateway(tmp_path, valkey)
        try:
            yield url
        finally:
            process.stop()
    finally:
        valkey.stop()


def gateway_pages() -> tuple[list[str], set[str]]:
    """The alerts that page on the gateway's own metrics (of an outage the services' metrics
    and Redis's do not show), and the metrics they read."""
    rules = alert_rules()
    pages = [
        name
        for name, rule in rules.items()
        if rule["labels"]["severity"] == "page"
        and {m.split("_")[0] for m in metric_names(rule["expr"])} == {"gateway"}
    ]
    return pages, set().union(*(metric_names(rules[name]["expr"]) for name in pages))


def post_signed(gateway: str, payload: dict[str, Any]) -> httpx.Response:
    """A Cloud API webhook signed with the gateway's app secret."""
    body, headers = signed_cloud(payload, APP_SECRET)
    return httpx.post(f"{gateway}/webhooks/whatsapp", content=body, headers=headers)


def test_the_first_dead_letter_of_a_gateway_fires_the_dead_letter_alert(
    gateway: str, tmp_path: Path
) -> None:
    before = scrape(f"{gateway}/metrics")
    # A signed Cloud API webhook with a change the gateway cannot use: dead-lettered at once.
    answer = post_signed(
        gateway,
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "waba", "changes": [{"field": "account_update", "value": {}}]}],
        },
    )
    assert answer.status_code == 200, answer.text
    after = scrape(f"{gateway}/metrics")
    dead = ("gateway_dead_letters_total", (("reason", "unusable_payload"),))
    assert dead not in before and after[dead] == 1

    # Twenty minutes without dead letters, then the first one, scraped every 30 s from then on.
    evaluate(
        tmp_path,
        timeline((before, 40), (after, 60), used={"gateway_dead_letters_total"}, target=TARGET),
        [
            expected("ParleyDeadLetters", 19),
            expected("ParleyDeadLetters", 21, firing=True),
            expected("ParleyDeadLetters", 45),
        ],
    )


def test_messages_queued_with_no_worker_alive_page(gateway: str, tmp_path: Path) -> None:
    """The workers are down (crashing on start, scaled to zero, a deploy that never came up)
    while the web process takes webhooks: one queued message and no worker pages within minutes.
    (Was a gap: only ParleyQueueBacklog watched the queue, which needs over 1,000 messages and
    ten minutes of growth: a business with a few messages a minute went unanswered for hours
    with nothing firing.)"""
    before = scrape(f"{gateway}/metrics")
    payload = cloud_payload("100200300", "15550001111", "hello?", message_id="wamid.unattended")
    answer = post_signed(gateway, payload)
    assert answer.status_code == 200 and answer.json()["queued"] == 1, answer.text
    after = scrape(f"{gateway}/metrics")
    assert after[("gateway_queue_length", ())] == 1 and after[("gateway_live_workers", ())] == 0
    assert after[("gateway_queue_up", ())] == 1  # there when it is 1, not only when 0
    # The message's age, as ParleyQueueStale reads it, grows while it waits.
    assert before[("gateway_queue_oldest_seconds", ())] == 0
    time.sleep(1.2)
    waited = scrape(f"{gateway}/metrics")[("gateway_queue_oldest_seconds", ())]
    assert 1.0 <= waited < 60

    # Ten minutes with nothing queued, then the message waits for two hours.
    evaluate(
        tmp_path,
        timeline(
            (before, 20),
            (after, 240),
            used={"gateway_queue_length", "gateway_live_workers"},
            target=TARGET,
        ),
        [
            expected("ParleyQueueUnattended", 9),
            expected("ParleyQueueUnattended", 14),
            expected("ParleyQueueUnattended", 16, firing=True),
            expected("ParleyQueueUnattended", 120, firing=True),
            expected("ParleyQueueBacklog", 120),
        ],
    )


def test_every_message_dead_lettered_because_a_service_is_unreachable_pages(
    tmp_path: Path,
) -> None:
    """The workers cannot reach the services (an expired certificate, a NetworkPolicy, a wrong
    ``*_SERVICE_ADDR``): every message retries for ``RETRY_WINDOW_SECONDS`` and ends as a dead
    letter, and no user is answered. The services serve and their own calls succeed, and the
    queue neither grows nor goes stale. (Was a gap: no page fired, only the dead-letter ticket.)"""
    valkey = Valkey(tmp_path / "valkey").start()
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    dead = ("gateway_messages_processed_total", (("outcome", "dead_letter"),))
    try:
        process, url = start_gateway(
            tmp_path,
            valkey,
            GATEWAY_ROLE="all",
            SESSION_SERVICE_ADDR=nowhere,
            BUSINESS_SERVICE_ADDR=nowhere,
            SEARCH_SERVICE_ADDR=nowhere,
            RETRY_WINDOW_SECONDS="0",  # dead-lettered at the first failure, not after 5 min
        )
    except BaseException:
        valkey.stop()
        raise
    metrics = f"{url}/metrics"
    try:
        before = scrape(metrics)
        scrapes: list[Samples] = []
        for n in range(1, 11):  # each dead-lettered before the next is sent
            payload = cloud_payload("100200300", "15550001111", f"hi {n}", message_id=f"wamid.{n}")
            assert post_signed(url, payload).status_code == 200
            assert wait_for(lambda: scrape(metrics).get(dead) == n, 30), process.log[-3000:]  # noqa: B023
            scrapes.append(scrape(metrics))
    finally:
        process.stop()
        valkey.stop()
    assert scrapes[-1][("gateway_dead_letters_total", (("reason", "retry_window"),))] == 10

    pages, used = gateway_pages()
    # Ten quiet minutes, then a message a minute, each dead-lettered; then none for half an hour.
    phases = [(before, 20), *((samples, 2) for samples in scrapes), (scrapes[-1], 60)]
    evaluate(
        tmp_path,
        timeline(*phases, used=used, target=TARGET),
        [
            *(expected(name, 9) for name in pages),
            *(expected(name, 21) for name in pages if name != "ParleyMessagesUnanswered"),
            expected("ParleyMessagesUnanswered", 21, firing=True),
            *(expected(name, 45) for name in pages),
        ],
    )


def test_a_gateway_that_cannot_reach_its_queue_pages(tmp_path: Path) -> None:
    """The gateway loses its Redis (down, or unreachable from the gateway alone: a NetworkPolicy,
    a rotated password, TLS), where no redis_exporter watches, or where the exporter still
    reaches it: every webhook is answered 503 and nothing is processed, while the queue's gauges
    vanish with Redis, so every alert on them is silent. ``gateway_queue_up`` is there to say
    so. (Was a gap: no alert read it; only ParleyWebhooksRejected, a ticket after 15 minutes.)"""
    valkey = Valkey(tmp_path / "valkey").start()
    try:
        process, url = start_gateway(tmp_path, valkey)
    except BaseException:
        valkey.stop()
        raise
    try:
        before = scrape(f"{url}/metrics")  # nothing queued: no worker runs here
        valkey.stop()
        payload = cloud_payload("100200300", "15550001111", "hello?", message_id="wamid.after")
        assert post_signed(url, payload).status_code == 503
        after = scrape(f"{url}/metrics")
    finally:
        process.stop()
        valkey.stop()
    assert after[("gateway_queue_up", ())] == 0 and ("gateway_queue_length", ()) not in after
    assert after[("gateway_webhooks_total", (("channel", "cloud_api"), ("outcome", "unavailable")))]

    pages, used = gateway_pages()
    # Ten healthy minutes, then twenty without the queue, then the queue back.
    phases = [(before, 20), (after, 40), (before, 20)]
    evaluate(
        tmp_path,
        timeline(*phases, used=used, target=TARGET),
        [
            *(expected(name, 9) for name in pages),
            *(expected(name, 15) for name in pages if name != "ParleyQueueUnreachable"),
            expected("ParleyQueueUnreachable", 15, firing=True),
            *(expected(name, 35) for name in pages),
        ],
    )
