"""Rate limits per business and per user: moving windows in Redis, shared by every replica.

Over the user limit, a message is acknowledged but not processed, and the user gets one notice
per window. Over the business limit, the message waits until the window has room (a backlog
drained or a broadcast's replies are answered at the business's rate, not dropped).

Limits are written in ``limits`` notation (``20/minute``, ``1200/minute``, ``5/second``) and
counted as its moving window counts them: a hit is allowed while fewer than N hits fell in the
last window, each window a Redis list of hit times trimmed to N. Both windows of a message are
checked and counted in ONE script, through the gateway's :class:`AutoPipeline`: one round trip
per message, where ``limits`` itself made one per limit through a client of its own (≈ 7% of a
worker's CPU at 300 messages/s).
The time is Redis's own (``TIME``), so replicas with skewed clocks still count one window; so is
a stream entry's id, which says when a message was queued. Both keys carry the business as
their hash tag: one Cluster slot.
"""

from __future__ import annotations

from typing import NamedTuple

from limits import RateLimitItem, parse

from services.common.redis_pipeline import AutoPipeline

KEY_PREFIX = "gw:rl"
NOW = 2**53  # a message's queueing time past any clock: counted as now

# KEYS: business window, user window. ARGV: business limit, its window in ms, user limit, its
# window in ms, when the message was queued (ms by Redis's clock). The business's window counts
# now: it paces the work. The user's counts when the message was queued: it is about how fast
# the user writes, and a backlog drained in a moment (the workers were down) must not find a
# user over it who wrote minutes apart. Returns {business allowed, user allowed} as 1/0, and
# the ms until the business's window has room (0 unless it is full). A message is counted in
# both windows only when both allow it: one over its user's limit (not processed) must not use
# up the business's window, or one user flooding would hold up the business's other users.
# ARGV[6] '1': a replayed dead letter, which its user's window leaves out (below).
HIT_BOTH = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local queued = math.min(tonumber(ARGV[5]), ms)
local function room_in(key, limit, window, at)
  local oldest = redis.call('LINDEX', key, limit - 1)
  if not oldest then return 0 end
  return math.max(0, tonumber(oldest) + window - at)
end
local function count(key, limit, window, at)
  redis.call('LPUSH', key, at)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('PEXPIRE', key, window)
end
local user = ARGV[6] ~= '1'
if user and room_in(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queued) > 0 then
  return {1, 0, 0}
end
local wait = room_in(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ms)
if wait > 0 then
  return {0, 1, wait}
end
count(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ms)
if user then count(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queued) end
return {1, 1, 0}
"""


class Hit(NamedTuple):
    business: bool  # within the business's limit (if the user is over theirs: True, not counted)
    user: bool  # within the user's
    wait: float  # when the business's window is full: seconds until it has room


def window_keys(business_id: str, user_id: str) -> list[str]:
    tag = f"{KEY_PREFIX}:{{{business_id}}}"
    return [f"{tag}:business", f"{tag}:user:{user_id}"]


def notice_key(business_id: str, user_id: str) -> str:
    """The one over-the-limit notice a user gets per window."""
    return f"gw:rl-notice:{business_id}:{user_id}"


def user_keys(business_id: str, user_id: str) -> list[str]:
    """Every key of one user's limits with one business (their names hold the user's id)."""
    return [window_keys(business_id, user_id)[1], notice_key(business_id, user_id)]


class RateLimits:
    def __init__(self, pipeline: AutoPipeline, per_user: str, per_business: str) -> None:
        self._user: RateLimitItem = parse(per_user)
        self._business: RateLimitItem = parse(per_business)
        if self._user.amount < 1 or self._business.amount < 1:
            raise ValueError("a rate limit must allow at least one message per window")
        self._pipeline = pipeline
        self._hit_both = pipeline.client.register_script(HIT_BOTH)
        self._arguments = [
            self._business.amount,
            self._business.get_expiry() * 1000,
            self._user.amount,
            self._user.get_expiry() * 1000,
        ]

    async def hit(
        self,
        business_id: str,
        user_id: str,
        queued_ms: int | None = None,
        *,
        replayed: bool = False,
    ) -> Hit:
        """A message over its user's limit is (True, False) whatever the business's window; one
        over the business's (False, True, seconds until it has room); one counted only when
        (True, True). ``queued_ms``: when it was queued, by Redis's clock (its stream entry id);
        unknown: now. ``replayed``: a dead letter an operator queued again, in the business's
        window only: it is queued anew, at the replay, so its user's would count the replays
        of messages written minutes apart as one burst and drop those past the limit."""
        business_ok, user_ok, wait_ms = await self._pipeline.script(
            self._hit_both,
            window_keys(business_id, user_id),
            [*self._arguments, NOW if queued_ms is None else queued_ms, int(replayed)],
        )
        return Hit(bool(business_ok), bool(user_ok), int(wait_ms) / 1000)

    async def first_notice(self, business_id: str, user_id: str) -> bool:
        """True once per window: whether to tell the user they are over the limit."""
        key = notice_key(business_id, user_id)
        return bool(await self._pipeline.client.set(key, "1", nx=True, ex=self._user.get_expiry()))
