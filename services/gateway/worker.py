"""Workers: take queued messages, answer them, and only then acknowledge.

One entry: resolve the business (unknown or inactive → dead letter, no reply), check the rate
limits, mark the user's message read, load the conversation, run the engine, send the replies,
save the user's message, the replies and the state changes in one session update under the
version we read, then acknowledge. Failures retry with backoff; after ``MAX_ATTEMPTS`` the entry
goes to the dead-letter stream with its last error. A dependency's failures (a service unavailable
or past its deadline, a provider's 5xx or 429, Redis) do not use up attempts: they retry for
``RETRY_WINDOW_SECONDS``, so an outage delays messages instead of losing them.

Partitions: a worker process holds the leases of up to its fair share of partitions
(``ceil(partitions / live workers)``) and runs one loop per held partition, handling its entries
one at a time. A message waiting for its retry holds up only its own user's later messages; the
partition's other users go on meanwhile (:class:`Waiting`). A lease lasts
``VISIBILITY_TIMEOUT_SECONDS`` and is renewed while held, so the partitions of a worker that died
are taken over, pending entries included, once its leases lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import importlib
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import orjson
import structlog
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from parley.business.v1 import business_pb2
from parley.session.v1 import session_pb2
from services.common.clients import request_id_var
from services.common.errors import error_info
from services.common.logs import bind_call_fields, reset_call_fields
from services.common.outage import OutageLog
from services.common.redact import mask_phone
from services.common.redis_client import refusal
from services.common.redis_pipeline import AutoPipeline
from services.common.settings import ConfigurationError
from services.common.struct_values import python_to_value, value_to_python
from services.common.tasks import cancel_and_wait
from services.gateway import metrics
from services.gateway.businesses import BusinessDirectory
from services.gateway.clients import Clients
from services.gateway.engine import (
    BusinessContext,
    ConversationView,
    Engine,
    InboundMessage,
    Reply,
    SearchPort,
    Turn,
    TurnResult,
    is_notice,
    message_deadline,
)
from services.gateway.queue import WORKERS, Entry, Queue, sent_log_key
from services.gateway.ratelimit import RateLimits
from services.gateway.senders.base import Sender, SendError, Target, TokenExpired
from services.gateway.settings import GatewaySettings

log = structlog.get_logger()

SESSION_CONTENT_LIMIT = 4096
DEFAULT_ENGINE_MODULE = "services.gateway.bot"
# A service that is down, restarting or overloaded, not one refusing this message; its store
# full is one too (the session service answers RESOURCE_EXHAUSTED while its Redis is at
# maxmemory, until memory is freed).
TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Send outcomes that refuse the business's credentials (Cloud API 190/0, Twilio 401/20003).
REFUSED_CREDENTIALS = frozenset({"token_expired", "credentials_refused"})
RATE_NOTICE = "You are sending messages faster than we can answer. Please wait a minute."
# The error recorded for a message waiting for room in its business's rate-limit window.
OVER_LIMIT = "the business is over its rate limit"
# WhatsApp (Cloud API and Twilio alike) lets a business answer only within 24 hours of the
# user's message; a minute is kept for the turn itself.
REPLY_WINDOW_SECONDS = 24 * 3600 - 60
ROLE_NAMES = {
    session_pb2.MESSAGE_ROLE_USER: "user",
    session_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
    session_pb2.MESSAGE_ROLE_SYSTEM: "system",
}


@dataclasses.dataclass
class Route:
    """Where one message's replies go. ``target`` is replaced when the provider refuses its
    credentials and the store has others by then: the reply's later parts go with those, not
    refused first and the business read again for each of them."""

    target: Target


class DeadLetter(Exception):
    """This entry can never succeed as it is: record it and move on."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


class OverBusinessLimit(Exception):
    """The business's rate-limit window is full: nothing was counted, and the message waits
    ``seconds`` for room (a backlog or a broadcast's replies, answered at the business's rate)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(OVER_LIMIT)
        self.seconds = seconds


class EngineTimeout(Exception):
    """The engine did not answer within ``ENGINE_TIMEOUT_SECONDS``: this message's failure."""


class LeaseLapsed(Exception):
    """This process stalled past its partition's lease in the middle of an attempt: the
    partition's next holder has the entry now, and answers it."""


class Lease:
    """Until when a partition is surely still ours: its lease lasts the visibility timeout from
    when it was taken or last renewed (counted from before the call, so Redis's own expiry is
    no earlier). A process that stalled past that (CPU starvation, a VM or container freeze)
    may have a successor, which has taken its entries over."""

    def __init__(self, seconds: float, taken: float) -> None:
        self.seconds = seconds
        self.until = taken + seconds

    def renewed(self, sent: float) -> None:
        self.until = sent + self.seconds

    def held(self) -> bool:
        return time.monotonic() < self.until


async def _always_held() -> bool:
    return True


# Whether the partition of the attempt running is still ours (set by the partition loop):
# nothing is sent or saved once it is not. Always true outside a partition loop.
lease_held_var: contextvars.ContextVar[Callable[[], Awaitable[bool]]] = contextvars.ContextVar(
    "lease_held", default=_always_held
)


async def _lease_check(what: str) -> None:
    if not await lease_held_var.get()():
        raise LeaseLapsed(f"the partition's lease lapsed before {what}")


