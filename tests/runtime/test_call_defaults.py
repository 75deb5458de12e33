"""with_call_defaults: every call gets a deadline and the current request id, and waits for a
connection within that deadline unless told otherwise."""

from __future__ import annotations

from typing import Any

from services.common.clients import request_id_var, with_call_defaults
from services.common.interceptors import REQUEST_ID_KEY


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def Method(self, request: Any, **options: Any) -> str:
        self.calls.append((request, options))
        return "answer"


def test_calls_get_the_default_deadline_and_the_request_id_once() -> None:
    recorder = Recorder()
    stub = with_call_defaults(recorder, 1.5)
    token = request_id_var.set("rid-1")
    try:
        assert stub.Method("r1") == "answer"
        stub.Method("r2", timeout=0.2, metadata=(("x", "y"),), wait_for_ready=True)
        stub.Method("r3", metadata=((REQUEST_ID_KEY, "given"),), wait_for_ready=False)
    finally:
        request_id_var.reset(token)
    stub.Method("r4")
    (_, first), (_, second), (_, third), (_, fourth) = recorder.calls
    assert first == {
        "timeout": 1.5,
        "metadata": ((REQUEST_ID_KEY, "rid-1"),),
        "wait_for_ready": True,
    }
    assert second == {
        "timeout": 0.2,
        "metadata": (("x", "y"), (REQUEST_ID_KEY, "rid-1")),
        "wait_for_ready": True,
    }
    assert third["metadata"] == ((REQUEST_ID_KEY, "given"),)  # a caller's own id is kept
    assert third["wait_for_ready"] is False  # and its own choice
    assert fourth == {"timeout": 1.5, "metadata": None, "wait_for_ready": True}  # no id invented
