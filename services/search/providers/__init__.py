"""Provider discovery: every module in this package that defines ``FACTORY`` is a provider."""

from __future__ import annotations

import importlib
import pkgutil

from services.search.places import Places
from services.search.providers.base import Provider, ProviderFactory
from services.search.settings import SearchSettings


def factories() -> list[ProviderFactory]:
    """Every provider module's factory, by priority."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        factory = getattr(loaded, "FACTORY", None)
        if isinstance(factory, ProviderFactory):
            found.append(factory)
    return sorted(found, key=lambda f: (f.priority, f.name))


def select_provider(settings: SearchSettings, places: Places) -> Provider:
    """The provider SEARCH_PROVIDER names, or with "auto" the first one that is configured."""
    available = factories()
    wanted = settings.search_provider.strip().lower()
    if wanted != "auto":
        for factory in available:
            if factory.name == wanted:
                provider = factory.create(settings, places)
                if provider is None:
                    raise ValueError(f"SEARCH_PROVIDER={wanted}: that provider is not configured")
                return provider
        names = ", ".join(f.name for f in available)
        raise ValueError(f"SEARCH_PROVIDER={wanted}: unknown provider (known: auto, {names})")
    for factory in available:
        provider = factory.create(settings, places)
        if provider is not None:
            return provider
    raise ValueError("no flight provider is configured")
