"""A dependency's failures, logged once per outage instead of once per failure.

Code that retries every second, or that fails on every request while Redis or the database is
down, would otherwise write a line each time: thousands in a few minutes of outage, burying
whatever else the log holds (the metrics count every failure; the log says what happened).
The first failure is logged at the given level, with ``repeats_logged_at: debug``; the repeats
are debug lines; the first success after them is one info line with how many calls failed and
for how long.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

Level = Literal["warning", "error"]


class OutageLog:
    def __init__(self, log: FilteringBoundLogger, recovered: str, level: Level = "warning") -> None:
        self.log = log
        self.recovered = recovered  # the event logged when a call works again
        self.level = level
        self.since: float | None = None  # monotonic time of the first failure of this outage
        self.failures = 0

    def failed(self, event: str, error: BaseException | str, **fields: Any) -> None:
        """``error``: an exception (its message, bounded, is logged) or what to log instead."""
        self.failures += 1
        if isinstance(error, BaseException):
            error = str(error)[:200] or type(error).__name__
        fields["error"] = error
        if self.since is None:
            self.since = time.monotonic()
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
