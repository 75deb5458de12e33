"""The gateway's Prometheus metrics.

With several processes (``WEB_CONCURRENCY`` > 1, or separate workers on one host)
``PROMETHEUS_MULTIPROC_DIR`` is set and prometheus-client's multiprocess mode sums the counters
and histograms of every process at scrape time. Queue figures are read from Redis at scrape time
instead (they are shared state, not per-process counts).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from services.common.lookup_cache import CacheCounters

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

WEBHOOKS = Counter(
    "gateway_webhooks_total",
    "Webhooks received, by channel and outcome.",
    ["channel", "outcome"],
)
RECENT_SEARCHES = Counter(
    "gateway_recent_searches_total",
    "The engine's SearchFlights near cache (BOT_SEARCH_CACHE_SECONDS), by result: hit or miss.",
    ["result"],
)
SEARCH_IGNORED_PARTY = Counter(
    "gateway_search_ignored_party_total",
    "SearchFlights answers that left out the children or infants asked for (a search replica of"
    " a release before them, mid-upgrade): the family is told search is unavailable.",
)
LLM_CALLS = Counter(
    "gateway_llm_calls_total",
    "The engine's language-model calls (OPENAI_API_KEY), by outcome: ok, implausible (valid but"
    " out of range: the rules answer), invalid (not JSON or not the schema), timeout,"
    " rate_limited (429), refused (401, 403: the key), server_error (5xx), client_error (other"
    " 4xx), network, breaker_open (no call made), no_time (no call made: the message's deadline"
    " leaves only the search's time).",
    ["outcome"],
)
LLM_CALL_SECONDS = Histogram(
    "gateway_llm_call_seconds",
    "Time of one language-model call, whatever its outcome (breaker_open is no call).",
    buckets=LATENCY_BUCKETS,
)
LLM_TOKENS = Counter(
    "gateway_llm_tokens_total",
    "Tokens the language model's answers report in their usage, by kind: prompt or completion.",
    ["kind"],
)
ACK_SECONDS = Histogram(
    "gateway_webhook_ack_seconds",
    "Time from a webhook's arrival to its answer.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "gateway_end_to_end_seconds",
    "Time from webhook received to the first reply accepted by the provider (or outbox).",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
MESSAGES_ENQUEUED = Counter(
    "gateway_messages_enqueued_total", "Messages written to the queue.", ["channel"]
)
DUPLICATES = Counter(
    "gateway_duplicates_dropped_total",
    "Redelivered messages dropped by dedupe (same provider message id).",
    ["channel"],
)
STATUSES = Counter(
    "gateway_message_statuses_total",
    "Delivery statuses reported by the provider.",
    ["channel", "status"],
)
# The statuses the Cloud API and Twilio document. A label takes only these (anything else is
# "other"): a status comes from the webhook as it is, and each new string would be one more
# series in every process for ever (a business's own app secret or auth token signs too).
KNOWN_STATUSES = frozenset(
    {
        # Cloud API
        "sent", "delivered", "read", "failed", "deleted",
        # Twilio
        "accepted", "scheduled", "canceled", "queued", "sending", "undelivered", "receiving",
        "received", "partially_delivered",
    }
)  # fmt: skip


def status_label(status: str) -> str:
    return status if status in KNOWN_STATUSES else "other"


PROCESSED = Counter(
    "gateway_messages_processed_total",
    "Queue entries finished by workers, by outcome.",
    ["outcome"],
)
RETRIES = Counter("gateway_retries_total", "Queue entries retried after a failure.")
DEAD_LETTERS = Counter(
    "gateway_dead_letters_total", "Records written to the dead-letter stream.", ["reason"]
)
SENDS = Counter(
    "gateway_sends_total",
    "Provider messages (a long reply is several) handed to a channel, by sender and outcome.",
    ["sender", "outcome"],
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Messages held back by a rate limit (user: not processed; business: waited for room).",
    ["scope"],
)

BUSINESS_CACHE = Counter(
    "gateway_business_cache_lookups_total",
    "Workers' business lookups, by result: hit, negative_hit (known to be unknown) or miss "
    "(LookupBusiness called).",
    ["result"],
)
BUSINESS_CACHE_EVICTIONS = Counter(
    "gateway_business_cache_evictions_total",
    "Workers' business cache entries evicted by the LRU bound.",
    ["kind"],
)
BUSINESS_CACHE_INVALIDATIONS = Counter(
    "gateway_business_cache_invalidations_total",
    "Workers' business cache invalidations, by origin (remote: the business service published "
    "a change; resubscribe: everything dropped; token_expired: the Graph API refused a token; "
    "credentials_refused: Twilio refused the SID and auth token).",
    ["origin"],
)
BUSINESS_CACHE_COUNTERS = CacheCounters(
    hits=BUSINESS_CACHE.labels("hit"),
    misses=BUSINESS_CACHE.labels("miss"),
    negative_hits=BUSINESS_CACHE.labels("negative_hit"),
    evicted_positive=BUSINESS_CACHE_EVICTIONS.labels("business"),
    evicted_negative=BUSINESS_CACHE_EVICTIONS.labels("negative"),
)


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """A labelled child, looked up once (``labels()`` takes a lock on every call)."""
    return metric.labels(*labels)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Snapshot(Collector):
    """Gauges computed just before the scrape (queue depth and friends)."""

    def __init__(self, gauges: Mapping[str, tuple[str, float]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, (help_text, value) in self._gauges.items():
            yield GaugeMetricFamily(name, help_text, value=value)


def render(gauges: Mapping[str, tuple[str, float]], *collectors: Collector) -> tuple[bytes, str]:
    """The exposition text of every process's metrics plus ``gauges`` and ``collectors`` (read
    now, by this process)."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    for collector in (_Snapshot(gauges), *collectors):
        registry.register(collector)
    if directory:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
