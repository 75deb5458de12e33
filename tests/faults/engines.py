"""An engine for one fault test (``GATEWAY_ENGINE=tests.faults.engines:create_engine``).

The first time it sees a message it stalls: ``early …`` after sending an early reply (so the
test can kill the worker), anything else for 3 s before answering (so the test can stop Redis).
Every later attempt answers at once, with no early reply. The real engine does the same
when a slow search (a *Searching …* notice) has been cached by the time the message is retried:
whether an early reply goes out depends on timing, so it can differ between attempts."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from services.gateway.engine import Reply, SearchPort, Turn, TurnResult


class FirstAttemptStallsEngine:
    def __init__(self) -> None:
        self.markers = Path(os.environ["FAULTS_MARKER_DIR"])

    async def handle(self, turn: Turn) -> TurnResult:
        text = turn.message.text
        name = hashlib.sha256(turn.message.provider_message_id.encode()).hexdigest()
        marker = self.markers / name
        if not marker.exists():
            marker.touch()
            if text.startswith("early"):
                await turn.send_early(Reply(f"working on: {text}"))
                await asyncio.sleep(60)
            else:  # "slow": stall, then answer (the test takes Redis away meanwhile)
                await asyncio.sleep(3)
        return TurnResult(replies=[Reply(f"answer: {text}")])

    def describe(self) -> dict[str, Any]:
        return {"engine": "first attempt stalls (fault tests)"}


def create_engine(search: SearchPort) -> FirstAttemptStallsEngine:
    return FirstAttemptStallsEngine()
