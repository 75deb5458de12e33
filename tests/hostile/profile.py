"""How many examples the hostile-input tests try: ``ci`` (the default, so ``make test`` stays
fast) or ``full`` (``HYPOTHESIS_PROFILE=full``, or ``FAULTS_FULL=1`` as ``make test-faults`` sets).
Applied per test, so other hypothesis tests of the suite keep their own settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_FULL = os.environ.get("FAULTS_FULL", "") not in ("", "0", "false")
NAME = os.environ.get("HYPOTHESIS_PROFILE") or ("full" if _FULL else "ci")
EXAMPLES = {"ci": 1, "full": 10}.get(NAME, 1)  # a multiplier of each test's base count


def hostile(base: int) -> settings:
    """``base`` examples in CI, ten times as many in the full profile."""
    return settings(
        max_examples=base * EXAMPLES,
        deadline=None,  # real processes over real sockets on a shared machine
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        print_blob=True,
    )
