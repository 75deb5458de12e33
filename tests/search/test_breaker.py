"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from parley.search.v1 import search_pb2
from services.common.errors import InvalidArgument
from services.search.breaker import BreakerOpen, CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("search_circuit_breaker_state", {"name": name})


async def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(RuntimeError):
        async with breaker.guard(ok=(InvalidArgument,)):
            raise RuntimeError("provider down")


async def succeed(breaker: CircuitBreaker) -> None:
    async with breaker.guard(ok=(InvalidArgument,)):
        pass


async def test_opens_at_the_threshold_and_recovers_through_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit_a", failure_threshold=3, recovery_timeout=30, clock=clock)
    for _ in range(2):
        await fail(breaker)
    assert breaker.state is State.CLOSED and breaker.failure_count == 2
    await fail(breaker)
    assert breaker.state is State.OPEN and gauge("unit_a") == 1
    with pytest.raises(BreakerOpen):
        await succeed(breaker)
    clock.now += 29.9
    assert breaker.state is State.OPEN
    clock.now += 0.2
    assert breaker.state is State.HALF_OPEN and gauge("unit_a") == 2
    await succeed(breaker)
    assert breaker.state is State.CLOSED and breaker.failure_count == 0 and gauge("unit_a") == 0


async def test_a_failed_probe_reopens_with_a_fresh_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit_b", failure_threshold=1, recovery_timeout=10, clock=clock)
    await fail(breaker)
    first_open = breaker.opened_wall_time
    clock.now += 10
    assert breaker.state is State.HALF_OPEN
    await fail(breaker)
    assert breaker.state is State.OPEN
    assert breaker.opened_wall_time is not None and first_open is not None
    assert breaker.opened_wall_time >= first_open
    clock.now += 9
    assert breaker.state is State.OPEN


async def test_half_open_lets_only_the_configured_number_of_probes_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        "unit_c", failure_threshold=1, recovery_timeout=1, half_open_probes=2, clock=clock
    )
    await fail(breaker)
    clock.now += 1
    release = asyncio.Event()

    async def probe() -> None:
        async with breaker.guard():
            await release.wait()

    probes = [asyncio.create_task(probe()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not breaker.allows()
    with pytest.raises(BreakerOpen):
        await succeed(breaker)
    release.set()
    await asyncio.gather(*probes)
    assert breaker.state is State.CLOSED  # two successful probes close it


async def test_only_the_probes_decide_half_open() -> None:
    """A call let through before the breaker opened that ends while it is half-open is no
    verdict: only the probes close or reopen it, and they stay as many as configured. (Was a bug,
    with SEARCH_BREAKER_RECOVERY_SECONDS shorter than a call's time limit: such a call was taken
    for a probe, so its success closed the breaker while the probe was still out, or freed the
    probe's slot for a second probe; its failure reopened it.)"""
    clock = Clock()
    breaker = CircuitBreaker(
        "unit_h", failure_threshold=1, recovery_timeout=1, half_open_probes=1, clock=clock
    )
    outcomes = {name: asyncio.Event() for name in ("early_ok", "early_failed", "probe")}

    async def call(name: str, fails: bool = False) -> None:
        async with breaker.guard():
            await outcomes[name].wait()
            if fails:
                raise RuntimeError("provider down")

    early = [
        asyncio.create_task(call("early_ok")),
        asyncio.create_task(call("early_failed", fails=True)),
    ]
    await asyncio.sleep(0)
    await fail(breaker)  # opens it while the early calls are out
    clock.now += 1
    assert breaker.state is State.HALF_OPEN
    probe = asyncio.create_task(call("probe"))
    await asyncio.sleep(0)
    outcomes["early_ok"].set()
    await early[0]
    assert breaker.state is State.HALF_OPEN and not breaker.allows()
    outcomes["early_failed"].set()
    with pytest.raises(RuntimeError):
        await early[1]
    assert breaker.state is State.HALF_OPEN and not breaker.allows()
    outcomes["probe"].set()
    await probe
    assert breaker.state is State.CLOSED


async def test_success_resets_the_count_and_client_errors_do_not_count() -> None:
    breaker = CircuitBreaker("unit_d", failure_threshold=2)
    await fail(breaker)
    await succeed(breaker)
    assert breaker.failure_count == 0
    for _ in range(5):
        with pytest.raises(InvalidArgument):
            async with breaker.guard(ok=(InvalidArgument,)):
                raise InvalidArgument("origin", "bad")
    assert breaker.state is State.CLOSED


async def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit_e", failure_threshold=1, recovery_timeout=1, clock=clock)
    await fail(breaker)
    clock.now += 1

    async def hang() -> None:
        async with breaker.guard():
            await asyncio.sleep(60)

    task = asyncio.create_task(hang())
    await asyncio.sleep(0)
    assert not breaker.allows()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is State.HALF_OPEN and breaker.allows()


async def test_a_call_abandoned_before_the_provider_is_no_verdict() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit_g", failure_threshold=1, recovery_timeout=1, clock=clock)
    await fail(breaker)
    clock.now += 1
    for _ in range(3):  # e.g. no rate-limit slot came free in time
        with pytest.raises(TimeoutError):
            async with breaker.guard(abandon=(TimeoutError,)):
                raise TimeoutError
    assert breaker.state is State.HALF_OPEN and breaker.allows() and breaker.failure_count == 1


async def test_reset_closes_and_the_proto_reports_everything() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit_f", failure_threshold=1, recovery_timeout=30, clock=clock)
    await fail(breaker)
    report = breaker.to_proto()
    assert report.state == search_pb2.CIRCUIT_STATE_OPEN
    assert (report.failure_count, report.failure_threshold) == (1, 1)
    assert report.recovery_timeout.seconds == 30 and report.opened_time.seconds > 0
    breaker.reset()
    report = breaker.to_proto()
    assert report.state == search_pb2.CIRCUIT_STATE_CLOSED and report.failure_count == 0
