"""parley.session.v1.SessionService: conversations on Redis, with an in-memory fallback."""

from __future__ import annotations

import sys
from typing import Any

import grpc

from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.errors import NotFound
from services.common.interceptors import EncodedReply
from services.common.redis_client import make_client
from services.common.server import Service, run
from services.common.settings import configuring, load_settings
from services.session import convert
from services.session.convert import Violations, raise_if
from services.session.memory_store import MemoryStore
from services.session.model import listing_cursor, listing_token
from services.session.redis_store import RedisStore
from services.session.settings import SessionSettings
from services.session.store import SessionStore

SERVICE_NAME = "parley.session.v1.SessionService"
Context = grpc.aio.ServicerContext[Any, Any]


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    # Get and Update answer an EncodedReply (the same bytes their response message would
    # serialize to, built from entries kept encoded): the runtime sends it as it is.
    async def GetConversation(  # type: ignore[override]
        self, request: session_pb2.GetConversationRequest, context: Context
    ) -> EncodedReply:
        key = convert.required_key(request)
        conversation, created = await self.store.get(key, request.create)
        if conversation is None:
            raise NotFound("no live conversation for this key")
        return convert.conversation_reply(conversation, created)

    async def UpdateConversation(  # type: ignore[override]
        self, request: session_pb2.UpdateConversationRequest, context: Context
    ) -> EncodedReply:
        violations: Violations = []
        key = convert.conversation_key(request, violations)
        append = convert.appended_messages(request.append, violations)
        set_state, remove = convert.state_changes(
            request.set_state, request.remove_state_keys, violations
        )
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            violations.append(("expected_version", "must be 0 or more"))
        raise_if(violations)
        assert key is not None
        conversation, created = await self.store.update(
            key,
            append=append,
            set_state=set_state,
            remove_state=remove,
            expected_version=expected,
        )
        return convert.conversation_reply(
            conversation, created, basic=request.view == session_pb2.CONVERSATION_VIEW_BASIC
        )

    async def TouchConversation(
        self, request: session_pb2.TouchConversationRequest, context: Context
    ) -> session_pb2.TouchConversationResponse:
        key = convert.required_key(request)
        expire = await self.store.touch(key)
        if expire is None:
            raise NotFound("no live conversation for this key")
        return session_pb2.TouchConversationResponse(expire_time=convert.timestamp(expire))

    async def EndConversation(
        self, request: session_pb2.EndConversationRequest, context: Context
    ) -> session_pb2.EndConversationResponse:
        key = convert.required_key(request)
        return session_pb2.EndConversationResponse(ended=await self.store.end(key))

    async def ListConversations(
        self, request: session_pb2.ListConversationsRequest, context: Context
    ) -> session_pb2.ListConversationsResponse:
        violations: Violations = []
        convert.check_id(request.business_id, "business_id", violations)
        role = None
        if request.role != session_pb2.CONVERSATION_ROLE_UNSPECIFIED:
            role = convert.ROLE_NAMES.get(request.role)
            if role is None:
                violations.append(("role", "unknown conversation role"))
        page_size = request.page_size or convert.DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= convert.MAX_PAGE_SIZE:
            violations.append(("page_size", f"must be 0-{convert.MAX_PAGE_SIZE}"))
        try:
            cursor = listing_cursor(request.page_token, request.business_id, role)
        except ValueError as error:
            violations.append(("page_token", str(error)))
        raise_if(violations)
        page = await self.store.list_page(request.business_id, role, page_size, cursor)
        return session_pb2.ListConversationsResponse(
            conversations=[convert.summary_proto(s) for s in page.items],
            next_page_token=listing_token(page.next_token, request.business_id, role),
        )

    async def GetStorageStatus(
        self, request: session_pb2.GetStorageStatusRequest, context: Context
    ) -> session_pb2.GetStorageStatusResponse:
        store = self.store
        response = session_pb2.GetStorageStatusResponse(
            backend=(
                session_pb2.STORAGE_BACKEND_MEMORY
                if store.fallback_active
                else session_pb2.STORAGE_BACKEND_REDIS
            ),
            fallback_active=store.fallback_active,
            pending_writebacks=store.memory.pending,
            writebacks_total=store.writebacks_total,
        )
        if store.outage_since is not None:
            response.fallback_since.FromNanoseconds(int(store.outage_since * 1e9))
        return response


def build_store(settings: SessionSettings) -> SessionStore:
    timeout = settings.session_redis_timeout_seconds
    with configuring(settings.effective_redis_url_variable, url=settings.effective_redis_url):
        client = make_client(
            settings.effective_redis_url,
            connect_timeout=timeout,
            socket_timeout=timeout,
            max_connections=settings.session_redis_max_connections,
        )
    return SessionStore(
        RedisStore(
            client,
            ttl_seconds=settings.redis_ttl_seconds,
            history_limit=settings.session_history_limit,
        ),
        MemoryStore(
            max_conversations=settings.session_fallback_max_conversations,
            ttl_seconds=settings.redis_ttl_seconds,
            history_limit=settings.session_history_limit,
        ),
        fallback=settings.session_fallback,
        probe_seconds=settings.session_fallback_probe_seconds,
        # Half the pool at most: the rest stays free for the calls served meanwhile.
        write_back_concurrency=max(1, min(16, settings.session_redis_max_connections // 2)),
    )


def build(settings: SessionSettings) -> Service:
    store = build_store(settings)

    async def close() -> None:
        await store.close()
        await store.redis.client.aclose()

    return Service(
        name=SERVICE_NAME,
        register=session_pb2_grpc.add_SessionServiceServicer_to_server,
        servicer=SessionServicer(store),
        readiness=store.readiness,
        on_stop=close,
    )


def main() -> int:
    settings = load_settings(SessionSettings)
    return run(
        lambda: build(settings),
        settings,
        port=settings.session_port,
        metrics_port=settings.session_metrics_port,
        log_name="session",
    )


if __name__ == "__main__":
    sys.exit(main())