def engine_factory(spec: str) -> Callable[[SearchPort], Engine]:
    """``module:factory`` (``GATEWAY_ENGINE``) → the factory, called with the search port. The
    default, ``services.gateway.bot``, is the conversation engine; without it the gateway answers
    with a plain notice (and says so). One that does not load is a ConfigurationError naming
    ``GATEWAY_ENGINE``."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the default engine may be absent; an engine someone named must load.
        if module_name == DEFAULT_ENGINE_MODULE and error.name == DEFAULT_ENGINE_MODULE:
            log.warning("engine not installed, using the fallback engine", engine=spec)
            from services.gateway.engine import FallbackEngine

            return lambda _search: FallbackEngine()
        raise ConfigurationError("GATEWAY_ENGINE", str(error)) from None
    factory = getattr(module, attr or "create_engine", None)
    if not callable(factory):
        raise ConfigurationError(
            "GATEWAY_ENGINE", f"{module_name} has no function {attr or 'create_engine'}"
        )
    return cast(Callable[[SearchPort], Engine], factory)


class Processor:
    """Handles one queue entry end to end (without the queue bookkeeping)."""

    def __init__(
        self,
        settings: GatewaySettings,
        clients: Clients,
        engine: Engine,
        senders: dict[str, Sender],
        rate_limits: RateLimits,
        pipeline: AutoPipeline,
        businesses: BusinessDirectory,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.engine = engine
        self.senders = senders
        self.rate_limits = rate_limits
        self.businesses = businesses
        self._pipeline = pipeline
        self._mark_sent = pipeline.client.register_script(SentLog.MARK)

    def sender_for(self, channel: str) -> Sender:
        return self.senders["outbox"] if self.settings.outbox_only else self.senders[channel]

    async def process(self, entry: Entry, attempt: int = 1, waited_for_limit: bool = False) -> str:
        """The outcome label; raises DeadLetter, or anything else to retry. Rate limits count
        a message once, not once per retry: on its first attempt, or on the next one after it
        found its business's window full (``OverBusinessLimit``: nothing was counted then). A
        user over their limit is recorded in the sent log, which tells a retry so."""
        message = entry.message
        business, credentials = await self._business(message)
        route = Route(
            Target(
                channel=message.channel,
                business_id=business.id,
                user_id=message.user_id,
                channel_identity=message.channel_identity,
                access_token=credentials.whatsapp_access_token,
                twilio_account_sid=credentials.twilio_account_sid,
                twilio_auth_token=credentials.twilio_auth_token,
            )
        )
        sender = self.sender_for(message.channel)
        if (
            sender.name == "cloud_api"
            and business.access_token_status == business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
        ):
            # Meta refused this token (190/0): sending with it again only fails again. The
            # message waits in the dead letters for a replay once the business has a new token.
            raise DeadLetter("token_expired", f"business {business.id}'s token needs renewal")
        age = time.time() - message.timestamp.timestamp()
        if sender.name != "outbox" and age > REPLY_WINDOW_SECONDS:
            # No reply can reach the user (Meta 131047, Twilio 63016): not worth a search, and
            # a turn saved with it would have the bot remember a reply the user never saw.
            raise DeadLetter(
                "outside_window",
                f"the user wrote {age / 3600:.0f} h ago, past WhatsApp's 24-hour reply window "
                "(a template message can still reach them)",
            )
        sent = SentLog(self._pipeline, self._mark_sent, entry, self.settings.dedupe_ttl_seconds)
        # Only an earlier attempt can have sent anything (attempts are counted before they run),
        # or this message's life before it was dead-lettered and replayed.
        replayed = entry.fields.get("rp") == "1"
        already = await sent.fingerprints() if attempt > 1 or replayed else set()
        if SentLog.RATE_LIMITED in already:
            # An earlier attempt found the user over their limit and died before acknowledging:
            # the limits count a message once, so only its record says so now.
            return "rate_limited"
        hit = (
            await self.rate_limits.hit(
                business.id,
                message.user_id,
                entry.queued_ms,
                replayed=replayed,
            )
            if attempt == 1 or waited_for_limit
            else None
        )
        if hit and not hit.business:
            raise OverBusinessLimit(hit.wait)
        if hit and not hit.user:
            metrics.RATE_LIMITED.labels("user").inc()
            await sent.mark(SentLog.RATE_LIMITED)  # for a retry, should this attempt die now
            # A notice (a reaction, a system message) is never answered, this notice neither:
            # the window's one notice is left for the next message the user writes.
            if not is_notice(message) and await self.rate_limits.first_notice(
                business.id, message.user_id
            ):
                await self._send_rate_notice(sender, route, business.locale)
            return "rate_limited"

        # A notice (a reaction, Meta's system message) gets no answer: a typing indicator would
        # show "typing…" for 25 s and then nothing, so neither it nor the read receipt it rides on.
        read_receipt = (
            None
            if is_notice(message)
            else asyncio.create_task(self._mark_read(sender, route.target, message))
        )
        try:
            return await self._converse(entry, business, route, sender, sent, already)
        finally:
            if read_receipt is not None:
                with contextlib.suppress(Exception):
                    await read_receipt

    async def _send_rate_notice(self, sender: Sender, route: Route, locale: str) -> None:
        """The one notice of the window, best effort: a failure must not make the message
        retry, since a retry counts no limit again and would answer it in full."""
        try:
            for part in sender.parts(route.target, Reply(self._rate_notice(locale))):
                await self._send(sender, route, part)
        except (SendError, DeadLetter, TimeoutError) as error:
            log.warning(
                "rate-limit notice not sent",
                error=_describe(error),
                user=mask_phone(route.target.user_id),
                business_id=route.target.business_id,
            )

    def _rate_notice(self, locale: str) -> str:
        """The over-the-limit notice in the business's language, when the engine has words
        for it: the user was answered in that language until now."""
        words = getattr(self.engine, "rate_notice", None)
        return str(words(locale or "en")) if callable(words) else RATE_NOTICE

    async def _converse(
        self,
        entry: Entry,
        business: business_pb2.Business,
        route: Route,
        sender: Sender,
        sent: SentLog,
        already: set[str],
    ) -> str:
        message = entry.message
        key = session_pb2.ConversationKey(
            business_id=business.id,
            user_id=message.user_id,
            role=session_pb2.CONVERSATION_ROLE_CLIENT,
        )
        conversation = (
            await self._session_call(
                self.clients.session.GetConversation(
                    session_pb2.GetConversationRequest(key=key, create=True)
                )
            )
        ).conversation
        if _holds(conversation, message):
            return "already_done"  # saved by a worker that died before acknowledging

        replies: list[Reply] = []
        # Once the user has had some of the answer (from this attempt or an earlier one), a
        # part refused for good stops the delivery but not the turn: dead-lettering it would
        # leave half a reply and no saved turn, and a replay would answer a second time.
        delivered = [bool(already)]
        refused: list[DeadLetter] = []
        # Parts WhatsApp refused as outside the 24-hour window (done with, not retried): the
        # turn is saved, but it is not counted answered if the user got none of it.
        missed = [0]

        async def deliver(reply: Reply) -> None:
            # Identified by content (and which repeat of it), not by position: a retry may
            # produce a different list, e.g. without the early "searching …" reply.
            fingerprint = SentLog.fingerprint(reply, replies)
            replies.append(reply)
            # Each provider message is recorded as soon as it is accepted, so a retry after a
            # failure on a later one sends only the parts the user has not had.
            for index, part in enumerate(sender.parts(route.target, reply)):
                part_id = SentLog.part(fingerprint, index)
                if refused or part_id in already:
                    continue
                await _lease_check("a send")  # its successor may be answering this very message
                try:
                    accepted = await self._send(sender, route, part)
                except DeadLetter as error:
                    if not delivered[0]:
                        raise  # nothing went out: the message can still be replayed whole
                    refused.append(error)
                    continue
                await sent.mark(part_id)
                if not accepted:
                    missed[0] += 1
                elif not delivered[0]:
                    delivered[0] = True
                    metrics.END_TO_END_SECONDS.labels(message.channel).observe(
                        max(0.0, time.time() - entry.received)
                    )

        turn = Turn(
            business=BusinessContext(
                id=business.id,
                name=business.name,
                locale=business.locale or "en",
                time_zone=business.time_zone or "UTC",
                channel=message.channel,
            ),
            conversation=ConversationView(
                id=conversation.id,
                version=conversation.version,
                state={k: value_to_python(v) for k, v in conversation.state.items()},
                history=tuple(
                    (ROLE_NAMES.get(m.role, "system"), m.content) for m in conversation.history
                ),
            ),
            message=message,
            now=datetime.now(UTC),
            send_early=deliver,
        )
        result = await self._run_engine(turn)
        for reply in result.replies:
            await deliver(reply)
        await _lease_check("saving the turn")  # a successor's save and ours would both be kept
        await self._save(key, conversation.version, message, replies, result)
        if refused:
            log.warning(
                "reply cut short: a part was refused after others were delivered; turn saved",
                reason=refused[0].reason,
                error=str(refused[0])[:300],
                user=mask_phone(message.user_id),
            )
            return "partly_sent"
        if missed[0]:
            return "partly_sent" if delivered[0] else "outside_window"
        return "answered"

    async def _run_engine(self, turn: Turn) -> TurnResult:
        deadline = asyncio.timeout(self.settings.engine_timeout_seconds)  # no task, as wait_for
        # The engine's calls see it too (time_left): one started late ends within it.
        token = message_deadline.set(time.monotonic() + self.settings.engine_timeout_seconds)
        try:
            async with deadline:
                return await self.engine.handle(turn)
        except TimeoutError:
            if deadline.expired():  # the engine's own deadline, not a send's inside send_early
                raise EngineTimeout(
                    f"no answer within {self.settings.engine_timeout_seconds:g} s"
                ) from None
            raise
        finally:
            message_deadline.reset(token)

    async def _save(
        self,
        key: session_pb2.ConversationKey,
        version: int,
        message: InboundMessage,
        replies: list[Reply],
        result: TurnResult,
    ) -> None:
        """One update: the user's message, the replies, the state changes. A concurrent writer
        (admin, another replica) makes it ABORTED with the current version; our changes are a
        patch, so we apply them again on top of it instead of losing either write.

        The writer that came first may be this very update: the session service made it but
        its answer was lost (the connection cut, the service restarted), and the channel sent
        the call again (its retry on UNAVAILABLE), or an earlier attempt's update landed late.
        So on a conflict we read the conversation: our message in its history means the turn
        is saved, and applying it again would save it twice."""
        request = session_pb2.UpdateConversationRequest(
            key=key,
            append=[
                session_pb2.Message(
                    role=session_pb2.MESSAGE_ROLE_USER,
                    content=(message.text or f"[{message.type}]")[:SESSION_CONTENT_LIMIT],
                    provider_message_id=message.provider_message_id,
                ),
                *(
                    session_pb2.Message(
                        role=session_pb2.MESSAGE_ROLE_ASSISTANT,
                        content=r.text[:SESSION_CONTENT_LIMIT],
                    )
                    for r in replies
                ),
            ],
            remove_state_keys=result.remove_state,
            view=session_pb2.CONVERSATION_VIEW_BASIC,  # nothing is read back
        )
        for name, value in result.set_state.items():
            python_to_value(value, request.set_state[name])
        for _ in range(5):
            request.expected_version = version
            try:
                await self.clients.session.UpdateConversation(request)
                return
            except grpc.aio.AioRpcError as error:
                info = error_info(error) if error.code() == grpc.StatusCode.ABORTED else None
                if info is None or "current_version" not in info.metadata:
                    raise
            try:
                current = (
                    await self._session_call(
                        self.clients.session.GetConversation(
                            session_pb2.GetConversationRequest(key=key)
                        )
                    )
                ).conversation
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                version = 0  # ended meanwhile: the turn starts the next conversation, as before
                continue
            if _holds(current, message):
                return
            version = current.version
        raise RuntimeError("conversation kept changing under us; retrying later")

    async def _business(
        self, message: InboundMessage
    ) -> tuple[business_pb2.Business, business_pb2.ChannelCredentials]:
        found = await self.businesses.lookup(message.channel, message.channel_identity)
        if found is None:
            raise DeadLetter(
                "unknown_business",
                f"no active business owns {message.channel} identity "
                f"{mask_phone(message.channel_identity)}",
            )
        business = found.business
        # The business service answers only servable businesses; checked here too so that no
        # answer (cached or not) that says otherwise can ever lead to a reply.
        if not business.active or not business.whatsapp_enabled:
            raise DeadLetter("inactive_business", f"business {business.id} is not active")
        return business, found.credentials

    async def _session_call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise DeadLetter("invalid_message", f"session: {error.details()}") from None
            raise

    async def _send(self, sender: Sender, route: Route, part: Any) -> bool:
        """One provider message (a part of a reply): True once the provider has accepted it,
        False when it is done with but the user will not get it (outside the 24-hour window)."""
        target = route.target
        try:
            async with asyncio.timeout(self.settings.send_timeout_seconds):
                await sender.post(target, part)
        except SendError as error:
            metrics.SENDS.labels(sender.name, error.outcome).inc()
            read_at: Timestamp | None = None
            if error.outcome in REFUSED_CREDENTIALS:
                # Refused credentials may be ones an operator has replaced since this worker
                # loaded the business (a rotation): the refusal says nothing of the new ones.
                current, read_at = await self._replaced_credentials(target, error.outcome)
                if current is not None:
                    route.target = current  # for the parts after this one too
                    return await self._send(sender, route, part)
            if isinstance(error, TokenExpired):
                if not await self._token_needs_renewal(target.business_id, read_at):
                    # The business changed after it was read, perhaps a new token: look again.
                    current, _ = await self._replaced_credentials(target, error.outcome)
                    if current is not None:
                        route.target = current
                        return await self._send(sender, route, part)
                raise DeadLetter("token_expired", str(error)) from None
            if error.outcome == "credentials_refused":
                # As for an expired Cloud API token: whose pair to store again, by its business.
                log.warning(
                    "Twilio refused the business's credentials",
                    business_id=target.business_id,
                    error=str(error)[:300],
                )
            if error.outcome == "outside_window":
                return False  # logged by the sender; nothing to do until the user writes again
            if not error.retryable:
                raise DeadLetter(f"send_{error.outcome}", str(error)) from None
            raise
        except TimeoutError:
            metrics.SENDS.labels(sender.name, "timeout").inc()
            raise
        metrics.SENDS.labels(sender.name, "accepted").inc()
        return True

    async def _mark_read(self, sender: Sender, target: Target, message: InboundMessage) -> None:
        try:
            async with asyncio.timeout(5):
                await sender.mark_read(target, message.provider_message_id)
        except Exception as error:
            log.info("read receipt not sent", error=str(error)[:200])

    async def _replaced_credentials(
        self, target: Target, refusal: str
    ) -> tuple[Target | None, Timestamp | None]:
        """``target`` with the business's credentials as stored now, if they are not the ones
        it was sent with; None if they are the same (or cannot be read: as if the same). With
        the business's update_time as read (None when it could not be read)."""
        # Our cached credentials hold the refused ones: the next message must ask again.
        self.businesses.forget(target.business_id, refusal)
        try:
            found = await self.clients.business.GetBusiness(  # the store, not a replica's cache
                business_pb2.GetBusinessRequest(id=target.business_id, include_credentials=True)
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not read the business's current credentials",
                business_id=target.business_id,
                code=error.code().name,
            )
            return None, None
        stored = found.credentials
        read_at = found.business.update_time
        current = dataclasses.replace(
            target,
            access_token=stored.whatsapp_access_token,
            twilio_account_sid=stored.twilio_account_sid,
            twilio_auth_token=stored.twilio_auth_token,
        )
        if current == target:
            return None, read_at
        log.info(
            "refused credentials were replaced meanwhile; sending with the new ones",
            business_id=target.business_id,
        )
        return current, read_at

    async def _token_needs_renewal(self, business_id: str, read_at: Timestamp | None) -> bool:
        """Mark the token as needing renewal, only if the business is still as read at
        ``read_at``: an operator may have stored a new token since, which must not be flagged.
        False when the business changed meanwhile (nothing marked), else True."""
        request = business_pb2.UpdateBusinessRequest(
            business=business_pb2.Business(
                id=business_id, access_token_status=business_pb2.TOKEN_STATUS_NEEDS_RENEWAL
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["access_token_status"]),
            # The channel's retry of a mark whose answer was lost carries it: answered as the
            # first was, not ABORTED by the version that first mark made.
            request_id=str(uuid.uuid4()),
        )
        if read_at is not None:
            request.expected_update_time.CopyFrom(read_at)
        try:
            await self.clients.business.UpdateBusiness(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ABORTED:
                log.info(
                    "business changed since read; its token not marked", business_id=business_id
                )
                return False
            log.error(
                "could not mark the token for renewal",
                business_id=business_id,
                code=error.code().name,
            )
            return True
        log.warning("Cloud API token expired; business marked", business_id=business_id)
        return True


class SentLog:
    """Which provider messages of an entry were already accepted, so that an attempt after a
    failure or a crash between sending and saving does not send them again.

    A reply is known by a fingerprint of its content and how many identical replies came before
    it in the same turn; each of its parts (a long reply is several provider messages) by that
    fingerprint and the part's index. Recording is best effort: when the gateway's Redis is down
    the message is out anyway, and the turn is still saved in the session (a different store),
    whose history then tells the next attempt that the message was answered."""

    MARK = "redis.call('SADD', KEYS[1], ARGV[1]) return redis.call('EXPIRE', KEYS[1], ARGV[2])"
    # Recorded when the user is over their limit: no reply's fingerprint (those are hex digests).
    RATE_LIMITED = "rate-limited"

    def __init__(self, pipeline: AutoPipeline, mark: AsyncScript, entry: Entry, ttl: int) -> None:
        self._key = self.key(entry)
        self._pipeline = pipeline
        self._mark = mark
        self._ttl = ttl

    @staticmethod
    def key(entry: Entry) -> str:
        return sent_log_key(entry.message.channel, entry.message.provider_message_id)

    @staticmethod
    def fingerprint(reply: Reply, earlier: list[Reply]) -> str:
        content = orjson.dumps(
            [
                reply.text,
                [(b.id, b.title) for b in reply.buttons],
                reply.list_button,
                [(r.id, r.title, r.description) for r in reply.rows],
            ]
        )
        repeat = sum(1 for r in earlier if r == reply)
        return f"{hashlib.sha256(content).hexdigest()[:32]}:{repeat}"

    @staticmethod
    def part(fingerprint: str, index: int) -> str:
        """The first part keeps the reply's fingerprint: what a worker of an earlier version
        recorded for a reply it had sent, which is one part in all but long replies."""
        return fingerprint if index == 0 else f"{fingerprint}/{index}"

    async def fingerprints(self) -> set[str]:
        return {
            m.decode() if isinstance(m, bytes) else m
            for m in await self._pipeline.client.smembers(self._key)
        }

    async def mark(self, fingerprint: str) -> None:
        """Record an accepted part. A Redis that does not answer leaves it unrecorded (the
        session's history tells the next attempt). One that answers but refuses writes (out of
        memory, MISCONF, READONLY from a master a failover demoted…) refuses the turn's save too
        when it is also the session's: then the record is tried again, while the partition is
        ours, until Redis (or the new master) takes it."""
        delay, said = 0.05, False
        while True:
            try:
                await self._pipeline.script(self._mark, [self._key], [fingerprint, self._ttl])
                return
            except RedisError as error:
                refused = refusal(error, "the gateway's Redis") is not None
                if not said:
                    said = True
                    log.warning(
                        "could not record a sent reply", error=str(error)[:200], retrying=refused
                    )
                if not refused or not await lease_held_var.get()():
                    return
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)


