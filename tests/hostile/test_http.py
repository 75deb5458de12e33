"""The gateway's HTTP face at the protocol's edges, against a real gateway process over real
sockets: bodies that never end, clients that go away, methods a webhook path does not take.

Raw sockets where the point is what goes over the wire (a body cut short, bytes left unsent);
httpx elsewhere. Every answer is checked for its status and its body, and the gateway's log for
errors: a client's behaviour is never the gateway's error.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.fake_clouds import FakeClouds
from tests.support.processes import Valkey, wait_for
from tests.support.stack import (
    Gateway,
    Services,
    create_business,
    metric,
    next_db,
    start_gateway,
)

WEBHOOKS = {"/webhooks/whatsapp": "cloud_api", "/webhooks/twilio": "twilio"}


@pytest.fixture(scope="module")
def gateway(services: Services, fake_clouds: FakeClouds, valkey: Valkey) -> Iterator[Gateway]:
    gw = start_gateway(
        services,
        fake_clouds,
        f"redis://127.0.0.1:{valkey.port}/{next_db()}",
        "http-edges",
        role="web",
        LOG_LEVEL="INFO",
    )
    gw.business = create_business(gw)
    yield gw
    gw.stop()


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def incomplete(gateway: Gateway, channel: str) -> float:
    return metric(gateway, f'gateway_webhooks_total{{channel="{channel}",outcome="incomplete"}}')


@pytest.mark.parametrize("path", sorted(WEBHOOKS))
def test_a_client_gone_before_its_body_ended_is_counted_not_an_error(
    gateway: Gateway, path: str
) -> None:
    """A webhook whose sender closes the connection 40 bytes into a body of 100 is counted
    (``outcome="incomplete"``) and logged as what it is. (Was a bug: Starlette's
    ClientDisconnect escaped the endpoint and uvicorn logged *Exception in ASGI application*
    at error level, for something any client can do.)"""
    channel = WEBHOOKS[path]
    before = incomplete(gateway, channel)
    with connect(gateway) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b"a" * 40
        )
    assert wait_for(lambda: incomplete(gateway, channel) == before + 1, 10)
    web = gateway.processes[0]
    assert any(line.get("path") == path for line in web.log_events("webhook body cut short"))
    errors = [line for line in web.log_events() if line.get("level") == "error"]
    assert errors == []
