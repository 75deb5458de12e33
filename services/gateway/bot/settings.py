"""Conversation engine settings (environment variables; see the README's Configuration table)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.settings import CommonSettings, ConfigurationError, http_url
from services.gateway.bot.switches import Switch


class BotSettings(CommonSettings):
    # Roll-out switches, as the migration guides name them: "true", "false" or "25%".
    use_smart_handler: str = "true"
    use_async_search: str = "true"
    # The optional language-model path (any OpenAI-compatible chat-completions endpoint).
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_timeout_seconds: float = Field(default=2.5, gt=0, le=30)
    # What the model may write per call: an answer with every field and real place names is
    # about 100 tokens.
    openai_max_tokens: int = Field(default=300, ge=100, le=4096)
    # Search: the deadline of one SearchFlights call, and how long it may run before the
    # "searching …" message goes out (when USE_ASYNC_SEARCH is on for the user).
    bot_search_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    bot_searching_notice_ms: int = Field(default=300, ge=0, le=10_000)
    # How long a worker reuses a fresh SearchFlights answer for the same request (0: never).
    bot_search_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    # The worker's deadline for the whole message (GatewaySettings has it too): read here only
    # to check that the engine's own deadlines fit in it.
    engine_timeout_seconds: float = Field(default=20.0, gt=0, le=600)

    @field_validator("use_smart_handler", "use_async_search")
    @classmethod
    def _switch(cls, value: str) -> str:
        Switch.parse("check", value)  # raises ValueError with a clear message
        return value.strip()

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Without its scheme every model call failed and the rules answered, without a word.
        value = http_url(value, "https://api.openai.com/v1")
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            # httpx sends a URL's user:password as Basic auth in place of the Authorization
            # header: the key was never sent, and every call was refused.
            raise ValueError(
                "must not hold a user name or password (they would be sent as Basic auth"
                " instead of OPENAI_API_KEY as the Bearer token); the key is the credential"
            )
        return value

    @model_validator(mode="after")
    def _deadlines_fit_the_message(self) -> BotSettings:
        # A slow search (or model) is meant to be answered: an apology, or the rules. Past the
        # message's deadline instead, the turn fails as a whole, is retried, and is dead-lettered
        # while the dependency stays slow: the user is never answered.
        budget = self.bot_search_timeout_seconds
        names = "BOT_SEARCH_TIMEOUT_SECONDS"
        if self.llm_enabled:
            budget += self.openai_timeout_seconds
            names = "OPENAI_TIMEOUT_SECONDS + " + names
        if self.engine_timeout_seconds <= budget:
            raise ConfigurationError(
                "ENGINE_TIMEOUT_SECONDS",
                f"must be more than {names} (a slow search would fail the whole message,"
                " retried and dead-lettered, instead of being answered with an apology)",
            )
        return self

    def smart_handler(self) -> Switch:
        return Switch.parse("use_smart_handler", self.use_smart_handler)

    def async_search(self) -> Switch:
        return Switch.parse("use_async_search", self.use_async_search)

    @property
    def llm_enabled(self) -> bool:
        return bool(self.openai_api_key and self.openai_api_key.get_secret_value())
