"""Provider discovery and selection: a provider is a module with a FACTORY."""

from __future__ import annotations

import pytest

from services.common.settings import load_settings
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


def test_a_lock_shorter_than_a_fetch_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cross-replica lock must outlast the provider's time limit, or it expires while its
    holder still fetches and the other replicas call the provider too (two calls seen with
    0.2 s against 2 s). (Was a bug: nothing checked the two against each other.)"""
    monkeypatch.setenv("SEARCH_LOCK_SECONDS", "5")
    monkeypatch.setenv("SEARCH_PROVIDER_TIMEOUT_SECONDS", "10")
    with pytest.raises(SystemExit) as stopped:
        load_settings(SearchSettings)
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert "  SEARCH_LOCK_SECONDS: must be at least SEARCH_PROVIDER_TIMEOUT_SECONDS" in said
    monkeypatch.setenv("SEARCH_LOCK_SECONDS", "10")
    assert load_settings(SearchSettings).search_lock_seconds == 10
