"""Prometheus metrics of the business service. No label ever carries a token or an identity."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from services.common.lookup_cache import CacheCounters, LookupCache

CACHE_HITS = Counter(
    "business_cache_hits_total", "Lookups answered from the cache with a business."
)
CACHE_MISSES = Counter("business_cache_misses_total", "Lookups that went to the database.")
CACHE_NEGATIVE_HITS = Counter(
    "business_cache_negative_hits_total", "Lookups answered from the cache with 'not found'."
)
CACHE_EVICTIONS = Counter(
    "business_cache_evictions_total", "Cache entries evicted by the LRU bound.", ["kind"]
)
CACHE_SIZE = Gauge("business_cache_size", "Businesses in the lookup cache.")
CACHE_NEGATIVE_SIZE = Gauge(
    "business_cache_negative_size", "Unknown identities remembered as 'not found'."
)
CACHE_CAPACITY = Gauge("business_cache_capacity", "The LRU bound (BUSINESS_CACHE_SIZE).")
CACHE_HIT_RATIO = Gauge(
    "business_cache_hit_ratio", "(hits + negative hits) / lookups since start-up."
)
CACHE_INVALIDATIONS = Counter(
    "business_cache_invalidations_total",
    "Invalidations applied, by origin (local write, remote replica, reconnect).",
    ["origin"],
)
CACHE_COUNTERS = CacheCounters(
    hits=CACHE_HITS,
    misses=CACHE_MISSES,
    negative_hits=CACHE_NEGATIVE_HITS,
    evicted_positive=CACHE_EVICTIONS.labels("business"),
    evicted_negative=CACHE_EVICTIONS.labels("negative"),
)
STORE_QUERIES = Counter(
    "business_store_queries_total", "Lookup queries that reached the datastore.", ["store"]
)
DECRYPT_FAILURES = Counter(
    "business_decrypt_failures_total", "Stored secrets that could not be decrypted."
)


def watch_cache(cache: LookupCache[Any]) -> None:
    """The gauges of the service's lookup cache, read at scrape time."""
    CACHE_SIZE.set_function(lambda: len(cache))
    CACHE_NEGATIVE_SIZE.set_function(lambda: cache.stats().negative_size)
    CACHE_CAPACITY.set(cache.capacity)
    CACHE_HIT_RATIO.set_function(lambda: cache.stats().hit_ratio)
