"""The shared runtime, exercised through real processes over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.clients import make_channel, with_call_defaults
from services.common.errors import error_info, field_violations
from services.common.healthcheck import check
from services.common.metrics import SERVING
from services.common.server import LIVENESS, Runtime, Service
from services.common.settings import CommonSettings, load_settings
from services.common.tasks import cancel_and_wait
from tests.runtime.fixture_service import NAME, FixtureServicer
from tests.support.dns import DnsNames
from tests.support.processes import ROOT, ServiceProcess, Valkey, free_port, wait_for

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
SERVICES = {
    "session": ("services.session.server", "SESSION_PORT", "parley.session.v1.SessionService"),
    "business": (
        "services.business.server",
        "BUSINESS_PORT",
        "parley.business.v1.BusinessService",
    ),
    "search": ("services.search.server", "SEARCH_PORT", "parley.search.v1.SearchService"),
}


def start_service(
    name: str, tmp_path: Path, valkey_url: str, **env: str
) -> tuple[ServiceProcess, str]:
    module, port_var, _ = SERVICES[name]
    port = free_port()
    process = ServiceProcess(
        module,
        {
            port_var: str(port),
            f"{name.upper()}_METRICS_PORT": "0",
            "REDIS_URL": valkey_url,
            "BUSINESS_DB_PATH": str(tmp_path / "business.db"),
            "ENCRYPTION_SECRET": "test-encryption-secret-0123456789",
            **env,
        },
        tmp_path / f"{name}.log",
    ).start()
    return process, f"127.0.0.1:{port}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_serves_health_and_reflection(name: str, tmp_path: Path, valkey: Valkey) -> None:
    process, address = start_service(name, tmp_path, valkey.url)
    try:
        full_name = SERVICES[name][2]
        process.wait_serving(address, "")
        assert check(address, full_name) == "SERVING"
        with grpc.insecure_channel(address) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert services == {full_name, HEALTH, REFLECTION, REFLECTION_V1}
    finally:
        process.stop()


def test_gateway_health(tmp_path: Path, valkey: Valkey) -> None:
    port = free_port()
    process = ServiceProcess(
        "services.gateway.main",
        {"GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1", "REDIS_URL": valkey.url},
        tmp_path / "gateway.log",
    ).start()
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, 20), process.log
        body = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert body["status"] == "healthy"
    finally:
        process.stop()


def test_readiness_follows_the_datastore(tmp_path: Path) -> None:
    """NOT_SERVING with the reason logged while Redis is absent; SERVING once it appears."""
    redis_port = free_port()
    process, address = start_service("session", tmp_path, f"redis://127.0.0.1:{redis_port}/0")
    server = Valkey(tmp_path / "valkey", redis_port)
    try:
        assert wait_for(lambda: check(address, "") == "NOT_SERVING", 20), process.log
        time.sleep(0.5)
        assert check(address, "parley.session.v1.SessionService") == "NOT_SERVING"
        assert "Redis did not answer PING" in process.log
        # Alive all the while: liveness and startup probes must not restart it for an outage.
        assert check(address, LIVENESS) == "SERVING"
        server.start()
        assert wait_for(lambda: check(address, "") == "SERVING", 20), process.log
    finally:
        process.stop()
        server.stop()


def test_bad_environment_value_stops_startup(tmp_path: Path, valkey: Valkey) -> None:
    process, _ = start_service("session", tmp_path, valkey.url, SESSION_PORT="not-a-port")
    assert process.wait() != 0
    assert "SESSION_PORT" in process.log
    assert "invalid configuration" in process.log


@pytest.mark.parametrize("shared", ["grpc", "metrics"])
def test_a_port_another_process_holds_stops_startup_with_one_line(
    shared: str, tmp_path: Path, valkey: Valkey
) -> None:
    # gRPC shares a port by default (SO_REUSEPORT): a second copy of a service on a port the
    # first one holds started too, and the kernel split the calls between the two.
    metrics_port = free_port()
    first, address = start_service(
        "session", tmp_path / "first", valkey.url, SESSION_METRICS_PORT=str(metrics_port)
    )
    try:
        first.wait_serving(address)
        same = {
            "grpc": {"SESSION_PORT": address.rpartition(":")[2]},
            "metrics": {"SESSION_METRICS_PORT": str(metrics_port)},
        }[shared]
        second, _ = start_service("session", tmp_path / "second", valkey.url, **same)
        try:
            assert second.wait() == 2, second.log
        finally:
            second.stop()
        assert "cannot listen on" in second.log and "Traceback" not in second.log, second.log
        assert first.process is not None and first.process.poll() is None  # it goes on alone
    finally:
        first.stop()


def test_a_redis_that_evicts_keys_when_full_is_named_at_start_up(
    tmp_path: Path, valkey: Valkey
) -> None:
    # A Redis shared with a cache is often set to allkeys-lru: full, it deletes live
    # conversations (and the gateway's queue entries) without an error to anyone.
    warning = "Redis may evict keys when full: set maxmemory-policy noeviction"
    evicting = Valkey(tmp_path / "lru", None, "--maxmemory-policy", "allkeys-lru").start()
    try:
        for url, policy in ((evicting.url, "allkeys-lru"), (valkey.url, None)):
            process, address = start_service("session", tmp_path / str(policy), url)
            try:
                process.wait_serving(address)  # after the check that warns
                said = process.log_events(warning)
                assert [event["maxmemory_policy"] for event in said] == ([policy] if policy else [])
            finally:
                process.stop()
    finally:
        evicting.stop()


def test_a_session_redis_without_an_append_only_file_is_named_at_start_up(
    tmp_path: Path, valkey: Valkey
) -> None:
    # Live conversations are lost when a Redis that writes no append-only file restarts.
    warning = "Redis writes no append-only file: set appendonly yes"
    volatile = Valkey(tmp_path / "no-aof", None, "--appendonly", "no").start()
    try:
        for url, aof in ((volatile.url, False), (valkey.url, True)):
            process, address = start_service("session", tmp_path / f"aof-{aof}", url)
            try:
                process.wait_serving(address)  # after the check that warns
                said = process.log_events(warning)
                assert [event["store"] for event in said] == (
                    [] if aof else ["session: live conversations"]
                )
            finally:
                process.stop()
    finally:
        volatile.stop()


@pytest.mark.parametrize(("given", "started_logged"), [("info", True), ("warning", False)])
def test_log_level_is_read_in_any_case(
    given: str, started_logged: bool, tmp_path: Path, valkey: Valkey
) -> None:
    # LOG_LEVEL=info is how uvicorn, celery (the guides' worker: --loglevel=info) and many a .env
    # spell it; every process used to refuse to start on it.
    process, address = start_service("session", tmp_path, valkey.url, LOG_LEVEL=given)
    try:
        process.wait_serving(address)
        assert bool(process.log_events("started")) is started_logged
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("name", "variable", "value", "use"),
    [
        # A team's carried-over .env (the session guide's SESSION_TTL_HOURS=2) was ignored
        # without a word, so the conversations' TTL seemed set and was the default 900 s.
        ("session", "SESSION_TTL_HOURS", "2", "REDIS_TTL_SECONDS"),
        # The MVP guide's DATABASE_URL: the businesses went to the SQLite file without a word,
        # not to the database the team had named.
        ("business", "DATABASE_URL", "postgresql://app@db:5432/bot", "MONGODB_URI"),
    ],
)
def test_a_guides_variable_parley_does_not_read_is_named_at_start_up(
    name: str, variable: str, value: str, use: str, tmp_path: Path, valkey: Valkey
) -> None:
    process, address = start_service(name, tmp_path, valkey.url, **{variable: value})
    try:
        process.wait_serving(address)
        (warning,) = process.log_events("a migration guide's variable that Parley does not read")
        assert warning["variable"] == variable
        assert warning["use"].startswith(use)
        assert warning["level"] == "warning"
    finally:
        process.stop()


MISSING = "/nonexistent/parley-tls.pem"


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], variable: str) -> None:
    """Said like a bad environment value: status 2, one line naming the variable, no trace,
    never the password the test put in the value."""
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"invalid configuration:\n  {variable}: "), done.stderr
    assert len(done.stderr.splitlines()) == 2
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("name", "variable", "env"),
    [
        ("session", "REDIS_URL", {"REDIS_URL": "localhost:6379"}),
        ("session", "SESSION_REDIS_URL", {"SESSION_REDIS_URL": "redis+cluster://u:s3cret@h:abc"}),
        ("search", "SEARCH_REDIS_URL", {"SEARCH_REDIS_URL": "redis://u:s3cret@h:abc/0"}),
        ("business", "REDIS_URL", {"REDIS_URL": "redis+sentinel://u:s3cret@h:26379"}),
        # A password holding '/', '#' or '?' (not percent-encoded) ends the host part early:
        # the parsers then quoted a piece of it ("Port could not be cast to integer value as
        # 's3cret'"), and the refusal printed it.
        ("session", "REDIS_URL", {"REDIS_URL": "redis://u:s3cret/x@h:6379/0"}),
        ("search", "REDIS_URL", {"REDIS_URL": "rediss://:s3cret#x@h:6379/0"}),
        ("business", "REDIS_URL", {"REDIS_URL": "redis+cluster://u:s3cret?x@h:7000"}),
        # An option the client does not know went on to the connection: on Cluster a traceback
        # (status 1); otherwise a service that started and was never ready (a TypeError).
        ("session", "REDIS_URL", {"REDIS_URL": "rediss+cluster://u:s3cret@h:7000?ssl_ca_cert=/c"}),
        ("search", "REDIS_URL", {"REDIS_URL": "redis://u:s3cret@h:6379/0?ssl_cert_reqs=required"}),
        ("business", "MONGODB_URI", {"MONGODB_URI": "mongo://u:s3cret@127.0.0.1:1"}),
        ("business", "MONGODB_URI", {"MONGODB_URI": "mongodb://u:s3cret@h:abc"}),
        ("session", "GRPC_TLS_KEY", {"GRPC_TLS_CERT": MISSING, "GRPC_TLS_KEY": MISSING}),
        ("business", "GRPC_TLS_CERT", {"GRPC_TLS_CERT": MISSING, "GRPC_TLS_KEY": __file__}),
        ("search", "GRPC_TLS_CERT", {"GRPC_TLS_CERT": __file__, "GRPC_TLS_KEY": __file__}),
        # Half of the TLS settings, or the CA alone ("require client certificates"), were
        # ignored: the service served plaintext to every client.
        ("session", "GRPC_TLS_CERT", {"GRPC_TLS_CA": __file__}),
        ("business", "GRPC_TLS_KEY", {"GRPC_TLS_CERT": __file__}),
        ("search", "GRPC_TLS_CERT", {"GRPC_TLS_KEY": __file__, "GRPC_TLS_CA": __file__}),
        # The codes are checked against the airports only when the engine is built.
        ("search", "SEARCH_POPULAR_ROUTES", {"SEARCH_POPULAR_ROUTES": "JFK-LHR,JFK-ZZZ"}),
        # One place (they share an airport): the default warm spent a provider call a day on a
        # trip SearchFlights refuses, so no search ever read it.
        ("search", "SEARCH_POPULAR_ROUTES", {"SEARCH_POPULAR_ROUTES": "JFK-LHR,NYC-EWR"}),
    ],
)
def test_a_setting_only_building_can_check_stops_startup_with_one_line(
    name: str, variable: str, env: dict[str, str], tmp_path: Path
) -> None:
    # A URL that does not parse, or a TLS file that cannot be read: found only when the
    # clients are built, and said like a bad environment value (one line naming the variable,
    # status 2), with no stack trace and never a password. It used to be a traceback, status 1.
    module, port_var, _ = SERVICES[name]
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={
            **os.environ,
            "APP_ENV": "test",
            "LOG_FORMAT": "json",
            port_var: "0",
            f"{name.upper()}_METRICS_PORT": "0",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "BUSINESS_DB_PATH": str(tmp_path / "business.db"),
            "ENCRYPTION_SECRET": "test-encryption-secret-0123456789",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused_in_one_line(done, variable)


@pytest.mark.parametrize(
    ("variable", "env"),
    [
        ("GATEWAY_REDIS_URL", {"GATEWAY_REDIS_URL": "redis://u:s3cret@h:abc/0"}),
        ("GATEWAY_REDIS_URL", {"GATEWAY_REDIS_URL": "foo://u:s3cret@h", "GATEWAY_ROLE": "worker"}),
        ("GATEWAY_REDIS_URL", {"GATEWAY_REDIS_URL": "foo://u:s3cret@h", "WEB_CONCURRENCY": "2"}),
        ("WEB_CONCURRENCY", {"WEB_CONCURRENCY": "two"}),
        # argparse never checks a default against --role's choices: a misspelt role ran a
        # web-only gateway, and what it queued no worker took.
        ("GATEWAY_ROLE", {"GATEWAY_ROLE": "workers"}),
        # The gateway's TLS to the services (a Secret mounted elsewhere) was read only in the
        # server's start-up: a traceback and status 3; with WEB_CONCURRENCY > 1, one traceback
        # per process and status 0; a worker's, status 1.
        ("GRPC_TLS_CA", {"GRPC_TLS_CA": MISSING}),
        ("GRPC_TLS_CA", {"GRPC_TLS_CA": MISSING, "WEB_CONCURRENCY": "2"}),
        (
            "GRPC_TLS_KEY",
            {
                "GRPC_TLS_CA": __file__,
                "GRPC_TLS_CERT": __file__,
                "GRPC_TLS_KEY": MISSING,
                "GATEWAY_ROLE": "worker",
            },
        ),
        # The engine and its settings were loaded only in the server's start-up: the refusal
        # (or a ModuleNotFoundError) came with a traceback, status 3; with WEB_CONCURRENCY > 1,
        # one per process and status 0. (A worker's was refused cleanly; it still is.)
        ("GATEWAY_ENGINE", {"GATEWAY_ENGINE": "no_such_engine:create_engine"}),
        (
            "GATEWAY_ENGINE",
            {"GATEWAY_ENGINE": "services.gateway.bot:no_such_factory", "WEB_CONCURRENCY": "2"},
        ),
        # A client certificate without the CA (or half of one) was dropped without a word: the
        # gateway spoke plaintext, or TLS with no certificate, to services told to require one.
        ("GRPC_TLS_CA", {"GRPC_TLS_CERT": __file__, "GRPC_TLS_KEY": __file__}),
        (
            "GRPC_TLS_KEY",
            {"GRPC_TLS_CA": __file__, "GRPC_TLS_CERT": __file__, "GATEWAY_ROLE": "worker"},
        ),
        # Files that are not PEM: found only at the first handshake, which names no file.
        ("GRPC_TLS_CA", {"GRPC_TLS_CA": __file__}),
        (
            "GRPC_TLS_CERT",
            {"GRPC_TLS_CA": __file__, "GRPC_TLS_CERT": __file__, "GRPC_TLS_KEY": __file__},
        ),
        # The rate limits were parsed only when the limiter was built: a traceback and status 3
        # quoting the value (a worker's: one line without the variable's name), and of several
        # limits only the first applied, silently.
        ("RATE_LIMIT_USER", {"RATE_LIMIT_USER": "s3cret/minute"}),
        ("RATE_LIMIT_BUSINESS", {"RATE_LIMIT_BUSINESS": "0/minute", "GATEWAY_ROLE": "worker"}),
        ("RATE_LIMIT_USER", {"RATE_LIMIT_USER": "20/minute;100/hour"}),
        # A base URL without its scheme started a gateway whose every reply failed as an
        # outage (then a dead letter), whose every Twilio signature failed (PUBLIC_BASE_URL), or
        # whose model was never asked.
        ("WHATSAPP_API_BASE_URL", {"WHATSAPP_API_BASE_URL": "graph.facebook.com/v23.0"}),
        (
            "TWILIO_API_BASE_URL",
            {"TWILIO_API_BASE_URL": "ftp://api.twilio.com", "GATEWAY_ROLE": "worker"},
        ),
        ("PUBLIC_BASE_URL", {"PUBLIC_BASE_URL": "bot.example.com"}),
        ("OPENAI_BASE_URL", {"OPENAI_BASE_URL": "api.openai.com/v1", "WEB_CONCURRENCY": "2"}),
        # A proxy's user:password went as Basic auth in place of the key: every call refused.
        (
            "OPENAI_BASE_URL",
            {"OPENAI_BASE_URL": "https://u:s3cret@llm-proxy/v1", "GATEWAY_ROLE": "worker"},
        ),
        ("USE_SMART_HANDLER", {"USE_SMART_HANDLER": "maybe"}),
        ("OPENAI_TIMEOUT_SECONDS", {"OPENAI_TIMEOUT_SECONDS": "soon", "WEB_CONCURRENCY": "2"}),
        ("OPENAI_MAX_TOKENS", {"OPENAI_MAX_TOKENS": "5"}),
        ("BOT_SEARCH_CACHE_SECONDS", {"BOT_SEARCH_CACHE_SECONDS": "-5", "GATEWAY_ROLE": "worker"}),
        # The engine's own deadlines past the message's: a slow search (or model) failed the
        # whole message, retried and dead-lettered, instead of being answered with an apology.
        ("ENGINE_TIMEOUT_SECONDS", {"ENGINE_TIMEOUT_SECONDS": "8"}),
        (
            "ENGINE_TIMEOUT_SECONDS",
            {
                "OPENAI_API_KEY": "sk-test",
                "OPENAI_TIMEOUT_SECONDS": "12",
                "GATEWAY_ROLE": "worker",
            },
        ),
        # An interim reply ("searching …") is sent within the engine's deadline: a slow provider
        # timed the engine out (dead-lettered after MAX_ATTEMPTS), not the send (retried).
        ("ENGINE_TIMEOUT_SECONDS", {"SEND_TIMEOUT_SECONDS": "25", "WEB_CONCURRENCY": "2"}),
        # A directory under a file: not even root can make it.
        (
            "PROMETHEUS_MULTIPROC_DIR",
            {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": f"{__file__}/m"},
        ),
    ],
)
def test_the_gateway_stops_startup_with_one_line_too(variable: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway.main"],
        cwd=ROOT,
        env={**os.environ, "APP_ENV": "test", "GATEWAY_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused_in_one_line(done, variable)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_a_service_whose_stdout_reader_is_gone_still_serves_and_stops_cleanly(
    name: str, tmp_path: Path, valkey: Valkey
) -> None:
    # The log collector (or honcho, or a terminal's pipe) goes away: every log write then fails
    # with EPIPE. Calls must still be answered and SIGTERM must still stop the service cleanly.
    # It used to abort the shutdown at its first log line, before the stores were closed: exit
    # 1, and the business service never exited at all (its SQLite threads kept it alive).
    module, port_var, full_name = SERVICES[name]
    port = free_port()
    reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={
            **os.environ,
            "APP_ENV": "test",
            "LOG_FORMAT": "json",
            "READINESS_INTERVAL_SECONDS": "0.2",
            port_var: str(port),
            f"{name.upper()}_METRICS_PORT": "0",
            "REDIS_URL": valkey.url,
            "BUSINESS_DB_PATH": str(tmp_path / "business.db"),
            "ENCRYPTION_SECRET": "test-encryption-secret-0123456789",
        },
        stdout=writer,
        stderr=writer,
    )
    os.close(writer)
    address = f"127.0.0.1:{port}"
    try:
        assert wait_for(lambda: check(address, full_name, 0.5) == "SERVING", 20, 0.1)
        os.close(reader)
        with grpc.insecure_channel(address) as channel:
            for _ in range(3):  # each writes an access line, into the broken pipe
                assert ProtoReflectionDescriptorDatabase(channel).get_services()
                time.sleep(0.2)  # access lines go out in batches every 0.1 s
        assert check(address, full_name) == "SERVING"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def fixture_service(tmp_path: Path, **env: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    process = ServiceProcess(
        "tests.runtime.fixture_service",
        {"FIXTURE_PORT": str(port), "SHUTDOWN_GRACE_SECONDS": "10", **env},
        tmp_path / "fixture.log",
    ).start()
    address = f"127.0.0.1:{port}"
    process.wait_serving(address)
    return process, address


def test_sigterm_lets_the_in_flight_call_finish(tmp_path: Path) -> None:
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="2")
    result: dict[str, object] = {}

    def slow_call() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            result["response"] = stub.GetConversation(
                session_pb2.GetConversationRequest(), timeout=10
            )

    caller = threading.Thread(target=slow_call)
    caller.start()
    assert wait_for(lambda: "slow call started" in process.log, 5), process.log
    process.signal(signal.SIGTERM)
    # During the grace the server still answers, and says NOT_SERVING.
    assert wait_for(lambda: check(address, "") == "NOT_SERVING", 2), process.log
    assert check(address, LIVENESS) == "NOT_SERVING"
    caller.join(timeout=10)
    assert result["response"].created  # type: ignore[attr-defined]
    assert process.wait(timeout=15) == 0
    assert any(line.get("event") == "stopped" for line in process.log_events())


def test_health_list_answers_with_every_name(tmp_path: Path) -> None:
    """`grpcurl … grpc.health.v1.Health/List`, which reflection shows: every name and its status.
    (Was INTERNAL, and an error with a stack trace in the log at each call: grpc's servicer
    leaves List unimplemented.)"""
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="0")
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            listed = health.List(health_pb2.HealthListRequest(), timeout=5)
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    finally:
        process.stop()
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: entry.status for name, entry in listed.statuses.items()} == {
        "": serving,
        NAME: serving,
        LIVENESS: serving,
    }
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert not process.log_events("unhandled error"), process.log


def reflection_client(channel: grpc.Channel, version: str) -> ProtoReflectionDescriptorDatabase:
    """grpcio-reflection's client, speaking ``version`` of the reflection service: v1's messages
    are v1alpha's under another package, so only the method it calls differs."""
    database = ProtoReflectionDescriptorDatabase(channel)
    database._stub.ServerReflectionInfo = channel.stream_stream(  # its one call, renamed
        f"/{version}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return database


@pytest.mark.parametrize("version", [REFLECTION_V1, REFLECTION])
def test_reflection_answers_in_both_versions_and_describes_every_service(
    version: str, tmp_path: Path
) -> None:
    """grpcurl and `buf curl` ask `grpc.reflection.v1` first, and a client told to speak it
    (`buf curl --reflect-protocol grpc-v1`) asks nothing else. (Was a gap: only v1alpha was
    served, and such a client got UNIMPLEMENTED.) Every listed service is described, with its
    methods' messages, and so are the error details a client decodes."""
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="0")
    try:
        with grpc.insecure_channel(address) as channel:
            database = reflection_client(channel, version)
            services = set(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            methods = {
                name: {
                    method.name: (method.input_type.full_name, method.output_type.full_name)
                    for method in pool.FindServiceByName(name).methods
                }
                for name in services
            }
            bad_request = pool.FindMessageTypeByName("google.rpc.BadRequest")
    finally:
        process.stop()
    assert services == {NAME, HEALTH, REFLECTION, REFLECTION_V1}
    assert methods[HEALTH]["Check"] == (
        "grpc.health.v1.HealthCheckRequest",
        "grpc.health.v1.HealthCheckResponse",
    )
    for reflection in (REFLECTION, REFLECTION_V1):
        package = reflection.rpartition(".")[0]
        assert methods[reflection] == {
            "ServerReflectionInfo": (
                f"{package}.ServerReflectionRequest",
                f"{package}.ServerReflectionResponse",
            )
        }
    assert "GetConversation" in methods[NAME]
    assert "field_violations" in bad_request.fields_by_name


UNPARSABLE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, length past the end


def test_a_streaming_request_that_does_not_parse_is_invalid_argument(tmp_path: Path) -> None:
    """Health Watch and reflection (both versions) answer bytes that are no message as the
    unary calls do: INVALID_ARGUMENT naming the request. (Was UNKNOWN, *Unexpected <class
    'google.protobuf.message.DecodeError'>…*, and a traceback logged at ERROR for each call:
    the runtime checked only unary requests, grpc itself the streaming ones.)"""
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="0")
    errors: dict[str, grpc.RpcError] = {}
    try:
        with grpc.insecure_channel(address) as channel:
            calls = {
                f"/{HEALTH}/Watch": lambda path: list(
                    channel.unary_stream(path)(UNPARSABLE, timeout=5)
                ),
                **{
                    f"/{name}/ServerReflectionInfo": lambda path: list(
                        channel.stream_stream(path)(iter([UNPARSABLE]), timeout=5)
                    )
                    for name in (REFLECTION, REFLECTION_V1)
                },
            }
            for path, call in calls.items():
                with pytest.raises(grpc.RpcError) as raised:
                    call(path)
                errors[path] = raised.value
            assert check(address, NAME) == "SERVING"
    finally:
        process.stop()
    for path, error in errors.items():
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error)
        assert "request" in field_violations(error), path
    assert "Traceback" not in process.log, process.log


