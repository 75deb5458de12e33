"""Provider discovery and selection: a provider is a module with a FACTORY."""

from __future__ import annotations

import pytest

from services.search.places import Places
from services.search.providers import factories, select_provider
from services.search.settings import SearchSettings


@pytest.fixture(autouse=True)
def no_amadeus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMADEUS_CLIENT_ID", "AMADEUS_CLIENT_SECRET", "SEARCH_PROVIDER"):
        monkeypatch.delenv(name, raising=False)


def test_every_provider_module_is_discovered_by_priority() -> None:
    assert [f.name for f in factories()] == ["amadeus", "offline"]


def test_auto_falls_back_to_offline_without_credentials(places: Places) -> None:
    provider = select_provider(SearchSettings(), places)
    assert (provider.name, provider.breaker_name, provider.demo_data) == (
        "offline",
        "offline_provider",
        True,
    )


def test_a_named_provider_must_exist_and_be_configured(places: Places) -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        select_provider(SearchSettings(search_provider="skyscanner"), places)
    with pytest.raises(ValueError, match="not configured"):
        select_provider(SearchSettings(search_provider="amadeus"), places)


def test_popular_routes_setting_is_validated() -> None:
    assert SearchSettings(search_popular_routes="jfk-lhr, CDG-FCO").popular_routes == [
        ("JFK", "LHR"),
        ("CDG", "FCO"),
    ]
    with pytest.raises(ValueError, match="ORIGIN-DESTINATION"):
        SearchSettings(search_popular_routes="JFK>LHR")
