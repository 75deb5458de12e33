"""The log timestamp: the same ISO form as structlog's, right across second boundaries."""

from __future__ import annotations

import datetime
import re

import pytest

from services.common import logs
from services.common.logs import UtcTimestamp

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_timestamps_match_the_clock_across_second_boundaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stamp = UtcTimestamp()
    # Within one second, across a boundary, back again (another thread's older clock reading),
    # and across midnight at the end of a year.
    for now in (
        1_700_000_000.0,
        1_700_000_000.25,
        1_700_000_000.999_999,
        1_700_000_001.000_001,
        1_700_000_000.5,
        1_798_761_599.75,
        1_798_761_600.125,
    ):
        monkeypatch.setattr(logs.time, "time", lambda now=now: now)
        text = stamp(None, "info", {})["timestamp"]
        assert ISO.fullmatch(text), text
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert abs(parsed.timestamp() - now) < 2e-6, (text, now)