def test_sigterm_ends_health_watch_streams_after_not_serving(tmp_path: Path) -> None:
    """A Watch stream (Envoy's health checks, a gRPC client's, `grpcurl … Health/Watch`) sees
    NOT_SERVING at SIGTERM, then ends with OK when the server stops taking calls, and does not
    hold the stop. (Was a bug: grpc's servicer never ends a Watch, so every shutdown with one
    open waited the whole grace, a minute here, and then cut it, UNAVAILABLE.)"""
    process, address = fixture_service(tmp_path, SHUTDOWN_GRACE_SECONDS="60")
    seen: list[object] = []
    ended: dict[str, object] = {}
    watching = threading.Event()

    def watch() -> None:
        with grpc.insecure_channel(address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=NAME)
            )
            try:
                for reply in stream:
                    seen.append(reply.status)
                    watching.set()
                ended["code"] = stream.code()
            except grpc.RpcError as error:
                ended["code"] = error.code()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert watching.wait(10), process.log
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        watcher.join(timeout=10)
    finally:
        process.stop()
    response = health_pb2.HealthCheckResponse
    assert seen == [response.SERVING, response.NOT_SERVING]
    assert ended["code"] == grpc.StatusCode.OK


def test_sigterm_ends_a_reflection_stream_kept_open(tmp_path: Path) -> None:
    """A reflection client may keep its stream open between requests (grpcreflect's client does
    until it is reset): the stream answers each request, and at SIGTERM ends with OK when the
    server stops taking calls, without holding the stop. (Was a bug: the stop waited the whole
    grace for it, then cut it, UNAVAILABLE.)"""
    process, address = fixture_service(tmp_path, SHUTDOWN_GRACE_SECONDS="60")
    requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()
    answered: list[int] = []
    ended: dict[str, object] = {}

    def sent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        while (request := requests.get()) is not None:
            yield request

    def reflect() -> None:
        with grpc.insecure_channel(address) as channel:
            stream = channel.stream_stream(
                f"/{REFLECTION_V1}/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )(sent())
            try:
                for reply in stream:
                    answered.append(len(reply.list_services_response.service))
                ended["code"] = stream.code()
            except grpc.RpcError as error:
                ended["code"] = error.code()

    reflector = threading.Thread(target=reflect)
    reflector.start()
    try:
        for _ in range(2):
            requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        assert wait_for(lambda: len(answered) == 2, 10), process.log
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        requests.put(None)
        reflector.join(timeout=10)
        process.stop()
    assert answered == [4, 4]
    assert ended["code"] == grpc.StatusCode.OK


async def test_a_gateway_call_waits_through_its_service_restarting(tmp_path: Path) -> None:
    """A rollout of a single replica (docker compose, `kubectl rollout restart` with one pod on
    the same address): the process drains and exits, the new one listens a moment later. A
    call the gateway makes in between waits for it within its deadline instead of failing
    UNAVAILABLE at once. (Was a bug: the channel's three quick retries were spent within
    0.2 s, so every user whose search fell in the gap was told search is unavailable.)"""
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="0")
    stub = with_call_defaults(
        session_pb2_grpc.SessionServiceStub(make_channel(address, NAME)), 10.0
    )
    restarted: ServiceProcess | None = None
    try:
        assert (await stub.GetConversation(session_pb2.GetConversationRequest())).created
        process.signal(signal.SIGTERM)
        assert process.wait(15) == 0
        call = asyncio.ensure_future(stub.GetConversation(session_pb2.GetConversationRequest()))
        await asyncio.sleep(5)  # a slow start (gRPC's own backoff would have grown to 2.6 s)
        assert not call.done(), "the call did not wait for the new process"
        restarted = ServiceProcess(process.module, process.env, process.log_path).start()
        await asyncio.to_thread(restarted.wait_serving, address)
        serving = time.monotonic()
        assert (await call).created
        # The channel reconnects promptly, not after a backoff grown over the gap.
        assert time.monotonic() - serving < 2.0
        # A service that stays away still fails the call at its deadline.
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(15) == 0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetConversation(session_pb2.GetConversationRequest(), timeout=1.0)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
    finally:
        for each in (process, restarted):
            if each is not None:
                each.stop()


