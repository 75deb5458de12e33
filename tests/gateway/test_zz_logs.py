"""Runs last in this directory: no secret of the run appears in any captured log, and phone
numbers are masked."""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import SECRETS, USERS


def test_no_secret_in_any_captured_log(log_dir: Path) -> None:
    logs = {path.name: path.read_text(errors="replace") for path in log_dir.glob("*.log")}
    assert logs, "no logs captured"
    leaks = [
        (name, secret[:6]) for name, text in logs.items() for secret in SECRETS if secret in text
    ]
    assert leaks == []
    gateway_logs = "".join(
        text
        for name, text in logs.items()
        if not name.startswith(("session", "business", "search"))
    )
    assert "webhook accepted" in gateway_logs  # the scan did see the gateway's work


def test_phone_numbers_are_masked_in_the_gateway_logs(log_dir: Path) -> None:
    services = ("session", "business", "search")
    gateway_logs = "".join(
        path.read_text(errors="replace")
        for path in log_dir.glob("*.log")
        if not path.name.startswith(services)
    )
    assert USERS, "no users were made up"
    assert [user for user in USERS if user in gateway_logs] == []
