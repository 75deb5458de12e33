"""A circuit breaker per provider: one small class, because no maintained library fits.

Looked at (PyPI, November 2026): ``purgatory`` (asyncio, but last release 2024-11, no
configurable number of half-open probes and no view of the failure count for ListCircuitBreakers),
``aiobreaker`` (last release 2021), ``circuitbreaker`` (decorator-scoped state, no half-open probe
count, no reset by name), ``pybreaker`` (asyncio only through Tornado). What we need is small:

- CLOSED: calls flow; consecutive failures are counted; at ``failure_threshold`` → OPEN.
- OPEN: calls are refused until ``recovery_timeout`` has passed → HALF_OPEN.
- HALF_OPEN: up to ``half_open_probes`` calls at a time are let through; that many successes →
  CLOSED; any failure → OPEN again (with a fresh recovery timeout).
- A call's verdict counts only in the state that let it through: one let through before the
  breaker opened that ends while it is half-open is not a probe.

Single event loop, no awaits inside state changes, so no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum

from prometheus_client import Counter, Gauge

from parley.search.v1 import search_pb2

BREAKER_STATE = Gauge(
    "search_circuit_breaker_state",
    "Circuit breaker state by name: 0 closed, 1 open, 2 half-open.",
    ["name"],
)
BREAKER_TRANSITIONS = Counter(
    "search_circuit_breaker_transitions_total",
    "Circuit breaker state changes, by name and new state.",
    ["name", "state"],
)


class State(IntEnum):
    CLOSED = search_pb2.CIRCUIT_STATE_CLOSED
    OPEN = search_pb2.CIRCUIT_STATE_OPEN
    HALF_OPEN = search_pb2.CIRCUIT_STATE_HALF_OPEN


_GAUGE_VALUE = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}


class BreakerOpen(Exception):
    """The breaker refused the call."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.half_open_probes = half_open_probes
        self._clock = clock
        self._state = State.CLOSED
        self.failure_count = 0
        self._opened_at = 0.0  # clock time
        self.opened_wall_time: float | None = None  # epoch seconds, for reports
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._period = 0  # one more at every change of state
        # Read at scrape time: the move from OPEN to HALF_OPEN happens when the state is next
        # read, and with no search for a while a gauge set on moves stayed 1 (open) long after.
        BREAKER_STATE.labels(name).set_function(lambda: _GAUGE_VALUE[self._current()])

    def _current(self) -> State:
        """The state now, without moving to it (safe from the metrics server's thread)."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.recovery_timeout:
            return State.HALF_OPEN
        return self._state

    @property
    def state(self) -> State:
        if self._current() is not self._state:
            self._move(State.HALF_OPEN)
        return self._state

    def _move(self, state: State) -> None:
        if state is self._state:
            return
        self._state = state
        self._period += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        if state is State.OPEN:
            self._opened_at = self._clock()
            self.opened_wall_time = time.time()
        elif state is State.CLOSED:
            self.failure_count = 0
        BREAKER_TRANSITIONS.labels(self.name, state.name.lower()).inc()

    def allows(self) -> bool:
        """Whether a call would be let through now (without taking a probe slot)."""
        state = self.state
        return state is State.CLOSED or (
            state is State.HALF_OPEN and self._probes_in_flight < self.half_open_probes
        )

    def before_call(self) -> None:
        """Take permission for one call, or raise :class:`BreakerOpen`."""
        state = self.state
        if state is State.CLOSED:
            return
        if state is State.HALF_OPEN and self._probes_in_flight < self.half_open_probes:
            self._probes_in_flight += 1
            return
        raise BreakerOpen(f"circuit breaker {self.name} is {state.name.lower()}")

    def on_success(self) -> None:
        if self._state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.half_open_probes:
                self._move(State.CLOSED)
        else:
            self.failure_count = 0

    def on_failure(self) -> None:
        self.failure_count += 1
        if self._state is State.HALF_OPEN or (
            self._state is State.CLOSED and self.failure_count >= self.failure_threshold
        ):
            self._move(State.OPEN)

    def on_abandon(self) -> None:
        """A permitted call ended without a verdict (cancelled, or it never reached the
        provider): free its probe slot."""
        if self._state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def reset(self) -> None:
        self._move(State.CLOSED)
        self.failure_count = 0

    @asynccontextmanager
    async def guard(
        self,
        ok: tuple[type[BaseException], ...] = (),
        abandon: tuple[type[BaseException], ...] = (),
    ) -> AsyncIterator[None]:
        """Run one call under the breaker. A result, or an exception in ``ok`` (the provider
        answered that the request was wrong), is a success; an exception in ``abandon`` (the
        call never reached the provider) or a cancellation no verdict; any other exception a
        failure."""
        self.before_call()
        period = self._period

        def verdict(record: Callable[[], None]) -> None:
            # Given in another state than the one that let the call through (it was let through
            # before the breaker opened, or probed an earlier half-open spell), it says nothing
            # of this one, and its slot is not this one's: only this state's calls decide.
            if period == self._period:
                record()

        try:
            yield
        except ok:
            verdict(self.on_success)
            raise
        except abandon:
            verdict(self.on_abandon)
            raise
        except Exception:
            verdict(self.on_failure)
            raise
        except BaseException:
            verdict(self.on_abandon)
            raise
        else:
            verdict(self.on_success)

    def to_proto(self) -> search_pb2.CircuitBreaker:
        message = search_pb2.CircuitBreaker(
            name=self.name,
            state=search_pb2.CircuitState.Value(f"CIRCUIT_STATE_{self.state.name}"),
            failure_count=self.failure_count,
            failure_threshold=self.failure_threshold,
        )
        message.recovery_timeout.FromNanoseconds(int(self.recovery_timeout * 1e9))
        if self.opened_wall_time is not None:
            message.opened_time.FromNanoseconds(int(self.opened_wall_time * 1e9))
        return message