async def test_the_gateway_finds_a_replica_added_after_it_connected(tmp_path: Path) -> None:
    """A scale-up (`kubectl scale`, the search HPA): the headless Service's DNS name gains a
    pod's address. The gateway's channel resolves the name again when a connection ends, and
    the servers end theirs after GRPC_MAX_CONNECTION_AGE_SECONDS, so the new replica takes
    calls. (Was a bug: no connection ever ended, so a gateway process kept calling only the
    replicas it had found at start-up, however many were added.)"""
    port = free_port()
    names = DnsNames().start()
    names.addresses = ["127.0.0.1"]
    replicas = [
        ServiceProcess(
            "tests.runtime.fixture_service",
            {
                "FIXTURE_PORT": str(port),
                "FIXTURE_SLOW_SECONDS": "0",
                "GRPC_HOST": host,
                "GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
            },
            tmp_path / f"replica-{host}.log",
        ).start()
        for host in ("127.0.0.1", "127.0.0.2")
    ]
    stub = with_call_defaults(
        session_pb2_grpc.SessionServiceStub(make_channel(names.target("session", port), NAME)), 5
    )
    try:
        for replica, host in zip(replicas, ("127.0.0.1", "127.0.0.2"), strict=True):
            replica.wait_serving(f"{host}:{port}")
        assert (await stub.GetConversation(session_pb2.GetConversationRequest())).created
        names.addresses = ["127.0.0.1", "127.0.0.2"]  # the new pod is ready

        def calls(replica: ServiceProcess) -> int:
            return replica.log.count("slow call started")

        deadline = time.monotonic() + 20
        while calls(replicas[1]) == 0 and time.monotonic() < deadline:
            assert (await stub.GetConversation(session_pb2.GetConversationRequest())).created
            await asyncio.sleep(0.1)
        assert calls(replicas[1]) > 0, f"the new replica got no call ({names.queries} lookups)"
    finally:
        names.stop()
        for replica in replicas:
            replica.stop()


