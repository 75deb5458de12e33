"""Parley's conversation engine: one message is enough.

The gateway's worker builds it once with :func:`create_engine` and calls ``handle(turn)`` per
message (the contract is in :mod:`services.gateway.engine`); ``describe()`` reports the switches
in force for ``/health/detailed``.
"""

from __future__ import annotations

from services.common.settings import load_settings
from services.gateway.bot.dialogue import BotEngine
from services.gateway.bot.llm import Extractor, LLMExtractor, RulesExtractor
from services.gateway.bot.places import PlaceResolver, SearchPlaces
from services.gateway.bot.settings import BotSettings
from services.gateway.engine import SearchPort

__all__ = ["BotEngine", "BotSettings", "create_engine"]


def create_engine(
    search: SearchPort,
    settings: BotSettings | None = None,
    *,
    places: PlaceResolver | None = None,
) -> BotEngine:
    """The engine, with settings from the environment unless given."""
    settings = settings or load_settings(BotSettings)
    extractor: Extractor = LLMExtractor(settings) if settings.llm_enabled else RulesExtractor()
    return BotEngine(
        search,
        settings,
        places=places or SearchPlaces(search),
        extractor=extractor,
    )
