"""Drive the engine turn by turn the way the gateway's worker does: build a Turn, apply the
TurnResult's state changes, keep what was sent early."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from services.gateway.bot.dialogue import BotEngine
from services.gateway.engine import (
    BusinessContext,
    ConversationView,
    InboundMessage,
    MessageType,
    Reply,
    Turn,
    TurnResult,
)


@dataclass
class Chat:
    engine: BotEngine
    user_id: str = "15550000001"
    locale: str = "en"
    time_zone: str = "America/New_York"
    business_id: str = "b-test"
    channel: str = "cloud_api"
    now: datetime | None = None
    written: datetime | None = None  # the message's timestamp (when the user wrote it)
    state: dict[str, Any] = field(default_factory=dict)
    early: list[Reply] = field(default_factory=list)
    last: TurnResult | None = None
    version: int = 0

    async def send(
        self, type_: MessageType = "text", text: str = "", **payload: Any
    ) -> list[Reply]:
        self.version += 1
        turn = Turn(
            business=BusinessContext(
                self.business_id, "Test Travel", self.locale, self.time_zone, "cloud_api"
            ),
            conversation=ConversationView("c1", self.version, dict(self.state), ()),
            message=InboundMessage(
                channel="cloud_api",
                provider_message_id=f"wamid.{self.version}",
                channel_identity="100000000000001",
                user_id=self.user_id,
                type=type_,
                timestamp=self.written or datetime.now(UTC),
                text=text,
                profile_name="Ada Lovelace",
                payload=payload,
            ),
            now=self.now or datetime.now(UTC),
            send_early=self._early,
        )
        result = await self.engine.handle(turn)
        # Through JSON as the session service stores it (a protobuf Struct: numbers are floats).
        stored = Struct()
        stored.update(result.set_state)
        self.state.update(MessageToDict(stored))
        for key in result.remove_state:
            self.state.pop(key, None)
        self.last = result
        return result.replies

    async def say(self, text: str) -> str:
        """The text of the replies to ``text``, joined."""
        replies = await self.send("text", text)
        return "\n---\n".join(reply.text for reply in replies)

    async def _early(self, reply: Reply) -> None:
        self.early.append(reply)
