"""A simple engine of the tests' own, loaded by the gateway with
``GATEWAY_ENGINE=tests.gateway.engines:create_engine``.

It echoes the text with a per-conversation counter kept in state (so a lost update shows as a
repeated number), answers ``early ...`` with an interim reply first, sleeps on
``slow <seconds> ...`` (to kill a worker mid-message), tells ``time left`` in the
message's budget, answers ``say nothing`` with an empty reply (an engine with nothing to say),
and fails on ``boom ...`` and on ``... then boom`` (after that interim reply, for
``early then boom``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx

from services.gateway.engine import Button, Reply, SearchPort, Turn, TurnResult, time_left

if TYPE_CHECKING:
    from services.gateway.bot import BotEngine


class EchoEngine:
    async def handle(self, turn: Turn) -> TurnResult:
        text = turn.message.text
        count = int(turn.conversation.state.get("count", 0)) + 1
        if text.startswith("slow "):
            await asyncio.sleep(float(text.split()[1]))
        if text == "say nothing":
            return TurnResult(replies=[Reply("")], set_state={"count": count})
        if text == "time left":  # what a call of the engine's may still take
            return TurnResult(replies=[Reply(f"time left: {time_left(3600):.1f}")])
        if text.startswith("early "):
            await turn.send_early(Reply("working on it"))
        if text.startswith("buttons "):
            return TurnResult(
                replies=[Reply(f"echo: {text} #{count}", buttons=(Button("yes", "Yes"),))],
                set_state={"count": count},
            )
        if text.startswith("boom") or text.endswith(" then boom"):
            raise RuntimeError("the engine failed on purpose")
        return TurnResult(
            replies=[Reply(f"echo: {text} #{count}")],
            set_state={"count": count, "last": text},
        )

    def describe(self) -> dict[str, Any]:
        return {"engine": "echo (tests)"}


def create_engine(search: SearchPort) -> EchoEngine:
    return EchoEngine()


# The HTTP clients of the language-model engines made below, for a test to look at.
LLM_CLIENTS: list[httpx.AsyncClient] = []


def create_llm_engine(search: SearchPort) -> BotEngine:
    """The conversation engine with its language-model path on (``OPENAI_*`` from the
    environment), over an HTTP client kept in ``LLM_CLIENTS``."""
    # Imported here: the echo engine's gateways need none of the bot.
    from services.common.settings import load_settings
    from services.gateway.bot import BotEngine, BotSettings
    from services.gateway.bot.llm import LLMExtractor
    from services.gateway.bot.places import SearchPlaces

    settings = load_settings(BotSettings)
    client = httpx.AsyncClient()
    LLM_CLIENTS.append(client)
    extractor = LLMExtractor(settings, client)
    return BotEngine(search, settings, places=SearchPlaces(search), extractor=extractor)
