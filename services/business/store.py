"""The business store: one interface, a MongoDB implementation and an embedded SQLite one.

Both keep the same rules: a subdomain, a ``phone_number_id`` and a WhatsApp number each belong to
at most one business (a second claim raises :class:`AlreadyExists` naming the field), secrets
are stored as given (ciphertexts: encryption happens above the store), and ``find`` counts its
queries so tests and benchmarks can see what reached the database.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.business.metrics import STORE_QUERIES
from services.business.model import BusinessRecord
from services.common.business_keys import KeyKind


class UpdateTimeConflict(Exception):
    """A conditional update found the business changed since the caller read it."""

    def __init__(self, current: datetime) -> None:
        super().__init__(f"the business changed at {current.isoformat()}")
        self.current = current


# The step by which a write moves update_time past the stored one (MongoDB dates hold ms).
UPDATE_TIME_STEP = timedelta(milliseconds=1)


def next_update_time(given: datetime, stored: datetime) -> datetime:
    """``given``, but strictly after ``stored``: two writes that computed the same update_time
    (the same millisecond, from the same read) must still store two versions, or a conditional
    writer that read between them would miss the second."""
    return max(given, stored + UPDATE_TIME_STEP)


@dataclass(frozen=True)
class RememberedRequest:
    """A request id another call holds: what that request asked, and its answer (None while it
    is still being applied)."""

    fingerprint: str
    answer: bytes | None


class BusinessStore(abc.ABC):
    """What the service and the CLI need from a datastore."""

    kind: str = "abstract"

    def __init__(self) -> None:
        self.queries = 0  # lookups that reached the database (find), for tests and benchmarks
        self._query_counter = STORE_QUERIES.labels(self.kind)

    def _count_query(self) -> None:
        self.queries += 1
        self._query_counter.inc()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create tables/indexes (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise with a readable reason unless the datastore answers."""

    @abc.abstractmethod
    async def create(self, record: BusinessRecord) -> BusinessRecord: ...

    @abc.abstractmethod
    async def get(self, business_id: str) -> BusinessRecord | None: ...

    @abc.abstractmethod
    async def find(self, kind: KeyKind, value: str) -> BusinessRecord | None:
        """The business owning this identity, active or not (the caller decides)."""

    @abc.abstractmethod
    async def update(
        self,
        business_id: str,
        fields: dict[str, Any],
        secrets: dict[str, str | None] | None = None,
        expected_update_time: datetime | None = None,
    ) -> BusinessRecord | None:
        """Set ``fields`` (record attribute names) and ``secrets`` (None clears one).

        ``update_time`` must be among ``fields``; the store moves it past the stored one if it is
        not (:func:`next_update_time`, in the same atomic step). None when there is no such
        business. With
        ``expected_update_time``, atomically only if the stored update_time equals it, else
        :class:`UpdateTimeConflict` with the stored one.
        """

    def may_have_applied(self, error: BaseException) -> bool:
        """Whether a write that failed with ``error`` may have been applied all the same (its
        answer lost): its business is then invalidated as after a write. When unsure, yes."""
        return True

    @abc.abstractmethod
    async def list(
        self, *, after_id: str | None, limit: int, include_inactive: bool, servable_only: bool
    ) -> list[BusinessRecord]:
        """Businesses ordered by id, after ``after_id``."""

    @abc.abstractmethod
    async def replace_secret(self, business_id: str, field: str, old: str, new: str) -> bool:
        """Compare-and-set one secret (rotation): False when it changed meanwhile."""

    @abc.abstractmethod
    async def claim_request(
        self, request_id: str, fingerprint: str, claim: str, now: datetime, until: datetime
    ) -> RememberedRequest | None:
        """Take ``request_id`` for the call named ``claim``, atomically: None when it is now
        this call's (no entry, or only one that expired before ``now``), the entry otherwise.
        A claim lasts until ``until``; then another call may take it over."""

    @abc.abstractmethod
    async def finish_request(
        self, request_id: str, claim: str, answer: bytes, until: datetime
    ) -> None:
        """Remember the answer of the claimed request until ``until``."""

    @abc.abstractmethod
    async def release_request(self, request_id: str, claim: str) -> None:
        """Forget a claim whose request failed (a failure is not remembered: a retry runs)."""

    @abc.abstractmethod
    async def raw_dump(self) -> str:
        """Everything stored, as text (for the test that looks for plaintext at rest)."""

    def describe(self) -> str:
        """Where the data lives, without credentials."""
        return self.kind