class WorkerPool:
    """The queue consumer of one process: leases, one loop per held partition, retries."""

    def __init__(self, settings: GatewaySettings, queue: Queue, processor: Processor) -> None:
        self.settings = settings
        self.queue = queue
        self.processor = processor
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = int(settings.visibility_timeout_seconds * 1000)
        self._held: dict[int, tuple[asyncio.Task[None], str]] = {}  # partition → loop, lease
        self._release: set[int] = set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # A process holds its share of partitions, but runs at most this many attempts at once
        # (FIFO-fair, so no held partition starves; not held while a message waits to retry).
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        # The heartbeat and the scheduler retry every 0.2-1 s: one warning per Redis outage.
        self.redis_trouble = OutageLog(log, "worker reaches Redis again")

    @property
    def held_partitions(self) -> list[int]:
        return sorted(self._held)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self._schedule(), name="worker-scheduler"),
        ]
        log.info("worker started", worker=self.worker_id, partitions=self.queue.partitions)

    async def stop(self) -> None:
        """Stop taking work, finish the messages in flight within ``SHUTDOWN_GRACE_SECONDS``,
        hand the partitions back. Entries not started stay pending for the partitions' next
        holders; so does a message still running when the grace is over (cancelled: counted as
        an attempt, as a crash is), so that the process exits before it is killed."""
        self._stopping.set()
        await cancel_and_wait(*self._tasks)
        if self._held:
            _, running = await asyncio.wait(
                [loop for loop, _ in self._held.values()],
                timeout=self.settings.shutdown_grace_seconds,
            )
            if running:
                log.warning("shutdown grace over: messages in flight left to other workers")
                await cancel_and_wait(*running)
            # A loop cancelled again during its own release (cancel_and_wait) left its lease.
            for partition, (_, token) in list(self._held.items()):
                with contextlib.suppress(RedisError):
                    await self.queue.release(partition, token)
        with contextlib.suppress(RedisError):
            await self.queue.redis.zrem(WORKERS, self.worker_id)
        log.info("worker stopped", worker=self.worker_id)

    async def _heartbeat(self) -> None:
        interval = min(1.0, self.settings.visibility_timeout_seconds / 3)
        while True:
            try:
                now = time.time()
                async with self.queue.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(
                        WORKERS, {self.worker_id: now + self.settings.visibility_timeout_seconds}
                    )
                    pipe.zremrangebyscore(WORKERS, "-inf", now)
                    await pipe.execute()
            except RedisError as error:
                self.redis_trouble.failed("worker heartbeat failed", error)
            else:
                self.redis_trouble.worked()
            await asyncio.sleep(interval)

    async def _schedule(self) -> None:
        """Keep our fair share of partitions: take free ones, give back extra ones."""
        groups_ready = False
        while not self._stopping.is_set():
            try:
                if not groups_ready:
                    await self.queue.ensure_groups()
                    groups_ready = True
                live = await self.queue.redis.zrangebyscore(WORKERS, time.time(), "+inf")
                share = self._share(live)
                self._rebalance(share)
                if len(self._held) < share:
                    candidates = [p for p in range(self.queue.partitions) if p not in self._held]
                    random.shuffle(candidates)
                    for partition in candidates:
                        if len(self._held) >= share:
                            break
                        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
                        lease = Lease(self.settings.visibility_timeout_seconds, time.monotonic())
                        if await self.queue.acquire(partition, token, self.ttl_ms):
                            self._held[partition] = (
                                asyncio.create_task(
                                    self._consume(partition, token, lease),
                                    name=f"partition-{partition}",
                                ),
                                token,
                            )
            except RedisError as error:
                groups_ready = False
                self.redis_trouble.failed("worker scheduling failed", error)
            else:
                self.redis_trouble.worked()
            await asyncio.sleep(0.2 if len(self._held) == 0 else 1.0)

    def _share(self, live: list[Any]) -> int:
        """How many partitions this process holds: one in N of them, and one more for the
        first (partitions mod N) live workers by name, so the shares add up to the partitions.
        ceil(partitions / N) for every worker left some with none once the others had taken
        theirs (three workers on four partitions: two, two and none)."""
        names = {n.decode() if isinstance(n, bytes) else str(n) for n in live}
        ranked = sorted(names | {self.worker_id})  # before its first heartbeat too
        share, extra = divmod(self.queue.partitions, len(ranked))
        return share + (1 if ranked.index(self.worker_id) < extra else 0)

    def _rebalance(self, share: int) -> None:
        extra = len(self._held) - len(self._release & set(self._held)) - share
        for partition in sorted(self._held, reverse=True):
            if extra <= 0:
                break
            if partition not in self._release:
                self._release.add(partition)
                extra -= 1

    async def _consume(self, partition: int, token: str, lease: Lease) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(partition, token, lost, lease))
        try:
            await self.queue.take_over(partition, self.worker_id)
            # Pending entries (taken over) first, after the last one read; once drained, only
            # new ones. Every entry read is finished, or waits for its retry in ``waiting``, or
            # the loop ends (and it stays pending for the next holder) before the next read.
            pending_after: str | None = "0"
            waiting = Waiting()

            def holding() -> bool:
                return lease.held() and not (
                    self._stopping.is_set() or lost.is_set() or partition in self._release
                )

            retried = False
            while holding():
                # A due retry, then new messages (without waiting, if more retries are due),
                # in turn: retries of many users cannot keep a new message waiting either.
                due = None if retried else waiting.next_due()
                retried = due is not None
                if due is not None:
                    await self._step(due, token, lease, waiting)
                    continue
                if waiting.full():
                    await self._pause(waiting.seconds_to_next())
                    continue
                entries: list[Entry] = []
                if pending_after is not None:
                    entries, pending_after = await self.queue.read_pending(
                        partition, self.worker_id, after=pending_after, count=10
                    )
                if not entries and pending_after is None:
                    new = await self.queue.read_new(
                        partition,
                        self.worker_id,
                        token,
                        block_ms=waiting.block_ms(500),
                        count=10,
                    )
                    if new is None:  # the lease lapsed (this process stalled past it)
                        lost.set()
                        break
                    entries = new
                for entry in entries:
                    if not holding():
                        break  # the rest stay pending: the next holder takes them over, in order
                    if waiting.holds_user_of(entry):
                        waiting.behind(entry)  # an earlier message of this user waits: so does it
                    else:
                        await self._step(entry, token, lease, waiting)
        except RedisError as error:
            log.warning("partition loop stopped", partition=partition, error=str(error)[:200])
        except Exception:
            log.exception("partition loop failed", partition=partition)
        finally:
            await cancel_and_wait(renewer)
            with contextlib.suppress(RedisError):
                await self.queue.release(partition, token)
            self._held.pop(partition, None)
            self._release.discard(partition)

    async def _step(self, entry: Entry, token: str, lease: Lease, waiting: Waiting) -> None:
        """One attempt at ``entry``; then it is finished, or waits for its retry without
        holding up the partition's other users (their messages go on meanwhile)."""
        delay = await self._handle(entry, token, lease)
        if delay is None:
            waiting.finished(entry)
        else:
            waiting.retry(entry, delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(seconds, 0.5))):
                await self._stopping.wait()

    async def _renew(self, partition: int, token: str, lost: asyncio.Event, lease: Lease) -> None:
        interval = self.settings.visibility_timeout_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                sent = time.monotonic()
                if await self.queue.renew(partition, token, self.ttl_ms):
                    lease.renewed(sent)
                    continue
                lost.set()
                log.warning("partition lease lost", partition=partition)
                return
            except RedisError:
                if not lease.held():  # renewals failed for a whole lease: it may be another's
                    lost.set()
                    return

    async def _handle(self, entry: Entry, token: str, lease: Lease) -> float | None:
        """One attempt, holding a slot only while it runs (a message waiting out its backoff
        holds none): None once the entry is finished, else how long to wait before the next."""
        request_id = entry.request_id or uuid.uuid4().hex
        request_id_var.set(request_id)
        fields = bind_call_fields(request_id=request_id)

        async def still_ours() -> bool:
            if lease.held():
                return True
            # Past its sure time (this process stalled, or renewals failed): ask Redis. While
            # Redis cannot be reached nobody can take the partition over either, so the answer
            # goes out (a Redis outage must not hold replies back).
            try:
                return await self.queue.holds(entry.partition, token)
            except RedisError:
                return True

        held = lease_held_var.set(still_ours)
        try:
            async with self._slots:
                return await self._attempt(entry, token)
        finally:
            lease_held_var.reset(held)
            reset_call_fields(fields)

    async def _attempt(self, entry: Entry, token: str) -> float | None:
        """One attempt: None once the entry is finished (acknowledged or dead-lettered), else
        how long to wait before the next."""
        message = entry.message
        where = {
            "partition": entry.partition,
            "entry": entry.id,
            "channel": message.channel,
            "user": mask_phone(message.user_id),
        }
        counted = await self.queue.attempt(entry.partition, entry.id)
        if counted is None:
            # Erased (DELETE /admin/users/…) while it waited for this retry, or behind one.
            log.info("message erased before its attempt; not run", **where)
            return None
        attempt, last_error, transient = counted
        if attempt - transient > self.settings.max_attempts:
            await self._dead(entry, token, "max_attempts", last_error or "worker died")
            return None
        if attempt > 1 and not last_error:
            log.warning("taking over an entry whose worker died", attempt=attempt, **where)
        try:
            outcome = await self.processor.process(entry, attempt, last_error == OVER_LIMIT)
        except DeadLetter as error:
            await self._dead(entry, token, error.reason, str(error))
            return None
        except OverBusinessLimit as error:
            # Not a failure: the message waits (holding up only its own user) until the window
            # has room, for as long as a dependency's failure may last; it uses up no attempt.
            # One that could not get in by then (a window longer than that) is not kept waiting.
            if last_error != OVER_LIMIT:
                metrics.RATE_LIMITED.labels("business").inc()  # once per message held back
            waited = await self.queue.record_error(
                entry.partition, entry.id, OVER_LIMIT, transient=True
            )
            if waited + error.seconds > self.settings.retry_window_seconds:
                text = f"{OVER_LIMIT} (waited {waited:.0f} s)"
                await self._dead(entry, token, "business_rate_limited", text)
                return None
            # Never before the window has room; past that, backed off as retries are, so that
            # many messages waiting on one window do not all ask again at every free slot.
            wait = max(error.seconds, self._backoff(attempt)) * random.uniform(1.0, 1.2)
            log.info(
                "message waits for its business's rate limit", retry_in_s=round(wait, 2), **where
            )
            return wait
        except LeaseLapsed as error:
            # Stays pending: the partition's next holder has it (this loop ends now).
            log.warning("message left to the partition's next holder", error=str(error), **where)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as error:
            text = _describe(error)
            metrics.RETRIES.inc()
            if _transient(error):
                failing_for = await self.queue.record_error(
                    entry.partition, entry.id, text, transient=True
                )
                if failing_for >= self.settings.retry_window_seconds:
                    await self._dead(entry, token, "retry_window", text)
                    return None
            elif attempt - transient >= self.settings.max_attempts:
                await self._dead(entry, token, "max_attempts", text)
                return None
            else:
                await self.queue.record_error(entry.partition, entry.id, text)
            delay = self._backoff(attempt) * random.uniform(0.8, 1.2)
            log.warning(
                "message failed; will retry",
                attempt=attempt,
                error=text,
                retry_in_s=round(delay, 2),
                **where,
            )
            return delay
        metrics.PROCESSED.labels(outcome).inc()
        # Answered: no attempt or replay of it can follow (a redelivery meets its dedupe
        # marker), so its sent log goes; a dead letter's stays for its replay.
        if not await self.queue.ack(entry.partition, entry.id, token, forget=SentLog.key(entry)):
            log.warning("lease lost before acknowledging", **where)
        log.info("message handled", outcome=outcome, attempt=attempt, **where)
        return None

    def _backoff(self, attempt: int) -> float:
        # Capped exponent: a message retrying a long outage has many attempts.
        exponent = min(attempt - 1, 60)
        return min(
            self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2.0**exponent
        )

    async def _dead(self, entry: Entry, token: str, reason: str, error: str) -> None:
        if not await lease_held_var.get()():
            # A successor has the entry (this process stalled past its lease) and answers or
            # dead-letters it itself: a record from here could be replayed into a second answer.
            log.warning(
                "message left to the partition's next holder",
                error="the partition's lease lapsed before dead-lettering",
                entry=entry.id,
            )
            return
        if not await self.queue.queued(entry.partition, entry.id):
            # Its user was erased (DELETE /admin/users/…) during this attempt: a record now
            # would bring their words back.
            log.info("message erased during its attempt; not dead-lettered", entry=entry.id)
            return
        await self.queue.dead_letter(reason, error, fields=entry.fields)
        metrics.DEAD_LETTERS.labels(reason).inc()
        metrics.PROCESSED.labels("dead_letter").inc()
        await self.queue.drop(entry.partition, entry.id, token)
        log.warning(
            "message dead-lettered",
            reason=reason,
            error=error[:300],
            entry=entry.id,
            user=mask_phone(entry.message.user_id),
        )


