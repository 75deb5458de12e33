"""Stopping background tasks so that they really stop.

Python 3.11's ``asyncio.wait_for`` returns the awaited call's result instead of raising when a
cancellation arrives just as that call completes (CPython gh-86296; ``wait_for`` was rewritten on
``asyncio.timeout`` in 3.12). redis-py runs every socket write of a client with a socket timeout
in ``wait_for``, so a task cancelled during a Redis call can lose its one ``cancel()`` and go on:
a loop that runs until it is cancelled then never ends, and neither does the shutdown that
awaits it. So cancellation here is delivered again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger("parley.tasks")

RECANCEL_SECONDS = 0.1


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None: nothing to stop) and return once every one has ended, cancelling
    again any that is still running after :data:`RECANCEL_SECONDS`. A task that ended with an
    error is logged: nothing else would ever see it."""
    running = {task for task in tasks if task is not None and not task.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=RECANCEL_SECONDS)
    for ended in tasks:
        if ended is None or ended.cancelled():
            continue
        error = ended.exception()
        if error is not None:
            log.error("background task failed", task=ended.get_name(), exc_info=error)
