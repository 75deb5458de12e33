"""The conversation engine of this release against the search service of the release before
it, as mid-way through a rolling upgrade whose gateway rolled out first: that service is taken
from git (``git archive``) and run as a process on the same Valkey and cache database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import cast

import grpc
import pytest
from prometheus_client import REGISTRY

from parley.search.v1 import search_pb2_grpc
from services.common.clients import make_channel, with_call_defaults
from services.gateway.bot import create_engine
from services.gateway.bot.dialogue import BotEngine
from services.gateway.engine import SearchPort
from tests.bot.chat import Chat
from tests.bot.conftest import SEARCH
from tests.bot.test_dialogue import offers_in, settings
from tests.support.processes import ServiceProcess, Valkey, free_port
from tests.support.releases import previous_release


@pytest.fixture(scope="module")
def previous_search(valkey: Valkey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = previous_release(tmp_path_factory.mktemp("previous-release"))
    port = free_port()
    process = ServiceProcess(
        "services.search.server",
        {
            "PYTHONPATH": str(root),
            "SEARCH_PORT": str(port),
            "SEARCH_METRICS_PORT": "0",
            "REDIS_URL": valkey.url.replace("/0", "/5"),  # the cache this release's search uses
            "SEARCH_PROVIDER": "offline",
        },
        root / "search.log",
        root=root,
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        process.wait_serving(address, SEARCH, timeout=60)
        yield address
    finally:
        process.stop()


@pytest.fixture
async def engine_on_previous_search(previous_search: str) -> AsyncIterator[BotEngine]:
    channel: grpc.aio.Channel = make_channel(previous_search, SEARCH)
    stub = with_call_defaults(search_pb2_grpc.SearchServiceStub(channel), 5.0)
    yield create_engine(cast(SearchPort, stub), settings())
    await channel.close()


async def test_a_family_is_never_shown_the_adults_price_by_the_previous_search_service(
    engine_on_previous_search: BotEngine,
) -> None:
    """(Was a bug: the previous release's search service ignores children and infants, so a
    gateway rolled out before it showed *NYC → London · 2 adults, 1 child* with the 2 adults'
    fares as the family's.) Until a search service of this release answers, a family is told
    that search is not available and keeps its trip; adults alone are searched as before."""
    ignored = ignored_party()
    chat = Chat(engine_on_previous_search)
    reply = await chat.say("2 adults and a child NYC to London next Friday")
    assert "flight search isn't available right now" in reply and not offers_in(reply), reply
    assert "2 adults, 1 child" in reply and "results" not in chat.state, reply
    # Counted, for operators: a log line alone was easy to miss while families were refused.
    assert ignored_party() == ignored + 1
    reply = await Chat(engine_on_previous_search, user_id="15550000031").say(
        "2 adults NYC to London next Friday"
    )
    assert "· 2 adults" in reply and offers_in(reply), reply
    assert ignored_party() == ignored + 1  # adults alone are priced in full


def ignored_party() -> float:
    return REGISTRY.get_sample_value("gateway_search_ignored_party_total") or 0.0


async def test_places_are_found_as_the_previous_search_service_finds_them(
    engine_on_previous_search: BotEngine,
) -> None:
    """What docs/deployment.md (*Upgrade*) says a gateway rolled out first costs in places: the
    previous release's search service has no ``subdivision``, so same-named cities of different
    states are not told apart and one is taken without asking, as that release did (this
    release's service asks *Which “Springfield” do you mean?*)."""
    chat = Chat(engine_on_previous_search)
    reply = await chat.say("Springfield to Miami tomorrow")
    assert "Which “Springfield” do you mean?" not in reply and offers_in(reply), reply
    assert chat.state["trip"]["origin"]["code"] == "SGF", reply
    assert "subdivision" not in chat.state["trip"]["origin"]
