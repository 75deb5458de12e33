"""The dev outbox: with ``OUTBOX_ONLY=true`` replies are stored per user in Redis, not sent.

One capped stream per business and user (``gw:outbox:<business>:<user>``) plus a set of the
businesses a user has an outbox with, so ``GET /admin/outbox?user_id=`` finds them all. Stream
ids are the cursor: they are time-ordered across streams of one Redis. Both keys expire
``OUTBOX_TTL_SECONDS`` after the user's last reply, so a quiet user's outbox is not kept for
ever.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis

from services.gateway.engine import Reply
from services.gateway.senders.base import Target

OUTBOX_TTL_SECONDS = 7 * 24 * 3600


def outbox_key(business_id: str, user_id: str) -> str:
    return f"gw:outbox:{business_id}:{user_id}"


def index_key(user_id: str) -> str:
    return f"gw:outbox-index:{user_id}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class OutboxSender:
    name = "outbox"

    def __init__(self, client: redis.Redis, max_messages: int) -> None:
        self._redis = client
        self._max = max_messages

    def parts(self, target: Target, reply: Reply) -> list[Reply]:
        return [reply]  # one stored record, however long

    async def post(self, target: Target, part: Reply) -> None:
        record: Any = {
            "business_id": target.business_id,
            "user_id": target.user_id,
            "text": part.text,
            "buttons": json.dumps([{"id": b.id, "title": b.title} for b in part.buttons]),
            "rows": json.dumps(
                [{"id": r.id, "title": r.title, "description": r.description} for r in part.rows]
            ),
            "time": datetime.now(UTC).isoformat(),
        }
        # Not a MULTI: the two keys lie in different Cluster slots, and Cluster refuses a MULTI
        # across slots. Both are written before the reply counts as sent.
        index, stream = index_key(target.user_id), outbox_key(target.business_id, target.user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(index, target.business_id)
            pipe.xadd(stream, record, maxlen=self._max, approximate=False)
            pipe.expire(index, OUTBOX_TTL_SECONDS)
            pipe.expire(stream, OUTBOX_TTL_SECONDS)
            await pipe.execute()

    async def mark_read(self, target: Target, message_id: str) -> None:
        """Nothing to mark: nobody is on the other end."""

    async def erase(self, business_id: str, user_id: str) -> int:
        """Delete one user's outbox with one business (the index set goes with its last
        member), in one round trip; how many replies it held."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(outbox_key(business_id, user_id))
            pipe.delete(outbox_key(business_id, user_id))
            pipe.srem(index_key(user_id), business_id)
            held, _, _ = await pipe.execute()
        return int(held)

    async def read(
        self, user_id: str, after: str | None, business_id: str | None, limit: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        if business_id:
            businesses = [business_id]
        else:
            businesses = sorted(_s(b) for b in await self._redis.smembers(index_key(user_id)))
        start = f"({after}" if after else "-"
        messages: list[dict[str, Any]] = []
        for business in businesses:
            items: Any = await self._redis.xrange(
                outbox_key(business, user_id), min=start, max="+", count=limit
            )
            for entry_id, raw in items:
                fields = {_s(k): _s(v) for k, v in raw.items()}
                messages.append(
                    {
                        "id": _s(entry_id),
                        "business_id": fields.get("business_id", business),
                        "user_id": fields.get("user_id", user_id),
                        "text": fields.get("text", ""),
                        "buttons": json.loads(fields.get("buttons", "[]")),
                        "rows": json.loads(fields.get("rows", "[]")),
                        "time": fields.get("time", ""),
                    }
                )
        messages.sort(key=lambda m: _id_key(m["id"]))
        messages = messages[:limit]
        cursor = messages[-1]["id"] if messages else (after or "0-0")
        return messages, cursor
