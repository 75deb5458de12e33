"""A dependency's failures, logged once per outage instead of once per failure.

Code that retries every second, or that fails on every request while Redis or the database is
down, would otherwise write a line each time: thousands in a few minutes of outage, burying
whatever else the log holds (the metrics count every failure; the log says what happened).
The first failure is logged at the given level, with ``repeats_logged_at: debug``; the repeats
are debug lines; the first success after them is one info line with how many calls failed and
for how long.

With ``retry_after``, callers that can do without the dependency (a cache, a shared rate limit)
step around it for that many seconds after each failure (:attr:`OutageLog.retry_due`) instead
of each waiting for its timeouts.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

Level = Literal["warning", "error"]


class OutageLog:
    def __init__(
        self,
        log: FilteringBoundLogger,
        recovered: str,
        level: Level = "warning",
        retry_after: float = 0.0,
    ) -> None:
        self.log = log
        self.recovered = recovered  # the event logged when a call works again
        self.level = level
        self.retry_after = retry_after
        self.since: float | None = None  # monotonic time of the first failure of this outage
        self.failures = 0
        self._retry_at = 0.0

    @property
    def retry_due(self) -> bool:
        """Whether to call the dependency now: ``retry_after`` seconds past the last failure."""
        return time.monotonic() >= self._retry_at

    def failed(self, event: str, error: BaseException | str, **fields: Any) -> None:
        """``error``: an exception (its message, bounded, is logged) or what to log instead."""
        now = time.monotonic()
        self.failures += 1
        self._retry_at = now + self.retry_after
        if isinstance(error, BaseException):
            error = str(error)[:200] or type(error).__name__
        fields["error"] = error
        if self.since is None:
            self.since = now
            getattr(self.log, self.level)(event, repeats_logged_at="debug", **fields)
        else:
            self.log.debug(event, **fields)

    def worked(self) -> None:
        """A call worked: ends the outage, if one was under way."""
        if self.since is not None:
            self.log.info(
                self.recovered,
                failures=self.failures,
                seconds=round(time.monotonic() - self.since, 1),
            )
            self.since, self.failures = None, 0
