"""services.common.tasks.cancel_and_wait: background tasks stop even when one cancellation is
lost, as Python 3.11's asyncio.wait_for can lose it inside redis-py."""

from __future__ import annotations

import asyncio
import sys

import pytest
import structlog

from services.common.tasks import cancel_and_wait


async def stubborn(swallow: int) -> None:
    """Runs until cancelled, but takes the first ``swallow`` cancellations for a completed call,
    as ``asyncio.wait_for`` does on Python 3.11 when the call completes at that moment."""
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_a_task_that_loses_its_cancellations_still_stops() -> None:
    task = asyncio.create_task(stubborn(swallow=3))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled()


async def test_one_cancel_is_not_enough_for_such_a_task() -> None:
    """What the helper is for: cancelled once, the task goes on."""
    task = asyncio.create_task(stubborn(swallow=1))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done
    await cancel_and_wait(task)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps cancellations from 3.12")
async def test_python_3_11_wait_for_loses_a_cancellation_when_its_call_is_complete() -> None:
    """The CPython bug (gh-86296) behind the helper, made deterministic: the cancellation is
    requested while the awaited call is already complete."""
    finished = asyncio.get_running_loop().create_future()
    finished.set_result("done")
    reached_the_end = False

    async def caller() -> None:
        nonlocal reached_the_end
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.wait_for(finished, 5)
        reached_the_end = True

    await asyncio.create_task(caller())
    assert reached_the_end


async def test_none_and_finished_tasks_are_nothing_to_stop() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await asyncio.wait_for(cancel_and_wait(None, done), 1)


async def test_a_task_that_failed_is_logged_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails(), name="failing-loop")
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        await cancel_and_wait(task)
    assert [(e["event"], e["task"]) for e in logs] == [("background task failed", "failing-loop")]