class Waiting:
    """The messages of one partition that wait for a retry, and the later messages of the same
    users, which wait behind them. A retry holds up only its own user (one channel identity and
    user: what the partition is chosen by): one business whose sends fail for a while (Meta
    throttling its number, its own 5xx) must not hold up the other businesses' users who share
    its partitions. Each user's messages still run one at a time, in arrival order; all of them
    stay pending in the stream, so a worker taking the partition over finds them in that order."""

    LIMIT = 100  # messages waiting per partition; past it, no new ones are read until one ends

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str, str], list[Entry]] = {}  # user → their messages
        self._due: dict[tuple[str, str, str], float] = {}  # user → when their first may retry

    @staticmethod
    def _user(entry: Entry) -> tuple[str, str, str]:
        m = entry.message
        return m.channel, m.channel_identity, m.user_id

    def holds_user_of(self, entry: Entry) -> bool:
        return self._user(entry) in self._lines

    def behind(self, entry: Entry) -> None:
        self._lines[self._user(entry)].append(entry)

    def retry(self, entry: Entry, delay: float) -> None:
        # The entry is its user's first: a later one never runs while an earlier one waits.
        user = self._user(entry)
        self._lines.setdefault(user, [entry])
        self._due[user] = time.monotonic() + delay

    def finished(self, entry: Entry) -> None:
        user = self._user(entry)
        line = self._lines.get(user)
        if not line or line[0] is not entry:
            return
        line.pop(0)
        if line:
            self._due[user] = time.monotonic()  # the user's next message goes on at once
        else:
            del self._lines[user]
            self._due.pop(user, None)

    def next_due(self) -> Entry | None:
        """The first message whose retry is due, if any (the longest overdue first)."""
        if not self._due:
            return None
        user = min(self._due, key=self._due.__getitem__)
        if self._due[user] > time.monotonic():
            return None
        del self._due[user]  # running now: retry() or finished() says what comes next
        return self._lines[user][0]

    def seconds_to_next(self) -> float:
        return min(self._due.values(), default=time.monotonic() + 1) - time.monotonic()

    def block_ms(self, most: int) -> int:
        """How long a read may wait for new messages: not past the next retry (at least 1 ms;
        Redis reads 0 as for ever)."""
        if not self._due:
            return most
        return max(1, min(most, math.ceil(self.seconds_to_next() * 1000)))

    def full(self) -> bool:
        return sum(len(line) for line in self._lines.values()) >= self.LIMIT


def _holds(conversation: session_pb2.Conversation, message: InboundMessage) -> bool:
    """Whether ``message``'s turn is saved in ``conversation`` (by this attempt or another)."""
    return any(m.provider_message_id == message.provider_message_id for m in conversation.history)


def _transient(error: Exception) -> bool:
    """A dependency's failure rather than this message's: retried for ``RETRY_WINDOW_SECONDS``
    instead of using up ``MAX_ATTEMPTS``. (A bare TimeoutError is a send's deadline; the
    engine's is EngineTimeout.)"""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in TRANSIENT_CODES
    if isinstance(error, SendError):
        return error.retryable  # 5xx, 429 after the sender's own retries, unreachable
    return isinstance(error, (RedisError, TimeoutError))


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"gRPC {error.code().name}: {error.details()}"[:500]
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"[:500]
