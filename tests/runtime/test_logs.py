"""The fields every log line carries (the call's fields, level, timestamp in the same ISO form as
structlog's, right across second boundaries, and service), and access lines written in batches."""

from __future__ import annotations

import asyncio
import datetime
import errno
import io
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import structlog
import structlog.testing

from services.common import logs
from services.common.logs import (
    StandardFields,
    bind_call_fields,
    iso_timestamp,
    reset_call_fields,
)
from services.common.settings import CommonSettings, load_settings

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_timestamps_match_the_clock_across_second_boundaries() -> None:
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
        text = iso_timestamp(now)
        assert ISO.fullmatch(text), text
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert abs(parsed.timestamp() - now) < 2e-6, (text, now)


def test_a_line_is_stamped_now_unless_it_brings_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs.time, "time", lambda: 1_700_000_000.5)
    fields = StandardFields("test")
    assert fields(None, "info", {})["timestamp"] == "2023-11-14T22:13:20.500000Z"
    assert fields(None, "info", {"timestamp": "given"})["timestamp"] == "given"


def test_lines_carry_the_call_fields_level_and_service_as_structlog_names_them() -> None:
    fields = StandardFields("session")
    outer = bind_call_fields(request_id="r-1", rpc="GetConversation")
    try:
        inner = bind_call_fields(rpc="UpdateConversation", partition=3)
        line = fields(None, "warn", {"event": "x", "request_id": "own"})
        assert line["request_id"] == "own"  # the event's own key wins
        assert (line["rpc"], line["partition"]) == ("UpdateConversation", 3)
        assert (line["level"], line["service"]) == ("warning", "session")
        reset_call_fields(inner)
        line = fields(None, "exception", {"event": "y"})
        assert (line["request_id"], line["rpc"], line["level"]) == (
            "r-1",
            "GetConversation",
            "error",
        )
        assert "partition" not in line
    finally:
        reset_call_fields(outer)
    assert "request_id" not in fields(None, "info", {"event": "z"})


