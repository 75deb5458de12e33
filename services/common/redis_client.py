"""One way to build a Redis (or Valkey) client from a URL, for every service that uses one.

Explicit connect and socket timeouts, a bounded pool, and retries with exponential backoff on
connection errors, so a slow or absent Redis answers quickly instead of hanging a caller.

URL forms (user, password and query options as in redis-py's ``from_url``):

- ``redis://[user:password@]host:6379/0`` plain TCP; ``rediss://…`` the same over TLS
  (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem`` …).
- ``redis+sentinel://[user:password@]host:26379,host2:26379/mymaster/0`` a master found
  through Sentinel (failover followed); ``rediss+sentinel://`` talks TLS to the master.
  ``?sentinel_password=…`` when the Sentinels themselves require a password.
- ``redis+cluster://[user:password@]host:7000,host:7001`` Redis Cluster (any reachable nodes;
  the rest are discovered); ``rediss+cluster://`` over TLS. Cluster has only database 0.

A query option the client does not take, or a database that is no number, is a ``ValueError``
here, at start, not a ``TypeError`` at the first command.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import random
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    BlockingConnectionPool,
    SSLConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import ResourceExhausted, ServiceError, Unavailable

log = structlog.get_logger("parley.redis")

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 1.0
DEFAULT_MAX_CONNECTIONS = 64
# How long a caller waits for a free pooled connection before failing (standalone/Sentinel).
DEFAULT_POOL_TIMEOUT = 5.0

RedisClient: TypeAlias = redis.Redis | RedisCluster
"""What :func:`make_redis` returns: a standalone/Sentinel client, or a Cluster client."""

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel pool that waits up to ``timeout`` for a free connection, as the standalone
    client's does; redis-py's own fails every call past ``max_connections`` at once with a
    ``ConnectionError``, which callers take for Redis gone."""


class _LastFreeFirst(collections.deque):  # type: ignore[type-arg]
    """A Cluster node's free connections, the one released last taken first (redis-py takes
    the oldest). On an ASK redirect (a slot migrating) redis-py sends ``ASKING`` and then the
    command as two calls, each taking a free connection; ``ASKING`` holds for its own
    connection only, so with several free the command went on another, was answered MOVED
    back to the old node, which said ASK again, until the redirects ran out (``TTL
    exhausted``). Taken last-first, the command gets the connection ``ASKING`` just left, as
    nothing else runs between the two."""

    def popleft(self) -> Any:
        return self.pop()


class _WaitingCluster(RedisCluster):
    """``RedisCluster`` whose call waits up to ``pool_timeout`` for a free connection of the
    node it goes to. redis-py's node pool fails a call past ``max_connections`` at once
    (``MaxConnectionsError``, a ``ConnectionError``), which callers take for Redis gone."""

    def __init__(self, *args: Any, pool_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_timeout = pool_timeout

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        learning = self._initialize
        await super().initialize(*args, **kwargs)
        if learning:  # the nodes of the slot map learnt just now (new ones among them)
            for node in self.get_nodes():
                if not isinstance(node._free, _LastFreeFirst):
                    node._free = _LastFreeFirst(node._free, maxlen=node._free.maxlen)
        return self

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pool_timeout
        pause = 0.001
        while True:
            try:
                return await super()._execute_command(target_node, *args, **kwargs)
            except MaxConnectionsError:
                # Raised before the command was sent (a redirect before it was not applied):
                # safe to send once a connection is free. The node's pool says nothing when
                # one is, so look again after a short pause, growing to 50 ms.
                if loop.time() + pause > deadline:
                    raise
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(pause * 2, 0.05)


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``user:pw@h1:1,h2:2`` → [(h1, 1), (h2, 2)] (IPv6 in brackets allowed)."""
    hostpart = netloc.rpartition("@")[2]
    hosts = []
    for item in hostpart.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            hosts.append((unquote(host), int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"bad port in Redis URL host {item!r}") from None
    if not hosts:
        raise ValueError("Redis URL names no host")
    return hosts


def _parameters(cls: type) -> set[str]:
    """The keyword parameters of ``cls.__init__`` and of its bases' (``**kwargs`` passes on)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(
                p.name
                for p in inspect.signature(init).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
            )
    return names


