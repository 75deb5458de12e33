"""The gateway tests run against the whole stack of real processes (``tests/support/stack.py``)."""

from __future__ import annotations

from tests.support.stack import fake_clouds, gateway, log_dir, services

__all__ = ["fake_clouds", "gateway", "log_dir", "services"]
