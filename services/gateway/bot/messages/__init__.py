"""Reply texts per locale, kept apart from the logic: add a module with the same keys as
``en.py`` and list it in ``CATALOGUES`` to add a language (and its ``PLACES``, the names
of places that differ in it, to ``PLACE_NAMES``)."""

from __future__ import annotations

from typing import Any

from services.gateway.bot.messages import en, es

CATALOGUES: dict[str, dict[str, str]] = {"en": en.MESSAGES, "es": es.MESSAGES}
# The search service names places in English (the airport data's names): a language's
# own names for them, by that name and the place's country.
PLACE_NAMES: dict[str, dict[tuple[str, str], str]] = {"en": {}, "es": es.PLACES}
DEFAULT_LOCALE = "en"


def language(locale: str) -> str:
    """BCP 47 tag → a catalogue we have: "es-MX" → "es"; anything unknown → "en"."""
    primary = locale.replace("_", "-").split("-")[0].lower()
    return primary if primary in CATALOGUES else DEFAULT_LOCALE


class Texts:
    """The replies of one locale."""

    def __init__(self, locale: str) -> None:
        self.locale = locale  # the business's BCP 47 tag: its region decides how numbers read
        self.language = language(locale)
        self._messages = CATALOGUES[self.language]
        self._places = PLACE_NAMES[self.language]

    def __call__(self, key: str, **values: Any) -> str:
        template = self._messages.get(key) or CATALOGUES[DEFAULT_LOCALE][key]
        return template.format(**values) if values else template

    def place(self, name: str, country: str) -> str:
        """A place's name as the search service gives it, in this language ("Rome", "IT" →
        "Roma"; Rome, Georgia stays Rome)."""
        return self._places.get((name, country), name)

    def words(self, key: str) -> list[str]:
        return self._messages[key].split()
