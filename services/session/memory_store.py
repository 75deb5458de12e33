"""The bounded in-process store that serves while Redis is unreachable.

Same semantics as the Redis scripts: TTL restarted by every write and touch, history trimmed to
the limit, versions checked and incremented, new ids on re-creation. While Redis answers it
mirrors the conversations this process reads and writes (clean entries), so an outage continues
a conversation instead of starting it afresh; entries written during an outage are dirty until
written back. It holds at most ``max_conversations``: clean entries are evicted first (least
recently used), a dirty one only when nothing else is left, and that loss is counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from services.common.errors import VersionConflict
from services.session.model import (
    INDEX_SHARDS,
    Conversation,
    ConversationKey,
    Cursor,
    Page,
    Role,
    Summary,
    check_state_bounds,
    encode_cursor,
)


def now_ms() -> int:
    return int(time.time() * 1000)


class MemoryStore:
    def __init__(self, *, max_conversations: int, ttl_seconds: int, history_limit: int) -> None:
        self.max_conversations = max_conversations
        self.ttl_ms = ttl_seconds * 1000
        self.history_limit = history_limit
        self._clean: OrderedDict[ConversationKey, Conversation] = OrderedDict()
        self._dirty: OrderedDict[ConversationKey, Conversation] = OrderedDict()
        self.dropped_dirty = 0  # dirty conversations evicted before write-back
        self.expired = 0  # dirty conversations expired before write-back, not yet counted
        # Conversations ended during an outage: key → (id, version, when in ms) of the one
        # ended, so the write-back ends that id in Redis too, whatever its version there, and
        # whatever conversation Redis held for the key from before the end.
        self.ended: dict[ConversationKey, tuple[str, int, int]] = {}

    def __len__(self) -> int:
        return len(self._clean) + len(self._dirty)

    @property
    def pending(self) -> int:
        return len(self._dirty) + len(self.ended)

    def dirty_keys(self) -> list[ConversationKey]:
        return list(self._dirty)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _live(self, key: ConversationKey, now: int) -> Conversation | None:
        for table in (self._dirty, self._clean):
            conversation = table.get(key)
            if conversation is not None:
                if conversation.expire_ms <= now:
                    del table[key]
                    if table is self._dirty:
                        self.expired += 1
                    return None
                table.move_to_end(key)
                return conversation
        return None

    def _store(self, conversation: Conversation, *, dirty: bool) -> None:
        key = conversation.key
        self._clean.pop(key, None)
        self._dirty.pop(key, None)
        (self._dirty if dirty else self._clean)[key] = conversation
        while len(self) > self.max_conversations:
            if self._clean:
                self._clean.popitem(last=False)
            else:
                self._dirty.popitem(last=False)
                self.dropped_dirty += 1

    def mirror(self, conversation: Conversation) -> None:
        """Keep what Redis holds (unless an unsaved outage write is newer).

        Not copied: the caller only reads it, and this store copies before it changes anything.
        """
        mine = self._dirty.get(conversation.key)
        if mine is not None and mine.version >= conversation.version:
            return
        self._store(conversation, dirty=False)

    def mirror_expiry(self, key: ConversationKey, expire_ms: int) -> None:
        conversation = self._clean.get(key)
        if conversation is not None:
            self._clean[key] = conversation.expiring_at(expire_ms)

    def mirrored(self, key: ConversationKey) -> Conversation | None:
        """What Redis held for ``key`` when this process last read or wrote it (a clean entry:
        never an outage write that Redis may not have)."""
        return self._clean.get(key)

    def forget(self, key: ConversationKey) -> None:
        self._clean.pop(key, None)
        self._dirty.pop(key, None)

    def peek_dirty(self, key: ConversationKey) -> Conversation | None:
        """A dirty conversation to write back (None when it expired or is clean now)."""
        conversation = self._dirty.get(key)
        if conversation is not None and conversation.expire_ms <= now_ms():
            del self._dirty[key]
            self.expired += 1
            return None
        return conversation

    def _still(self, written: Conversation) -> Conversation | None:
        """The dirty entry if it is still ``written`` (same id and version: versions restart
        with every id), else None: a newer write, or another conversation, since then."""
        conversation = self._dirty.get(written.key)
        if conversation is None or conversation.id != written.id:
            return None
        return conversation if conversation.version == written.version else None

    def mark_clean(self, written: Conversation) -> None:
        """After a write-back of ``written``; a write since then stays dirty."""
        conversation = self._still(written)
        if conversation is not None:
            del self._dirty[written.key]
            self._clean[written.key] = conversation

    def discard(self, written: Conversation) -> None:
        """After a write-back of ``written`` lost to Redis's copy (the same version, which may
        differ, or a newer one, or another conversation): this one must not stand for Redis's;
        a write since then stays dirty."""
        if self._still(written) is not None:
            del self._dirty[written.key]

    def sweep(self) -> None:
        """Drop expired entries. Only outage writes count in ``expired``: a copy of what Redis
        held expired there too, Redis's to count (a busy replica holds thousands)."""
        now = now_ms()
        for table in (self._clean, self._dirty):
            for key in [k for k, c in table.items() if c.expire_ms <= now]:
                del table[key]
                if table is self._dirty:
                    self.expired += 1

    # -- the operations, as the Redis scripts do them --------------------------------------------

    def _new(self, key: ConversationKey, new_id: str, now: int) -> Conversation:
        return Conversation(new_id, key, [], {}, 0, now, now, now + self.ttl_ms)

    def get(
        self, key: ConversationKey, *, create: bool, new_id: str
    ) -> tuple[Conversation | None, bool]:
        now = now_ms()
        conversation = self._live(key, now)
        if conversation is not None:
            return conversation.copy(), False
        if not create:
            return None, False
        conversation = self._new(key, new_id, now)
        conversation.version = 1
        self._store(conversation, dirty=True)
        return conversation.copy(), True

    def update(
        self,
        key: ConversationKey,
        *,
        append: list[bytes],
        set_state: dict[str, bytes],
        remove_state: list[str],
        expected_version: int | None,
        new_id: str,
    ) -> tuple[Conversation, bool]:
        now = now_ms()
        current = self._live(key, now)
        version = current.version if current is not None else 0
        if expected_version is not None and expected_version != version:
            raise VersionConflict(version)
        base = self._new(key, new_id, now) if current is None else current
        conversation = base.changed(
            append, set_state, remove_state, self.history_limit, now, now + self.ttl_ms
        )
        if set_state:  # only a key set can grow the state
            check_state_bounds(base.state, conversation.state)
        self._store(conversation, dirty=True)
        return conversation.copy(), current is None

    def touch(self, key: ConversationKey) -> int | None:
        now = now_ms()
        conversation = self._live(key, now)
        if conversation is None:
            return None
        updated = conversation.expiring_at(now + self.ttl_ms)
        self._store(updated, dirty=True)
        return updated.expire_ms

    def end(self, key: ConversationKey) -> bool:
        now = now_ms()
        conversation = self._live(key, now)
        self.forget(key)
        if conversation is None:
            return False
        # A pending end stays: a conversation started after it cannot have reached Redis, as
        # the write-back puts nothing for a key before its pending end.
        self.ended.setdefault(key, (conversation.id, conversation.version, now))
        return True

    def list_page(
        self, business_id: str, role: Role | None, page_size: int, cursor: Cursor
    ) -> Page:
        """The same walk as the Redis store's, so page tokens work on either."""
        now = now_ms()
        by_shard: dict[int, list[tuple[int, str, Conversation]]] = {}
        for table in (self._clean, self._dirty):
            for key, conversation in table.items():
                if key.business_id == business_id and conversation.expire_ms > now:
                    entry = (conversation.expire_ms, key.member, conversation)
                    by_shard.setdefault(key.shard, []).append(entry)
        items: list[Summary] = []
        after = (
            (cursor.after_score, cursor.after_member) if cursor.after_score is not None else None
        )
        for shard in range(cursor.shard, INDEX_SHARDS):
            for expire, member, conversation in sorted(by_shard.get(shard, [])):
                if after is not None and (expire, member) <= after:
                    continue
                if role is not None and conversation.key.role != role:
                    continue
                items.append(
                    Summary(
                        conversation.id,
                        conversation.key,
                        conversation.version,
                        len(conversation.history),
                        conversation.updated_ms,
                        expire,
                    )
                )
                if len(items) == page_size:
                    return Page(items, encode_cursor(Cursor(shard, expire, member)))
            after = None
        return Page(items, "")