async def test_sigterm_under_steady_load_lets_every_call_it_took_finish(tmp_path: Path) -> None:
    """Calls keep coming after SIGTERM (the gateway's channel does not read health, and a pod's
    endpoints are gone only from DNS), so some call is always in flight. Every call the server
    took must still get its answer: it stops taking new ones in time to let those finish.
    (Was a bug: it waited for a moment with no call in flight, which never came, for the whole
    grace, then stopped with none left and cut the calls in flight.)"""
    process, address = fixture_service(
        tmp_path, FIXTURE_SLOW_SECONDS="0.5", SHUTDOWN_GRACE_SECONDS="2"
    )
    answered: set[str] = set()
    ended = asyncio.Event()

    async def caller(n: int) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            await asyncio.sleep(n * 0.07)
            for k in itertools.count():
                rid = f"{n:02d}{k:030d}"
                try:
                    await stub.GetConversation(
                        session_pb2.GetConversationRequest(),
                        metadata=[("x-request-id", rid)],
                        timeout=5,
                    )
                    answered.add(rid)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
                if ended.is_set():
                    return
                await asyncio.sleep(random.uniform(0, 0.2))

    callers = [asyncio.create_task(caller(n)) for n in range(8)]
    try:
        await asyncio.sleep(1.5)
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        ended.set()
        await asyncio.gather(*callers)
        process.stop()
    taken = {line["request_id"] for line in process.log_events("slow call started")}
    assert taken, process.log
    cut = sorted(taken - answered)
    assert not cut, f"{len(cut)} of {len(taken)} calls taken were cut: {cut[:3]}"


