"""Stopping background tasks so that they really stop; running work that a caller's
cancellation must not cut in two.

Python 3.11's ``asyncio.wait_for`` returns the awaited call's result instead of raising when a
cancellation arrives just as that call completes (CPython gh-86296; ``wait_for`` was rewritten on
``asyncio.timeout`` in 3.12). redis-py runs every socket write of a client with a socket timeout
in ``wait_for``, so a task cancelled during a Redis call can lose its one ``cancel()`` and go on:
a loop that runs until it is cancelled then never ends, and neither does the shutdown that
awaits it. So cancellation here is delivered again until the task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("parley.tasks")

RECANCEL_SECONDS = 0.1

T = TypeVar("T")
# Strong references to the work of callers that stopped waiting: the loop keeps only weak ones.
_SHIELDED: set[asyncio.Task[Any]] = set()


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
        if ended is not None:
            _log_failure(ended)


async def run_shielded(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` in a task of its own that the caller's cancellation (its deadline) does not
    reach: the caller stops waiting, as cancelled callers do, while the work runs to its end. For
    a unit that must not be cut in two: a transaction, or a write and the invalidations that
    follow it. An error nobody is left to see is logged."""
    task = asyncio.get_running_loop().create_task(work)
    _SHIELDED.add(task)
    task.add_done_callback(_SHIELDED.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_failure)
        raise


async def wait_shielded() -> None:
    """Return once all the work :func:`run_shielded` started has ended (a shutdown, before it
    closes the stores and clients that work uses)."""
    while _SHIELDED:
        await asyncio.wait(set(_SHIELDED))


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task failed", task=task.get_name(), exc_info=error)