def _check_options(url: str, tls: bool, accepted: set[str]) -> None:
    """Refuse a query option the client would not take: redis-py passes every option it does
    not parse itself on to the connection, which fails at its first use (a ``TypeError``), so
    a typo or a TLS option on a plain ``redis://`` left a service never ready instead of
    stopping it at start. ``accepted``: the client's keyword parameters, its ``ssl_*`` ones
    taken only with TLS. Names only in the message: the values may hold a password."""
    names = set(parse_qs(urlsplit(url).query))
    allowed = {
        n for n in accepted | URL_QUERY_ARGUMENT_PARSERS.keys() if tls or not n.startswith("ssl")
    }
    unknown = sorted(names - allowed)
    if unknown:
        hint = "" if tls or not any(n.startswith("ssl") for n in unknown) else "; TLS needs rediss"
        raise ValueError(f"Redis URL option not understood: {', '.join(unknown)}{hint}")


def _common_kwargs(url: str, tls: bool) -> dict[str, Any]:
    """Credentials and query options of a multi-host URL, parsed as redis-py parses one host."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    single = urlunsplit(
        (
            "rediss" if tls else "redis",
            f"{userinfo}@localhost" if userinfo else "localhost",
            "",
            parts.query,
            "",
        )
    )
    kwargs: dict[str, Any] = dict(parse_url(single))
    for key in ("host", "port", "db"):
        kwargs.pop(key, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def make_client(
    url: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    retries: int = 2,
    decode_responses: bool = False,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> RedisClient:
    """A client for any of the URL forms in this module's docstring, typed as what it is.

    ``max_connections`` bounds the pool (per node for Cluster). A call waits up to
    ``pool_timeout`` for a free connection rather than failing a burst at once.
    """
    scheme = urlsplit(url).scheme.lower()
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
    }
    retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), retries)
    options: dict[str, Any] = {
        **timeouts,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "decode_responses": decode_responses,
    }
    if scheme in CLUSTER_SCHEMES:
        tls = CLUSTER_SCHEMES[scheme]
        _check_options(url, tls, _parameters(RedisCluster))
        kwargs = _common_kwargs(url, tls)
        path = urlsplit(url).path.strip("/")
        if path not in ("", "0"):
            raise ValueError("Redis Cluster has only database 0")
        nodes = [ClusterNode(host, port) for host, port in _hosts(urlsplit(url).netloc, 6379)]
        return _WaitingCluster(
            startup_nodes=nodes,
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            **options,
            **kwargs,
        )
    if scheme in SENTINEL_SCHEMES:
        parts = urlsplit(url)
        tls = SENTINEL_SCHEMES[scheme]
        _check_options(url, tls, _parameters(SSLConnection) | {"sentinel_password"})
        kwargs = _common_kwargs(url, tls)
        segments = [unquote(p) for p in parts.path.split("/") if p]
        if not segments:
            raise ValueError("Sentinel URL needs the master's name: redis+sentinel://h:26379/name")
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ValueError("Sentinel URL path is /<master name>[/<database number>]")
        service_name = segments[0]
        db = int(segments[1]) if len(segments) > 1 else 0
        sentinel_kwargs: dict[str, Any] = dict(timeouts)
        if "sentinel_password" in kwargs:
            sentinel_kwargs["password"] = kwargs.pop("sentinel_password")
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _hosts(parts.netloc, 26379), sentinel_kwargs=sentinel_kwargs, **timeouts
        )
        client: redis.Redis = sentinel.master_for(
            service_name,
            db=db,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections,
            timeout=pool_timeout,
            health_check_interval=30,
            **options,
            **kwargs,
        )
        return client
    if scheme in ("redis", "rediss"):
        # redis-py reads "/zero" as database 0 and "/1/2" as 12, without a word.
        path = urlsplit(url).path.strip("/")
        if path and not path.isdigit():
            raise ValueError("Redis URL path is a database number: redis://host:6379/0")
        _check_options(url, scheme == "rediss", _parameters(SSLConnection))
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        health_check_interval=30,
        **options,
    )
    return redis.Redis.from_pool(pool)


def make_redis(
    url: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    retries: int = 2,
    decode_responses: bool = False,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> redis.Redis:
    """:func:`make_client`, typed as ``redis.Redis`` so existing callers keep type-checking.

    For a Cluster URL the object is a ``RedisCluster``: the same command methods, but
    pipelines and transactions must stay within one hash slot. Code that cares uses
    :func:`make_client` (or ``isinstance(client, RedisCluster)``).
    """
    client = make_client(
        url,
        connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        retries=retries,
        decode_responses=decode_responses,
        pool_timeout=pool_timeout,
    )
    return cast(redis.Redis, client)


# Errors with which a Redis that answers refuses a command for a state of its own, not for a
# fault of the command: a failed snapshot (MISCONF), a long script (BUSY), a cluster without a
# quorum or mid-resharding, a master without its required replicas.
_REFUSING = ("MISCONF", "BUSY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "NOREPLICAS")


class MasterDemoted(RedisConnectionError):
    """``READONLY``: the master a connection reached was demoted to a replica (a failover). A
    connection error, as redis-py's Sentinel client raises it (the connection is dropped and
    the next one finds the new master), but Redis answered: the write never ran."""


def refusal(error: Exception, store: str) -> ServiceError | None:
    """The answer for a client when Redis refused the command (``store`` names it), or None
    when ``error`` is no refusal (a connection error, or a bug: INTERNAL stays right for that).

    Out of memory (``maxmemory`` reached under ``noeviction``) is RESOURCE_EXHAUSTED: retrying
    does not help until memory is freed. The others pass: UNAVAILABLE, retry later. So does
    ``READONLY`` (:class:`MasterDemoted`), a master demoted by a failover: the next connection
    reaches the new master.
    """
    if isinstance(error, OutOfMemoryError):
        return ResourceExhausted(f"{store} is out of memory (maxmemory) and refuses writes")
    if isinstance(error, MasterDemoted | ReadOnlyError):
        return Unavailable(f"{store} was demoted to a replica (a failover); retry later")
    if isinstance(error, ClusterDownError | TryAgainError):
        return Unavailable(f"{store} refuses commands now ({type(error).__name__}); retry later")
    if isinstance(error, ClusterError):
        # redis-py ran out of redirects: a multi-key call on a slot migrating between nodes
        # is answered TRYAGAIN (some keys moved, some not) until the migration ends.
        return Unavailable(f"{store} is moving this data between nodes; retry later")
    if isinstance(error, ResponseError):
        reason = str(error).split(" ", 1)[0]
        if reason in _REFUSING:
            return Unavailable(f"{store} refuses commands now ({reason}); retry later")
    return None


async def ping(client: RedisClient) -> None:
    """Readiness check: raise with a readable reason unless Redis answers PING."""
    try:
        await client.ping()
    except Exception as error:
        raise ConnectionError(f"Redis did not answer PING: {error}") from None


async def warn_if_evicting(client: RedisClient, store: str) -> None:
    """Log a warning when Redis may drop keys to make room (``maxmemory-policy`` other than
    ``noeviction``). ``store`` names the data at risk.

    A Redis shared with a cache is often set to ``allkeys-lru``: full, it then deletes accepted
    queue entries, dedupe markers or live conversations without an error to anyone. Read from
    ``INFO memory``, which managed services allow where they rename ``CONFIG``; unreachable:
    nothing to say (readiness reports that)."""
    try:
        info = await client.info("memory")
    except Exception:
        return
    # A Cluster client answers per node: {node: {...}}.
    sections = [info] if "maxmemory_policy" in info else list(info.values())
    policies = {
        section.get("maxmemory_policy") for section in sections if isinstance(section, dict)
    }
    evicting = sorted(str(p) for p in policies if p and p != "noeviction")
    if evicting:
        log.warning(
            "Redis may evict keys when full: set maxmemory-policy noeviction",
            store=store,
            maxmemory_policy=",".join(evicting),
        )


async def warn_if_not_persisted(client: RedisClient, store: str) -> None:
    """Log a warning when Redis writes no append-only file (``aof_enabled:0``): on a restart
    it comes back empty, or from its last snapshot, and what ``store`` names is lost since
    then. ``INFO persistence``, which managed services allow; unreachable: nothing to say.

    Some managed services offer no AOF and rely on a replica taking over instead: the warning
    then says what a restart without a failover costs."""
    try:
        info = await client.info("persistence")
    except Exception:
        return
    sections = [info] if "aof_enabled" in info else list(info.values())  # Cluster: per node
    if any(isinstance(s, dict) and str(s.get("aof_enabled")) == "0" for s in sections):
        log.warning("Redis writes no append-only file: set appendonly yes", store=store)
