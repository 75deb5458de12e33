"""One way to run a process's main coroutine: on uvloop, as uvicorn runs the gateway's HTTP side.

uvloop does the event loop's work (socket reads and writes, timers, callbacks) in C: every
service here is I/O-bound Python, and the same work costs less CPU per message on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
