"""The session service's own metrics (RPC latency by method comes from the shared runtime)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VERSION_CONFLICTS = Counter(
    "parley_session_version_conflicts_total",
    "Updates refused with ABORTED because the expected version was not the stored one.",
)
FALLBACK_ACTIVE = Gauge(
    "parley_session_fallback_active",
    "1 while Redis is unreachable and the in-memory fallback serves conversations.",
)
PENDING_WRITEBACKS = Gauge(
    "parley_session_fallback_pending_writebacks",
    "Conversations written during an outage and not yet written back to Redis.",
)
WRITEBACKS = Counter(
    "parley_session_writebacks_total",
    "Conversations written back to Redis after an outage.",
)
WRITEBACK_DISCARDED = Counter(
    "parley_session_writeback_discarded_total",
    "Outage writes and ends not written back because Redis held a higher version of the "
    "conversation, or another conversation started meanwhile.",
)
FALLBACK_DROPPED = Counter(
    "parley_session_fallback_dropped_total",
    "Conversations written during an outage and evicted from the bounded fallback store.",
)
CREATED = Counter(
    "parley_session_conversations_created_total",
    "Conversations created, by the store that created them.",
    ["store"],
)
EXPIRED = Counter(
    "parley_session_conversations_expired_total",
    "Conversations seen to have expired (pruned from the Redis index, or outage writes in memory).",
    ["store"],
)