def test_request_id_reaches_the_access_log_and_errors_stay_opaque(tmp_path: Path) -> None:
    process, address = fixture_service(tmp_path, FIXTURE_SLOW_SECONDS="0")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            stub.GetConversation(
                session_pb2.GetConversationRequest(), metadata=[("x-request-id", "req-abc-123")]
            )
            with pytest.raises(grpc.RpcError) as failure:
                stub.TouchConversation(
                    session_pb2.TouchConversationRequest(),
                    metadata=[("x-request-id", "req-boom-456")],
                )
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert "req-boom-456" in failure.value.details()
        assert "secret-internal-detail" not in failure.value.details()

        def access_lines() -> list[dict[str, object]]:
            return [line for line in process.log_events() if line.get("event") == "rpc"]

        assert wait_for(lambda: len(access_lines()) >= 2, 5), process.log
        access = access_lines()
        check_line = next(line for line in access if line.get("request_id") == "req-abc-123")
        assert check_line["method"] == "/parley.session.v1.SessionService/GetConversation"
        assert check_line["code"] == "OK"
        boom = next(line for line in access if line.get("request_id") == "req-boom-456")
        assert boom["code"] == "INTERNAL"
        lines = process.log_events()
        # The log keeps the stack trace the client never sees.
        assert any("secret-internal-detail" in json.dumps(line) for line in lines)
    finally:
        process.stop()


