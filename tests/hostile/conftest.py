"""The real processes the hostile-input tests attack: the gateway tests' whole-stack fixtures
(real Valkey, session, business and search processes, the fake clouds), reused as they are."""

from __future__ import annotations

from tests.support.stack import fake_clouds, log_dir, services

__all__ = ["fake_clouds", "log_dir", "services"]
