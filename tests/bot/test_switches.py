"""Roll-out switches: true/false/percent, a stable choice per user, and the split it gives."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.bot.messages import CATALOGUES, Texts, language
from services.gateway.bot.settings import BotSettings
from services.gateway.bot.switches import Switch


@pytest.mark.parametrize(
    ("value", "percent", "shown"),
    [("true", 100, "on"), ("FALSE", 0, "off"), ("25%", 25, "25%"), (" 12.5 % ", 12.5, "12.5%")],
)
def test_values(value: str, percent: float, shown: str) -> None:
    switch = Switch.parse("use_smart_handler", value)
    assert switch.percent == percent and switch.describe() == shown


def test_bad_values_stop_start_up_naming_the_variable() -> None:
    with pytest.raises(ValidationError) as error:
        BotSettings(use_smart_handler="sometimes")
    assert error.value.errors()[0]["loc"] == ("use_smart_handler",)
    with pytest.raises(ValueError):
        Switch.parse("x", "150%")


def test_a_quarter_of_1000_users_within_three_points() -> None:
    switch = Switch.parse("use_smart_handler", "25%")
    users = [f"1555{n:07d}" for n in range(1000)]
    share = sum(switch.enabled_for("business-1", user) for user in users) / len(users)
    print(f"\n25% roll-out: {share:.1%} of 1,000 users")
    assert abs(share - 0.25) <= 0.03


def test_the_choice_is_stable_per_business_and_user() -> None:
    switch = Switch.parse("use_async_search", "50%")
    first = [switch.enabled_for("b1", f"u{n}") for n in range(200)]
    again = [Switch.parse("use_async_search", "50%").enabled_for("b1", f"u{n}") for n in range(200)]
    assert first == again
    other_business = [switch.enabled_for("b2", f"u{n}") for n in range(200)]
    assert first != other_business


def test_settings_expose_the_switches() -> None:
    settings = BotSettings(use_smart_handler="25%", use_async_search="off")
    assert settings.smart_handler().describe() == "25%"
    assert settings.async_search().describe() == "off"


def test_every_locale_has_every_text() -> None:
    keys = set(CATALOGUES["en"])
    for name, catalogue in CATALOGUES.items():
        assert set(catalogue) == keys, name
    assert language("es-MX") == "es" and language("he") == "en"
    assert Texts("es")("ask_origin") == "¿Desde dónde sales?"