def test_calls_are_counted_with_go_grpc_prometheus_names_and_labels(tmp_path: Path) -> None:
    """grpc_code as go-grpc-prometheus writes it ("InvalidArgument", not "INVALID_ARGUMENT"),
    and its labels, grpc_type="unary" included: the shipped alerts and dashboards, and a team's
    existing ones, select on those."""
    metrics_port = free_port()
    process, address = fixture_service(
        tmp_path, FIXTURE_SLOW_SECONDS="0", FIXTURE_METRICS_PORT=str(metrics_port)
    )
    try:
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            stub.GetConversation(session_pb2.GetConversationRequest(), timeout=5)
            for call, request in (
                (stub.UpdateConversation, session_pb2.UpdateConversationRequest()),
                (stub.TouchConversation, session_pb2.TouchConversationRequest()),
            ):
                with pytest.raises(grpc.RpcError):
                    call(request, timeout=5)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        process.stop()
    service = 'grpc_service="parley.session.v1.SessionService"'
    for method, code in (
        ("GetConversation", "OK"),
        ("UpdateConversation", "InvalidArgument"),
        ("TouchConversation", "Internal"),
    ):
        line = (
            f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",{service},'
            'grpc_type="unary"}'
        )
        assert f"{line} 1.0" in text, (line, text)
    assert 'grpc_code="INVALID_ARGUMENT"' not in text
    assert "grpc_server_in_flight " in text and "parley_serving{" in text
    # go-grpc-prometheus's label sets, exactly.
    go_labels = {
        "grpc_server_handled_total": {"grpc_type", "grpc_service", "grpc_method", "grpc_code"},
        "grpc_server_handling_seconds_bucket": {"grpc_type", "grpc_service", "grpc_method", "le"},
        "grpc_server_handling_seconds_count": {"grpc_type", "grpc_service", "grpc_method"},
    }
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in go_labels
    ]
    assert {sample.name for sample in samples} == set(go_labels)
    for sample in samples:
        assert set(sample.labels) == go_labels[sample.name], sample
        assert sample.labels["grpc_type"] == "unary", sample


