"""TLS between the gateway and the services, shown on a real business service process (it needs
only SQLite): mutual TLS accepts a client certificate from the CA and refuses everything else."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import healthcheck
from services.common.clients import client_credentials, make_channel
from services.common.settings import CommonSettings
from services.common.tls import channel_credentials
from tests.deploy.conftest import Pki, make_pki
from tests.support.processes import ServiceProcess, Valkey, free_port, wait_for

if TYPE_CHECKING:
    from services.gateway.clients import Clients

SERVICE = "parley.business.v1.BusinessService"


def start_business(tmp_path: Path, **tls: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    process = ServiceProcess(
        "services.business.server",
        {
            "BUSINESS_PORT": str(port),
            "BUSINESS_METRICS_PORT": "0",
            "GRPC_HOST": "127.0.0.1",
            "BUSINESS_DB_PATH": str(tmp_path / "business.db"),
            "ENCRYPTION_SECRET": "tls-test-encryption-secret-0123456789",
            **tls,
        },
        tmp_path / "business.log",
    ).start()
    return process, f"127.0.0.1:{port}"


def wait_serving(process: ServiceProcess, address: str, creds: grpc.ChannelCredentials) -> None:
    def serving() -> bool:
        return healthcheck.check(address, SERVICE, 0.5, creds) == "SERVING"

    if not wait_for(serving, timeout=30, interval=0.1):
        raise AssertionError(f"business not SERVING over TLS at {address}:\n{process.log[-3000:]}")


def health_status(channel: grpc.Channel) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.fixture(scope="module")
def mtls_business(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, address = start_business(
        tmp_path_factory.mktemp("mtls"),
        GRPC_TLS_CERT=str(pki.server_cert),
        GRPC_TLS_KEY=str(pki.server_key),
        GRPC_TLS_CA=str(pki.ca),
    )
    try:
        wait_serving(
            process,
            address,
            channel_credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key)),
        )
        yield address
    finally:
        process.stop()


async def test_gateway_client_with_a_certificate_from_the_ca_is_served(
    mtls_business: str, pki: Pki
) -> None:
    # Exactly what the gateway does: its settings → client_credentials → make_channel.
    settings = CommonSettings(
        grpc_tls_ca=str(pki.ca),
        grpc_tls_cert=str(pki.client_cert),
        grpc_tls_key=str(pki.client_key),
    )
    credentials = client_credentials(settings)
    assert credentials is not None
    channel = make_channel(mtls_business, SERVICE, credentials=credentials)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()


@pytest.mark.parametrize("client", ["no client certificate", "certificate from another CA"])
def test_clients_without_a_valid_certificate_are_refused(
    mtls_business: str, pki: Pki, client: str
) -> None:
    if client == "no client certificate":
        credentials = channel_credentials(str(pki.ca), None, None)
    else:
        credentials = channel_credentials(str(pki.ca), str(pki.rogue_cert), str(pki.rogue_key))
    assert credentials is not None
    with (
        grpc.secure_channel(mtls_business, credentials) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        health_status(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused_by_a_tls_server(mtls_business: str) -> None:
    with grpc.insecure_channel(mtls_business) as channel, pytest.raises(grpc.RpcError) as error:
        health_status(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_healthcheck_command_speaks_mutual_tls(
    mtls_business: str, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--addr", mtls_business, "--service", SERVICE, "--tls-ca", str(pki.ca)]
    client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert healthcheck.main([*base, *client]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert healthcheck.main(base) == 1  # no client certificate: refused, so not healthy
    assert capsys.readouterr().out.strip() == "UNAVAILABLE"


@pytest.mark.parametrize("given", [("ca", "client_cert"), ("client_cert", "client_key")])
def test_healthcheck_command_refuses_half_of_its_tls_options(
    pki: Pki, given: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A client certificate without its key, or without the CA that turns TLS on, was dropped
    without a word: the probe then reported a mutual-TLS service as down (UNAVAILABLE)."""
    options = {"ca": "--tls-ca", "client_cert": "--tls-cert", "client_key": "--tls-key"}
    argv = ["--addr", "127.0.0.1:1"]
    for name in given:
        argv += [options[name], str(getattr(pki, name))]
    with pytest.raises(SystemExit) as refused:
        healthcheck.main(argv)
    assert refused.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_healthcheck_command_names_a_tls_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(Was a bug: a 15-line traceback in the probe's output.)"""
    missing = tmp_path / "ca.crt"
    assert healthcheck.main(["--addr", "127.0.0.1:1", "--tls-ca", str(missing)]) == 1
    assert capsys.readouterr().out == f"cannot read {missing}: No such file or directory\n"


def test_server_tls_without_ca_does_not_ask_for_a_client_certificate(
    pki: Pki, tmp_path: Path
) -> None:
    process, address = start_business(
        tmp_path, GRPC_TLS_CERT=str(pki.server_cert), GRPC_TLS_KEY=str(pki.server_key)
    )
    try:
        server_only = channel_credentials(str(pki.ca), None, None)
        assert server_only is not None
        wait_serving(process, address, server_only)
        with grpc.secure_channel(address, server_only) as channel:
            assert health_status(channel) == "SERVING"
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            health_status(channel)
    finally:
        process.stop()


async def test_the_gateway_reaches_a_mutual_tls_service_with_its_own_settings(
    mtls_business: str, pki: Pki
) -> None:
    """The gateway's clients take GRPC_TLS_CA/CERT/KEY from its settings: with them the
    business service is SERVING through the gateway's channel; without a certificate it is not."""
    from services.gateway.clients import BUSINESS, Clients
    from services.gateway.settings import GatewaySettings

    def settings(**tls: str) -> GatewaySettings:
        return GatewaySettings(app_env="test", business_service_addr=mtls_business, **tls)

    with_certificate = Clients(
        settings(
            grpc_tls_ca=str(pki.ca),
            grpc_tls_cert=str(pki.client_cert),
            grpc_tls_key=str(pki.client_key),
        )
    )
    without = Clients(settings(grpc_tls_ca=str(pki.ca)))
    try:
        good = {h.name: h.status for h in await with_certificate.health(deadline=2.0)}
        bad = {h.name: h.status for h in await without.health(deadline=2.0)}
    finally:
        await with_certificate.close()
        await without.close()
    assert good[BUSINESS] == "SERVING"
    # Refused in the handshake (the channel's retries may run into the deadline first).
    assert bad[BUSINESS] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _mount_secret(volume: Path, ca: Path, cert: Path, key: Path) -> None:
    """The files as a Kubernetes Secret volume holds them (cert-manager's keys), and as the
    kubelet updates one: a new directory, then one symlink swapped (``..data``)."""
    data = volume / f"..{len(list(volume.iterdir()))}"
    data.mkdir()
    for name, source in (("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)):
        (data / name).write_bytes(source.read_bytes())
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(Path("..data") / name)
    (volume / "..data_tmp").symlink_to(data.name)
    os.replace(volume / "..data_tmp", volume / "..data")


def start_business_on_a_secret(
    tmp_path: Path, pki: Pki, **env: str
) -> tuple[ServiceProcess, str, Path]:
    """A business service whose TLS files are ``pki``'s server set in a Secret volume (the
    volume is returned, for :func:`_mount_secret` to renew them)."""
    volume = tmp_path / "tls"
    volume.mkdir()
    _mount_secret(volume, pki.ca, pki.server_cert, pki.server_key)
    process, address = start_business(
        tmp_path,
        GRPC_TLS_CERT=str(volume / "tls.crt"),
        GRPC_TLS_KEY=str(volume / "tls.key"),
        GRPC_TLS_CA=str(volume / "ca.crt"),
        **env,
    )
    return process, address, volume


def test_renewed_certificates_are_served_without_a_restart(tmp_path: Path) -> None:
    """cert-manager renews a certificate (by default a month before it expires) into the Secret
    the service mounts: new connections must get the new one, or every call fails at expiry.
    (Was a bug: the files were read once, at start-up.) Here the CA changes too, so a handshake
    tells which set the server used."""
    before, after = make_pki(tmp_path / "before"), make_pki(tmp_path / "after", "renewed-ca")
    process, address, volume = start_business_on_a_secret(tmp_path, before)
    try:
        old = channel_credentials(str(before.ca), str(before.client_cert), str(before.client_key))
        new = channel_credentials(str(after.ca), str(after.client_cert), str(after.client_key))
        wait_serving(process, address, old)
        assert healthcheck.check(address, SERVICE, 2, new) == "UNAVAILABLE"
        # A set that does not go together (a key from another pair) is not taken.
        _mount_secret(volume, after.ca, after.server_cert, before.server_key)
        assert healthcheck.check(address, SERVICE, 2, old) == "SERVING"
        _mount_secret(volume, after.ca, after.server_cert, after.server_key)
        wait_serving(process, address, new)
        assert healthcheck.check(address, SERVICE, 2, old) == "UNAVAILABLE"
    finally:
        process.stop()
    assert "TLS files reloaded" in process.log
    refused = process.log_events("TLS files changed, not usable: the last ones kept")
    assert [line["reason"] for line in refused] == [
        "GRPC_TLS_CERT: with GRPC_TLS_KEY, not a PEM certificate and its unencrypted key"
    ]


def test_an_expired_certificate_is_told_at_start_up(tmp_path: Path) -> None:
    """grpc serves an expired certificate without a word: every client's handshake fails, and
    the service's log said nothing of why. Now one warning names the file and its notAfter."""
    expired = make_pki(tmp_path / "expired", days=-2)
    process, _ = start_business(
        tmp_path,
        GRPC_TLS_CERT=str(expired.server_cert),
        GRPC_TLS_KEY=str(expired.server_key),
        GRPC_TLS_CA=str(expired.ca),
    )
    try:
        told = "TLS certificate expired"
        assert wait_for(lambda: process.log_events(told), timeout=30, interval=0.1), process.log
    finally:
        process.stop()
    [line] = process.log_events("TLS certificate expired")
    assert line["variable"] == "GRPC_TLS_CERT" and line["path"] == str(expired.server_cert)
    assert line["level"] == "warning" and line["not_after"] < dt.datetime.now(dt.UTC).isoformat()
    assert "PRIVATE KEY" not in process.log and not process.log_events(
        "TLS certificate expires soon"
    )


def test_a_renewed_certificate_that_ends_within_days_is_told_on_its_reload(tmp_path: Path) -> None:
    # A renewal that brought a certificate ending in two days (a CA's short-lived issuance, a
    # clock wrong where it was issued) was served without a word, like the first one.
    good, short = make_pki(tmp_path / "good"), make_pki(tmp_path / "short", "short-ca", days=2)
    process, address, volume = start_business_on_a_secret(tmp_path, good)
    try:
        wait_serving(process, address, channel_credentials(*_client(good)))
        _mount_secret(volume, short.ca, short.server_cert, short.server_key)
        wait_serving(process, address, channel_credentials(*_client(short)))
    finally:
        process.stop()
    [line] = process.log_events("TLS certificate expires soon")
    assert line["variable"] == "GRPC_TLS_CERT" and line["path"] == str(volume / "tls.crt")
    assert line["not_after"] > dt.datetime.now(dt.UTC).isoformat()
    assert "TLS files reloaded" in process.log and not process.log_events("TLS certificate expired")


def _client(pki: Pki) -> tuple[str, str, str]:
    return str(pki.ca), str(pki.client_cert), str(pki.client_key)


def test_the_gateway_tells_of_its_expired_client_certificate(tmp_path: Path) -> None:
    expired = make_pki(tmp_path, days=-2)
    settings = CommonSettings(
        grpc_tls_ca=str(expired.ca),
        grpc_tls_cert=str(expired.client_cert),
        grpc_tls_key=str(expired.client_key),
    )
    with structlog.testing.capture_logs() as logs:
        assert client_credentials(settings) is not None
    told = [line for line in logs if line["event"] == "TLS certificate expired"]
    assert [(line["variable"], line["path"]) for line in told] == [
        ("GRPC_TLS_CERT", str(expired.client_cert))
    ]
    assert all("PRIVATE KEY" not in str(line) for line in logs)


def _gateway_clients(volume: Path, pki: Pki, **settings: Any) -> Clients:
    """The gateway's own clients, their TLS files in ``volume`` (made, holding ``pki``'s client
    certificate) as its mounted Secret holds them."""
    from services.gateway.clients import Clients
    from services.gateway.settings import GatewaySettings

    volume.mkdir()
    _mount_secret(volume, pki.ca, pki.client_cert, pki.client_key)
    return Clients(
        GatewaySettings(
            app_env="test",
            grpc_tls_ca=str(volume / "ca.crt"),
            grpc_tls_cert=str(volume / "tls.crt"),
            grpc_tls_key=str(volume / "tls.key"),
            **settings,
        )
    )


async def test_the_gateway_takes_its_renewed_certificate_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway is a client: its channels kept the certificate and CA they were opened with,
    so a renewal cert-manager wrote into its Secret was used only after a restart, and every
    call failed once the old certificate expired. Now new channels take the new files, and the
    stubs everything holds (the worker's, the business directory's) go through them."""
    from parley.business.v1 import business_pb2
    from services.gateway import clients as gateway_clients
    from services.gateway.clients import BUSINESS

    old, renewed = make_pki(tmp_path / "old", "old-ca"), make_pki(tmp_path / "renewed")
    process, address = start_business(
        tmp_path,
        GRPC_TLS_CERT=str(renewed.server_cert),
        GRPC_TLS_KEY=str(renewed.server_key),
        GRPC_TLS_CA=str(renewed.ca),
    )
    volume = tmp_path / "gateway-tls"
    clients = _gateway_clients(volume, old, business_service_addr=address)
    business = clients.business  # held, as the worker and the business directory hold it

    async def status() -> str:
        [found] = [h.status for h in await clients.health(deadline=2.0) if h.name == BUSINESS]
        return found

    try:
        wait_serving(process, address, channel_credentials(*_client(renewed)))
        assert await status() in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        with pytest.raises(grpc.aio.AioRpcError):
            await business.GetCacheStats(business_pb2.GetCacheStatsRequest(), timeout=1)
        assert not clients.reload_tls()  # nothing changed
        # A set that does not go together (a key from another pair) is not taken.
        _mount_secret(volume, renewed.ca, renewed.client_cert, old.client_key)
        with structlog.testing.capture_logs() as logs:
            assert not clients.reload_tls()
        # The gateway's runtime watches the files (here every 50 ms, not every 30 s).
        monkeypatch.setattr(gateway_clients, "TLS_CHECK_SECONDS", 0.05)
        clients.watch_tls()
        _mount_secret(volume, renewed.ca, renewed.client_cert, renewed.client_key)
        for _ in range(100):
            if await status() == "SERVING":
                break
            await asyncio.sleep(0.05)
        assert await status() == "SERVING"
        await business.GetCacheStats(business_pb2.GetCacheStatsRequest())
    finally:
        await clients.close()
        process.stop()
    assert [(line["event"], line["reason"]) for line in logs] == [
        (
            "TLS files changed, not usable: the last ones kept",
            "GRPC_TLS_CERT: with GRPC_TLS_KEY, not a PEM certificate and its unencrypted key",
        )
    ]


async def test_a_warm_under_way_finishes_across_a_certificate_renewal(
    tmp_path: Path, valkey: Valkey
) -> None:
    """docs/deployment.md: when the gateway's TLS files are renewed, calls under way finish on
    the old channels. (Was a bug: the old channels were closed after the engine's time and a
    call's, 22 s by default, and the admin API's WarmCache, given 60 s, was cancelled there:
    a 5xx and no counts.) Here the engine's time is 1 s and the warm's search takes 3 s."""
    from parley.search.v1 import search_pb2
    from services.gateway.clients import WARM_CACHE_SECONDS
    from tests.search.fake_amadeus import CLIENT_ID, CLIENT_SECRET, FakeAmadeus

    pki, renewed = make_pki(tmp_path / "pki"), make_pki(tmp_path / "renewed", "renewed-ca")
    amadeus = FakeAmadeus().start()
    amadeus.delay = 3.0
    port = free_port()
    process = ServiceProcess(
        "services.search.server",
        {
            "SEARCH_PORT": str(port),
            "SEARCH_METRICS_PORT": "0",
            "GRPC_HOST": "127.0.0.1",
            "REDIS_URL": valkey.url.replace("/0", "/12"),
            "SEARCH_PROVIDER": "amadeus",
            "AMADEUS_CLIENT_ID": CLIENT_ID,
            "AMADEUS_CLIENT_SECRET": CLIENT_SECRET,
            "AMADEUS_BASE_URL": amadeus.url,
            "GRPC_TLS_CERT": str(pki.server_cert),
            "GRPC_TLS_KEY": str(pki.server_key),
            "GRPC_TLS_CA": str(pki.ca),
        },
        tmp_path / "search.log",
    ).start()
    address = f"127.0.0.1:{port}"
    clients = _gateway_clients(
        tmp_path / "gateway-tls",
        pki,
        search_service_addr=address,
        engine_timeout_seconds=1.0,
        send_timeout_seconds=0.5,
        grpc_timeout_seconds=0.5,
    )
    try:
        creds = channel_credentials(*_client(pki))
        search = "parley.search.v1.SearchService"
        assert wait_for(lambda: healthcheck.check(address, search, 0.5, creds) == "SERVING", 30)
        request = search_pb2.WarmCacheRequest(
            routes=[search_pb2.Route(origin="JFK", destination="LHR")], days_ahead=1
        )
        warm = asyncio.ensure_future(clients.search.WarmCache(request, timeout=WARM_CACHE_SECONDS))
        for _ in range(100):  # until the search is under way
            if amadeus.calls["/v2/shopping/flight-offers"]:
                break
            await asyncio.sleep(0.05)
        _mount_secret(tmp_path / "gateway-tls", renewed.ca, renewed.client_cert, renewed.client_key)
        assert clients.reload_tls()
        answer = await warm
        assert (answer.warmed, answer.failed, answer.not_started) == (1, 0, 0)
    finally:
        await clients.close()
        process.stop()
        amadeus.stop()


def _expiry_series(text: str) -> dict[str, float]:
    """``parley_tls_certificate_expiry_timestamp_seconds`` by its variable, from a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["variable"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "parley_tls_certificate_expiry_timestamp_seconds"
        for sample in family.samples
    }


def _not_after(path: Path) -> float:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def test_a_service_exports_when_its_certificates_end_and_follows_a_renewal(tmp_path: Path) -> None:
    """A process started with months left said nothing when its renewal failed later (the log
    warns only when a file is read): the metric lets ParleyTlsCertificateExpiresSoon say so. It
    names the certificates the service serves, not the files: a set that does not go together
    is not taken, and the one still served is what ends."""
    import httpx

    good, short = make_pki(tmp_path / "good"), make_pki(tmp_path / "short", "short-ca", days=2)
    metrics_port = free_port()
    process, address, volume = start_business_on_a_secret(
        tmp_path, good, BUSINESS_METRICS_PORT=str(metrics_port)
    )

    def scraped() -> dict[str, float]:
        return _expiry_series(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)

    try:
        wait_serving(process, address, channel_credentials(*_client(good)))
        assert scraped() == {
            "GRPC_TLS_CERT": _not_after(good.server_cert),
            "GRPC_TLS_CA": _not_after(good.ca),
        }
        _mount_secret(volume, short.ca, short.server_cert, short.server_key)
        wait_serving(process, address, channel_credentials(*_client(short)))  # a handshake takes it
        assert scraped()["GRPC_TLS_CERT"] == _not_after(short.server_cert)
        # A renewal gone wrong (the key of another pair): not taken, the short one still served.
        _mount_secret(volume, good.ca, good.server_cert, short.server_key)
        wait_serving(process, address, channel_credentials(*_client(short)))
        assert scraped() == {
            "GRPC_TLS_CERT": _not_after(short.server_cert),
            "GRPC_TLS_CA": _not_after(short.ca),
        }
    finally:
        process.stop()
    assert _not_after(short.server_cert) - _not_after(good.server_cert) < -20 * 86400


async def test_the_gateway_exports_when_its_client_certificate_ends(tmp_path: Path) -> None:
    """What the gateway presents and trusts, not what its files hold: a renewal that does not go
    together is not taken, and the certificate still presented is the one that ends."""
    from services.common.metrics import TLS_IN_USE, TlsExpiry
    from services.gateway import metrics

    good, short = make_pki(tmp_path / "good"), make_pki(tmp_path / "short", "short-ca", days=2)
    volume = tmp_path / "gateway-tls"
    clients = _gateway_clients(volume, good)

    def scraped() -> dict[str, float]:
        return _expiry_series(metrics.render({}, TLS_IN_USE)[0].decode())

    try:
        assert scraped() == {
            "GRPC_TLS_CERT": _not_after(good.client_cert),
            "GRPC_TLS_CA": _not_after(good.ca),
        }
        _mount_secret(volume, short.ca, short.client_cert, good.client_key)
        assert not clients.reload_tls()
        assert scraped()["GRPC_TLS_CERT"] == _not_after(good.client_cert)
        _mount_secret(volume, short.ca, short.client_cert, short.client_key)
        assert clients.reload_tls()
        assert scraped() == {
            "GRPC_TLS_CERT": _not_after(short.client_cert),
            "GRPC_TLS_CA": _not_after(short.ca),
        }
    finally:
        await clients.close()
    plaintext, _ = metrics.render({}, TlsExpiry())
    assert b"parley_tls_certificate_expiry" not in plaintext


def test_a_tls_file_gone_between_its_read_and_its_check_is_named(pki: Pki, tmp_path: Path) -> None:
    # A reload that raced an operator's rm-then-cp raised OSError out of the check, which ended
    # the gateway's watch of its files for good. Now one line naming the variable (the watch
    # logs it and keeps the channels in use).
    from services.common.clients import check_tls_files
    from services.common.settings import ConfigurationError

    gone = str(tmp_path / "gone.pem")
    with pytest.raises(ConfigurationError) as ca:
        check_tls_files(gone, None, None)
    with pytest.raises(ConfigurationError) as pair:
        check_tls_files(str(pki.ca), gone, str(pki.client_key))
    assert str(ca.value).startswith("GRPC_TLS_CA: cannot be read")
    assert str(pair.value).startswith("GRPC_TLS_CERT: cannot be read or GRPC_TLS_KEY")
