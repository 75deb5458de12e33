"""The suite's own hygiene: what one test leaves behind must not reach another."""

from __future__ import annotations

import redis

from tests.support.processes import SHARED_DATABASES, Valkey
from tests.support.stack import next_db


def test_each_gateway_database_is_handed_out_once_and_none_is_named_by_hand(
    valkey: Valkey,
) -> None:
    numbers = [next_db() for _ in range(40)]  # more than the 16 a Valkey has by default
    assert len(set(numbers)) == len(numbers), numbers
    assert min(numbers) >= 16, numbers  # 0-15: the services' and tests' fixed numbers
    assert valkey.client().config_get("databases") == {"databases": str(SHARED_DATABASES)}
    client = redis.Redis(port=valkey.port, db=max(numbers))
    try:
        assert client.ping()
    finally:
        client.close()