def test_a_call_past_its_deadline_is_deadline_exceeded_and_a_cancelled_one_canceled(
    tmp_path: Path,
) -> None:
    """A handler still running at the client's deadline is counted and logged as the client saw
    it, DEADLINE_EXCEEDED, which ParleyGrpcErrors counts; a call the client cancelled is
    CANCELLED. (Was a bug: both were Canceled, so a service too slow for every caller's
    deadline never raised the alert.)"""
    metrics_port = free_port()
    process, address = fixture_service(
        tmp_path, FIXTURE_SLOW_SECONDS="5", FIXTURE_METRICS_PORT=str(metrics_port)
    )
    try:
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as late:
                stub.GetConversation(
                    session_pb2.GetConversationRequest(),
                    metadata=[("x-request-id", "req-late")],
                    timeout=0.3,
                )
            cancelled = stub.GetConversation.future(
                session_pb2.GetConversationRequest(),
                metadata=[("x-request-id", "req-cancelled")],
                timeout=30,
            )
            assert wait_for(lambda: len(process.log_events("slow call started")) == 2, 10)
            cancelled.cancel()

            def codes() -> dict[object, object]:
                return {line.get("request_id"): line["code"] for line in process.log_events("rpc")}

            assert wait_for(lambda: len(codes()) == 2, 10), process.log
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        process.stop()
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert codes() == {"req-late": "DEADLINE_EXCEEDED", "req-cancelled": "CANCELLED"}
    labels = f'grpc_method="GetConversation",grpc_service="{NAME}",grpc_type="unary"'
    for code in ("DeadlineExceeded", "Canceled"):
        assert f'grpc_server_handled_total{{grpc_code="{code}",{labels}}} 1.0' in text, text