def test_deferred_lines_keep_their_time_and_call_fields_and_go_out_in_one_batch() -> None:
    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        deferred = logs.DeferredLog(structlog.get_logger("test"))
        with structlog.testing.capture_logs(processors=[StandardFields("svc")]) as lines:
            for n in range(3):
                token = bind_call_fields(request_id=f"r-{n}", rpc="Get")
                try:
                    deferred.info("rpc", code="OK", n=n)
                finally:
                    reset_call_fields(token)
                await asyncio.sleep(0.001)
            before = list(lines)  # nothing written yet
            await asyncio.sleep(logs.DEFERRED_FLUSH_SECONDS * 3)
        return before, lines

    before, lines = asyncio.run(scenario())
    assert before == []
    assert [line["request_id"] for line in lines] == ["r-0", "r-1", "r-2"]
    assert all(line["event"] == "rpc" and line["service"] == "svc" for line in lines)
    stamps = [str(line["timestamp"]) for line in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # each its own recording time


def test_deferred_lines_are_flushed_when_many_wait_and_without_an_event_loop() -> None:
    deferred = logs.DeferredLog(structlog.get_logger("test"))
    with structlog.testing.capture_logs() as lines:
        deferred.info("rpc", n=1)  # no running loop: nothing would flush it later
        assert len(lines) == 1

        async def burst() -> int:
            for n in range(logs.DEFERRED_MAX_PENDING):
                deferred.info("rpc", n=n)
            return len(lines)

        assert asyncio.run(burst()) == 1 + logs.DEFERRED_MAX_PENDING


class RecordingStdout:
    """A stdout whose ``buffer`` keeps each write, as the JSON logger writes bytes to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffer = self

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        pass


@pytest.fixture
def json_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingStdout]:
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setenv("LOG_FORMAT", "json")
    config = structlog.get_config()
    logs.configure_logging("svc", load_settings(CommonSettings))
    yield stdout
    structlog.configure(**config)


def test_deferred_lines_are_json_lines_in_one_write(json_logging: RecordingStdout) -> None:
    deferred = logs.DeferredLog(structlog.get_logger("parley.access"))
    deferred._pending = [  # as recorded by three calls
        (1_763_800_000.25 + n, "rpc", {"request_id": f"r-{n}"}, {"code": "OK", "n": n})
        for n in range(3)
    ]
    deferred.flush()
    assert len(json_logging.writes) == 1
    lines = [orjson.loads(line) for line in json_logging.writes[0].splitlines()]
    assert lines == [
        {
            "request_id": f"r-{n}",
            "code": "OK",
            "n": n,
            "timestamp": f"2025-11-22T08:26:{40 + n}.250000Z",
            "event": "rpc",
            "level": "info",
            "service": "svc",
        }
        for n in range(3)
    ]


def test_deferred_lines_below_the_level_are_dropped(
    json_logging: RecordingStdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    logs.configure_logging("svc", load_settings(CommonSettings))
    deferred = logs.DeferredLog(structlog.get_logger("parley.access"))
    deferred.info("rpc", code="OK")
    deferred.flush()
    assert json_logging.writes == []


def test_log_output_drops_and_counts_what_a_gone_reader_cannot_take() -> None:
    reader, writer = os.pipe()
    stream = os.fdopen(writer, "wb", buffering=0)
    output = logs.LogOutput(stream)
    dropped = logs.LOG_WRITES_DROPPED._value.get()
    try:
        assert output.write(b"first\n") == 6
        assert os.read(reader, 100) == b"first\n"
        os.close(reader)  # the reader goes away: EPIPE from now on
        assert output.write(b"second\n") == 7  # no error for whoever logged
        output.flush()
        # The descriptor now writes to /dev/null, for the interpreter's flush at exit too.
        assert os.fstat(writer).st_rdev == os.stat(os.devnull).st_rdev
        assert output.write(b"third\n") == 6
        assert logs.LOG_WRITES_DROPPED._value.get() - dropped == 2
    finally:
        logs._gone.discard(writer)
        stream.close()


def test_log_output_drops_a_write_that_fails_otherwise_and_keeps_writing() -> None:
    class Full(io.BytesIO):
        failing = True

        def write(self, data: Any) -> int:
            if self.failing:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    full = Full()
    output = logs.LogOutput(full)
    dropped = logs.LOG_WRITES_DROPPED._value.get()
    assert output.write(b"lost\n") == 5
    full.failing = False  # space again: lines go out again
    output.write(b"kept\n")
    assert full.getvalue() == b"kept\n"
    assert logs.LOG_WRITES_DROPPED._value.get() - dropped == 1


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_httpx_request_lines_are_shown_at_debug_only(
    level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx logs every request with its full URL at INFO (a base URL's credentials too)."""
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", level)
    config = structlog.get_config()
    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level, logging.getLogger().level
    try:
        logs.configure_logging("svc", load_settings(CommonSettings))
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        with httpx.Client(transport=transport) as client:
            client.get("http://user:secret@provider.test/v1/send")
        written = "".join(  # the standard library's lines are written as str
            w.decode() if isinstance(w, bytes) else w for w in stdout.writes
        )
        assert ("HTTP Request" in written) is (level == "DEBUG"), written
    finally:
        httpx_logger.setLevel(before[0])
        logging.getLogger().setLevel(before[1])
        structlog.configure(**config)


def test_a_library_s_error_line_carries_its_traceback(json_logging: RecordingStdout) -> None:
    """uvicorn logs an application's unexpected exception (the 500 a client got) through the
    standard library with ``exc_info``: the line must say where it was raised. (Was a bug: the
    standard library's lines went out with ``exc_info`` as three reprs, ``<traceback object at
    0x…>`` among them, so a gateway 500 left no trace of its cause.)"""

    def fails() -> None:
        raise ZeroDivisionError("the cause")

    try:
        fails()
    except ZeroDivisionError as error:
        # As uvicorn's "uvicorn.error" logs it (a logger of the test's own: another test's
        # in-process uvicorn may have configured that one to write elsewhere).
        library = logging.getLogger("tests.runtime.library")
        library.error("Exception in ASGI application\n", exc_info=error)
    written = "".join(w.decode() if isinstance(w, bytes) else w for w in json_logging.writes)
    (line,) = [orjson.loads(raw) for raw in written.splitlines()]
    assert line["event"] == "Exception in ASGI application\n"
    assert line["level"] == "error"
    assert "exc_info" not in line
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert 'raise ZeroDivisionError("the cause")' in line["exception"]
    assert line["exception"].rstrip().endswith("ZeroDivisionError: the cause")


def test_a_send_target_in_a_line_or_an_error_shows_no_credential(
    json_logging: RecordingStdout,
) -> None:
    """The gateway's send target holds the business's tokens: its repr (a console line, an
    exception, a traceback) masks them, and a JSON line renders it by that repr, not field by
    field. (Was a bug: both showed every token in full, and the user's number.)"""
    from services.gateway.senders.base import Target

    target = Target(
        channel="twilio",
        business_id="b-1",
        user_id="+14155550123",
        channel_identity="+14155238886",
        access_token="EAAG-cloud-token",
        twilio_account_sid="AC123",
        twilio_auth_token="twilio-auth-token",
    )
    error = RuntimeError(f"send failed for {target}")
    structlog.get_logger("test").warning("send failed", target=target, error=str(error))
    shown = [b"".join(json_logging.writes).decode(), repr(target), str(target), str(error)]
    for text in shown:
        assert "EAAG-cloud-token" not in text and "twilio-auth-token" not in text, text
        assert "+14155550123" not in text, text
    (line,) = [orjson.loads(raw) for raw in b"".join(json_logging.writes).splitlines()]
    assert "access_token='***'" in line["target"] and "business_id='b-1'" in line["target"]
