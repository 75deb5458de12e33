"""One way to build a Redis (or Valkey) client from a URL, for every service that uses one.

Explicit connect and socket timeouts, a bounded pool, and retries with exponential backoff on
connection errors, so a slow or absent Redis answers quickly instead of hanging a caller.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 1.0
DEFAULT_MAX_CONNECTIONS = 64


def make_redis(
    url: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    retries: int = 2,
    decode_responses: bool = False,
) -> redis.Redis:
    """A client for ``redis://`` or ``rediss://`` (TLS) URLs."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "max_connections": max_connections,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
        "decode_responses": decode_responses,
    }
    return redis.Redis.from_url(url, **options)


async def ping(client: redis.Redis) -> None:
    """Readiness check: raise with a readable reason unless Redis answers PING."""
    try:
        await client.ping()
    except Exception as error:
        raise ConnectionError(f"Redis did not answer PING: {error}") from None