def test_metrics_are_served_over_ipv6_and_ipv4_as_grpc_is(tmp_path: Path) -> None:
    """An IPv6-only or dual-stack cluster scrapes pods at their IPv6 address. (Was a bug: the
    metrics port listened on IPv4 alone, while gRPC's wildcard listens on both, so such a
    Prometheus found every service down.)"""
    metrics_port = free_port()
    process, address = fixture_service(tmp_path, FIXTURE_METRICS_PORT=str(metrics_port))
    try:
        assert check(f"[::1]:{address.rpartition(':')[2]}", "") == "SERVING"
        for host in ("[::1]", "127.0.0.1"):
            reply = httpx.get(f"http://{host}:{metrics_port}/metrics", timeout=5)
            assert reply.status_code == 200 and "grpc_server_in_flight " in reply.text, host
    finally:
        process.stop()


def test_service_errors_carry_rich_details(tmp_path: Path) -> None:
    process, address = fixture_service(tmp_path)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as invalid:
                stub.UpdateConversation(session_pb2.UpdateConversationRequest())
            with pytest.raises(grpc.RpcError) as conflict:
                stub.EndConversation(session_pb2.EndConversationRequest())
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(invalid.value) == {"key.user_id": "must not be empty"}
        assert conflict.value.code() == grpc.StatusCode.ABORTED
        info = error_info(conflict.value)
        assert info is not None
        assert info.reason == "VERSION_CONFLICT"
        assert info.metadata["current_version"] == "7"
    finally:
        process.stop()


async def test_a_shutdown_that_fails_still_closes_the_stores() -> None:
    # A store's threads left running (aiosqlite's) keep the process from ever exiting, so
    # on_stop runs whatever went wrong before it.
    closed: list[bool] = []

    async def close_stores() -> None:
        closed.append(True)

    runtime = Runtime(
        Service(
            NAME,
            session_pb2_grpc.add_SessionServiceServicer_to_server,
            FixtureServicer(),
            on_stop=close_stores,
        ),
        load_settings(CommonSettings),
        0,
    )
    await runtime.server.start()
    real_stop = runtime.server.stop

    async def failing_stop(grace: float | None) -> None:
        raise RuntimeError("stop failed")

    runtime.server.stop = failing_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="stop failed"):
            await runtime.shutdown()
        assert closed == [True]
    finally:
        await real_stop(None)


async def test_a_readiness_check_that_ends_during_shutdown_does_not_say_serving() -> None:
    """SIGTERM while a readiness check runs (one can take up to 5 s): the check's success must
    not set `parley_serving` back to 1, nor log *serving*, while the service drains. (Was a bug:
    health stayed NOT_SERVING, but the gauge said 1 for the rest of the shutdown.)"""
    entered, release = asyncio.Event(), asyncio.Event()

    async def readiness() -> None:
        entered.set()
        await release.wait()

    runtime = Runtime(
        Service(
            NAME,
            session_pb2_grpc.add_SessionServiceServicer_to_server,
            FixtureServicer(),
            readiness=readiness,
        ),
        load_settings(CommonSettings),
        0,
    )
    gauge = SERVING.labels(NAME)
    await runtime.server.start()
    watcher = asyncio.create_task(runtime._watch_readiness())
    runtime.in_flight.enter()  # a call in flight: the shutdown drains until it leaves
    await entered.wait()
    runtime.request_stop()
    shutdown = asyncio.create_task(runtime.shutdown())
    try:
        await asyncio.sleep(0.1)
        assert gauge._value.get() == 0
        release.set()
        await watcher  # the check has ended; the shutdown still drains
        assert not shutdown.done()
        assert gauge._value.get() == 0
    finally:
        runtime.in_flight.leave()
        await shutdown
        await cancel_and_wait(watcher)


async def test_a_readiness_check_under_way_at_shutdown_ends_before_the_stores_close() -> None:
    """SIGTERM while a readiness check runs, with no call in flight: the stores close after the
    check has ended. (Was a bug: they closed at once and the check went on; the business
    service's first check opens its store, so a SQLite store that was locked at SIGTERM was
    opened after it had been closed, and its aiosqlite threads died with a traceback each,
    *RuntimeError: Event loop is closed*, when the process ended.)"""
    entered, release = asyncio.Event(), asyncio.Event()
    events: list[str] = []

    async def readiness() -> None:
        entered.set()
        await release.wait()
        events.append("check ended")

    async def close_stores() -> None:
        events.append("stores closed")

    runtime = Runtime(
        Service(
            NAME,
            session_pb2_grpc.add_SessionServiceServicer_to_server,
            FixtureServicer(),
            readiness=readiness,
            on_stop=close_stores,
        ),
        load_settings(CommonSettings),
        0,
    )
    await runtime.server.start()
    runtime.start_readiness()
    await entered.wait()
    runtime.request_stop()
    shutdown = asyncio.create_task(runtime.shutdown())
    await asyncio.wait([shutdown], timeout=0.5)  # long enough for a shutdown that does not wait
    release.set()
    await shutdown
    assert events == ["check ended", "stores closed"]
