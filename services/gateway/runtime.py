"""Everything one gateway process holds: Redis, the queue, gRPC clients, senders, workers."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import redis.asyncio as redis
import structlog

from parley.search.v1 import search_pb2
from services.common.clients import client_credentials
from services.common.redis_client import make_redis, warn_if_evicting, warn_if_not_persisted
from services.common.settings import configuring
from services.gateway.businesses import BusinessDirectory
from services.gateway.clients import Clients
from services.gateway.engine import Engine
from services.gateway.queue import Queue
from services.gateway.ratelimit import RateLimits
from services.gateway.senders.base import HttpClient, Sender
from services.gateway.senders.cloud_api import CloudApiSender
from services.gateway.senders.outbox import OutboxSender
from services.gateway.senders.twilio import TwilioSender
from services.gateway.settings import GatewaySettings
from services.gateway.worker import Processor, WorkerPool, engine_factory

log = structlog.get_logger()

Role = Literal["web", "worker", "all"]
ROOT = Path(__file__).resolve().parents[2]


def commit() -> str:
    """The deployed commit: ``GIT_COMMIT`` if the build set it, else ask git once."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gateway_redis(settings: GatewaySettings, **options: Any) -> redis.Redis:
    """A client of the gateway's Redis (no connection yet); a URL it cannot use raises a
    ConfigurationError naming the variable."""
    with configuring(settings.effective_redis_url_variable, url=settings.effective_redis_url):
        return make_redis(settings.effective_redis_url, **options)


class StartedSearch:
    """SearchService for an engine built before the runtime starts: the stub of the channel
    :meth:`Runtime.start` opens (gRPC channels belong to the event loop that serves)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def SearchFlights(self, request: search_pb2.SearchFlightsRequest, **options: Any) -> Any:
        return self._runtime.clients.search.SearchFlights(request, **options)

    def ResolvePlace(self, request: search_pb2.ResolvePlaceRequest, **options: Any) -> Any:
        return self._runtime.clients.search.ResolvePlace(request, **options)

    def FindNearestAirports(
        self, request: search_pb2.FindNearestAirportsRequest, **options: Any
    ) -> Any:
        return self._runtime.clients.search.FindNearestAirports(request, **options)


@dataclass
class Runtime:
    settings: GatewaySettings
    role: Role
    redis: redis.Redis
    queue: Queue
    http: HttpClient
    outbox: OutboxSender
    senders: dict[str, Sender]
    pool: WorkerPool | None = None
    businesses: BusinessDirectory | None = None  # the workers' business cache
    # TLS to the services, read in build(): a GRPC_TLS_* file that cannot be read stops start-up
    # naming it, rather than failing later inside the server's start-up with a traceback.
    credentials: grpc.ChannelCredentials | None = None
    # gRPC channels belong to the event loop that serves: made in start(), not before.
    _clients: Clients | None = None
    _engine: Engine | None = None  # made in build(), its search calls on start()'s channel
    started: float = field(default_factory=time.monotonic)
    commit: str = field(default_factory=commit)

    @classmethod
    def build(cls, settings: GatewaySettings, role: Role) -> Runtime:
        client = gateway_redis(settings)
        http = HttpClient(settings.send_timeout_seconds)
        outbox = OutboxSender(client, settings.outbox_max_messages)
        senders: dict[str, Sender] = {
            "cloud_api": CloudApiSender(http, settings.whatsapp_api_base_url),
            "twilio": TwilioSender(
                http,
                settings.twilio_api_base_url,
                settings.twilio_account_sid or "",
                settings.twilio_auth_token or "",
            ),
            "outbox": outbox,
        }
        runtime = cls(
            settings=settings,
            role=role,
            redis=client,
            queue=Queue(client, settings.queue_partitions, settings.dedupe_ttl_seconds),
            http=http,
            outbox=outbox,
            senders=senders,
            credentials=client_credentials(settings),
        )
        # Built here, before anything serves, so that GATEWAY_ENGINE and the engine's own
        # settings are checked at start-up like every other variable (refused in one line,
        # status 2), not in the server's start-up (a traceback).
        runtime._engine = engine_factory(settings.gateway_engine)(StartedSearch(runtime))
        return runtime

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            raise RuntimeError("the gateway runtime is not started")
        return self._clients

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the gateway runtime was not made by Runtime.build")
        return self._engine

    async def start(self) -> None:
        at_risk = "gateway: the queue, dedupe markers and sent log"
        await warn_if_evicting(self.redis, at_risk)
        await warn_if_not_persisted(self.redis, at_risk)
        self._clients = Clients(self.settings, self.credentials)
        self._clients.watch_tls()
        if self.role in ("worker", "all"):
            # Blocking reads hold a connection each: a client of their own, with a socket
            # timeout longer than the block.
            consumer_redis = gateway_redis(
                self.settings,
                socket_timeout=5.0,
                max_connections=self.settings.queue_partitions + 16,
            )
            queue = Queue(
                consumer_redis, self.settings.queue_partitions, self.settings.dedupe_ttl_seconds
            )
            self.businesses = BusinessDirectory(self.settings, self.clients.business)
            await self.businesses.start()
            # Only workers count messages: the limits share the consumer queue's pipeline.
            rate_limits = RateLimits(
                queue.pipeline, self.settings.rate_limit_user, self.settings.rate_limit_business
            )
            processor = Processor(
                self.settings,
                self.clients,
                self.engine,
                self.senders,
                rate_limits,
                queue.pipeline,
                self.businesses,
            )
            self.pool = WorkerPool(self.settings, queue, processor)
            await self.pool.start()

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
            await self.pool.queue.redis.aclose()
        if self.businesses is not None:
            await self.businesses.stop()
        # The engine's own clients (the language model's HTTP client), once no worker uses them;
        # built in every role, so closed in every role.
        close = getattr(self._engine, "aclose", None)
        if close is not None:
            await close()
        await self.http.aclose()
        if self._clients is not None:
            await self._clients.close()
        await self.redis.aclose()
