"""OutageLog: one line when a dependency starts failing, one when it works again."""

from __future__ import annotations

import time

import structlog

from services.common.outage import OutageLog

log = structlog.get_logger("test.outage")


def test_an_outage_is_one_line_at_its_start_and_one_at_its_end() -> None:
    outage = OutageLog(log, "store reachable again")
    with structlog.testing.capture_logs() as logs:
        outage.worked()  # no outage under way: nothing to say
        for n in range(5):
            outage.failed("store call failed", ConnectionError(f"refused {n}"), op="get")
        outage.worked()
        outage.worked()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("store call failed", "warning"),
        *[("store call failed", "debug")] * 4,
        ("store reachable again", "info"),
    ]
    first, *_, recovered = logs
    assert first == {
        "event": "store call failed",
        "log_level": "warning",
        "op": "get",
        "error": "refused 0",
        "repeats_logged_at": "debug",
    }
    assert recovered["failures"] == 5 and recovered["seconds"] >= 0


def test_the_next_outage_is_told_again_at_the_chosen_level() -> None:
    outage = OutageLog(log, "queue reachable again", level="error")
    with structlog.testing.capture_logs() as logs:
        outage.failed("queue unavailable", TimeoutError())
        outage.worked()
        outage.failed("queue unavailable", "OperationFailure")  # what to log instead of a message
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("queue unavailable", "error"),
        ("queue reachable again", "info"),
        ("queue unavailable", "error"),
    ]
    assert logs[0]["error"] == "TimeoutError"  # an exception without a message: its type
    assert logs[1]["failures"] == 1
    assert logs[2]["error"] == "OperationFailure"


def test_a_long_message_is_cut() -> None:
    outage = OutageLog(log, "back")
    with structlog.testing.capture_logs() as logs:
        outage.failed("down", ConnectionError("x" * 1000))
    assert len(logs[0]["error"]) == 200


def test_with_retry_after_a_failure_is_stepped_around_for_that_long() -> None:
    outage = OutageLog(log, "back", retry_after=0.05)
    assert outage.retry_due
    with structlog.testing.capture_logs():
        outage.failed("down", ConnectionError())
        assert not outage.retry_due
        time.sleep(0.06)
        assert outage.retry_due
        outage.failed("down", ConnectionError())  # the retry failed: another window
        assert not outage.retry_due
    assert OutageLog(log, "back").retry_due  # without retry_after: always due
