"""The MongoDB store through PyMongo's asyncio client (``AsyncMongoClient``; Motor is end-of-life).

The collection is ``businesses`` with the migration guides' field names, so a team's existing
collection works: ``name``, ``subDomain``, ``whatsappPhoneNumberIds``, ``whatsappNumbers``,
``whatsappEnabled``, ``isActive``, ``timeZone``, ``locale``, ``whatsappAccessToken``,
``accessTokenStatus``, ``twilioAccountSid``, ``twilioAuthToken``, ``webhookAppSecret``,
``createdAt``, ``updatedAt``; ``_id`` is an ObjectId.

At start-up it creates (idempotently) the guides' two lookup indexes and unique indexes for the
rules the issue sets: one subdomain, ``phone_number_id`` or number per business. The identity
indexes are partial on a non-empty array, because MongoDB indexes an empty array as one key and
would otherwise allow only one business without numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import structlog
from bson import Binary, ObjectId
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConfigurationError,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.uri_parser import parse_uri

from services.business.model import SECRET_FIELDS, BusinessRecord, TokenStatus
from services.business.store import (
    UPDATE_TIME_STEP,
    BusinessStore,
    RememberedRequest,
    UpdateTimeConflict,
)
from services.common.business_keys import KeyKind
from services.common.errors import AlreadyExists
from services.common.server import READINESS_TIMEOUT_SECONDS

log = structlog.get_logger("parley.business.mongo")

COLLECTION = "businesses"
# Request ids (AIP-155) and their answers, for an hour; MongoDB's TTL monitor deletes expired
# ones (about once a minute; a claim takes over an expired entry before that).
REQUESTS_COLLECTION = "business_requests"
REQUESTS_TTL_INDEX = "request_expiry_ttl"
DEFAULT_DATABASE = "parley"

# record attribute -> MongoDB field
FIELDS = {
    "name": "name",
    "subdomain": "subDomain",
    "phone_number_ids": "whatsappPhoneNumberIds",
    "numbers": "whatsappNumbers",
    "whatsapp_enabled": "whatsappEnabled",
    "active": "isActive",
    "time_zone": "timeZone",
    "locale": "locale",
    "access_token_status": "accessTokenStatus",
    "create_time": "createdAt",
    "update_time": "updatedAt",
}
SECRET_DOC_FIELDS = {
    "whatsapp_access_token": "whatsappAccessToken",
    "twilio_account_sid": "twilioAccountSid",
    "twilio_auth_token": "twilioAuthToken",
    "webhook_app_secret": "webhookAppSecret",
}

INDEXES: list[tuple[str, list[tuple[str, int]], dict[str, Any]]] = [
    (
        "webhook_lookup_idx",
        [
            ("whatsappPhoneNumberIds", ASCENDING),
            ("whatsappEnabled", ASCENDING),
            ("isActive", ASCENDING),
        ],
        {},
    ),
    ("subdomain_lookup_idx", [("subDomain", ASCENDING), ("isActive", ASCENDING)], {}),
    ("subdomain_unique", [("subDomain", ASCENDING)], {"unique": True}),
    (
        "phone_number_id_unique",
        [("whatsappPhoneNumberIds", ASCENDING)],
        {
            "unique": True,
            "partialFilterExpression": {"whatsappPhoneNumberIds.0": {"$exists": True}},
        },
    ),
    (
        "whatsapp_number_unique",
        [("whatsappNumbers", ASCENDING)],
        {"unique": True, "partialFilterExpression": {"whatsappNumbers.0": {"$exists": True}}},
    ),
]
# Which field a unique index protects, for the ALREADY_EXISTS message.
_DUPLICATE_MESSAGES = {
    "subDomain": "business.subdomain: this subdomain belongs to another business",
    "whatsappPhoneNumberIds": (
        "business.whatsapp_phone_number_ids: a phone_number_id belongs to another business"
    ),
    "whatsappNumbers": "business.whatsapp_numbers: a WhatsApp number belongs to another business",
}
# Index already there under another name or options (a team's own): keep theirs, say so.
_INDEX_CONFLICT_CODES = {85, 86}
# A readiness check (connect, indexes, ping) gives up well inside the runtime's limit on one
# check: cut off by that limit, it would only say "took over 5 s", never why (no server).
PING_TIMEOUT_SECONDS = READINESS_TIMEOUT_SECONDS * 0.6


def database_name(uri: str, override: str | None) -> str:
    """MONGODB_DATABASE if set, else the URI's database, else ``parley``."""
    if override:
        return override
    return parse_uri(uri).get("database") or DEFAULT_DATABASE


def _duplicate(error: DuplicateKeyError) -> AlreadyExists:
    details = error.details or {}
    pattern = details.get("keyPattern") or {}
    for key in pattern:
        if key in _DUPLICATE_MESSAGES:
            return AlreadyExists(_DUPLICATE_MESSAGES[key])
    message = str(details.get("errmsg", ""))
    for key, text in _DUPLICATE_MESSAGES.items():
        if key in message:
            return AlreadyExists(text)
    return AlreadyExists("an identity of this business belongs to another business")


def _aware(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(0, UTC)


def _identities(value: Any) -> tuple[str, ...]:
    # Hand-kept or older documents may hold one identity as a plain value, which MongoDB's
    # array queries match too: one identity, not one per character.
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),) if value not in (None, "") else ()


def _secret(value: Any) -> str | None:
    """A stored secret as the cipher reads it. Not a string (an older system's object or
    binary): a value that fails to decrypt like any other format it does not know, so that it
    is reported (FAILED_PRECONDITION, rotate-keys), not taken for no secret at all."""
    if value is None or isinstance(value, str):
        return value or None
    return f"unreadable:{type(value).__name__}"


def _record(doc: dict[str, Any]) -> BusinessRecord:
    secrets = {
        name: stored
        for name, mongo_name in SECRET_DOC_FIELDS.items()
        if (stored := _secret(doc.get(mongo_name))) is not None
    }
    status = doc.get("accessTokenStatus") or ""
    return BusinessRecord(
        id=str(doc["_id"]),
        name=str(doc.get("name", "")),
        subdomain=str(doc.get("subDomain", "")),
        phone_number_ids=_identities(doc.get("whatsappPhoneNumberIds")),
        numbers=_identities(doc.get("whatsappNumbers")),
        # A missing flag means "not serving": safer for documents written by older code.
        whatsapp_enabled=bool(doc.get("whatsappEnabled", False)),
        active=bool(doc.get("isActive", False)),
        time_zone=str(doc.get("timeZone") or "UTC"),
        locale=str(doc.get("locale") or "en"),
        access_token_status=(
            TokenStatus(status) if status in TokenStatus._value2member_map_ else TokenStatus.NONE
        ),
        create_time=_aware(doc.get("createdAt")),
        update_time=_aware(doc.get("updatedAt")),
        secrets=secrets,
    )


def _value(field: str, value: Any) -> Any:
    if field in ("phone_number_ids", "numbers"):
        return list(value)
    if isinstance(value, TokenStatus):
        return value.value
    return value


class MongoStore(BusinessStore):
    kind = "mongodb"

    def __init__(
        self,
        uri: str,
        *,
        database: str | None = None,
        max_pool_size: int = 100,
        min_pool_size: int = 10,
        timeout_ms: int = 5000,
    ) -> None:
        super().__init__()
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            maxPoolSize=max_pool_size,
            minPoolSize=min(min_pool_size, max_pool_size),
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            timeoutMS=timeout_ms,
            appname="parley-business",
            tz_aware=True,
            connect=False,  # connect in open(), on the service's own loop
        )
        self.database = database_name(uri, database)
        self.collection: AsyncCollection[dict[str, Any]] = self._client[self.database][COLLECTION]
        self.requests: AsyncCollection[dict[str, Any]] = self._client[self.database][
            REQUESTS_COLLECTION
        ]
        self._indexes_ready = False
        self._ping_timeout = min(timeout_ms / 1000, PING_TIMEOUT_SECONDS)

    def describe(self) -> str:
        hosts = ",".join(
            f"{h}:{p}" for h, p in self._client.topology_description.server_descriptions()
        )
        return f"mongodb:{hosts or 'pending'}/{self.database}.{COLLECTION}"

    async def open(self) -> None:
        if self._indexes_ready:
            return
        await self._client.aconnect()
        for name, keys, options in INDEXES:
            try:
                await self.collection.create_index(keys, name=name, **options)
            except OperationFailure as error:
                if error.code not in _INDEX_CONFLICT_CODES:
                    raise
                log.warning(
                    "index exists with other options; keeping it", index=name, code=error.code
                )
        await self.requests.create_index(
            [("expiresAt", ASCENDING)], name=REQUESTS_TTL_INDEX, expireAfterSeconds=0
        )
        self._indexes_ready = True

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        try:
            with pymongo.timeout(self._ping_timeout):
                await self.open()
                await self._client.admin.command("ping")
        except OperationFailure as error:
            # Typically a unique index that existing documents violate (two businesses claiming
            # one phone_number_id): say which rule, not the values.
            name = (error.details or {}).get("codeName", "")
            raise ConnectionError(
                f"MongoDB refused the business indexes: code {error.code} {name}"
            ) from None
        except PyMongoError as error:
            raise ConnectionError(f"MongoDB unavailable: {type(error).__name__}") from None

    async def index_names(self) -> set[str]:
        return {index["name"] async for index in await self.collection.list_indexes()}

    def _document(self, record: BusinessRecord) -> dict[str, Any]:
        doc: dict[str, Any] = {"_id": ObjectId(record.id)}
        for attr, mongo_name in FIELDS.items():
            doc[mongo_name] = _value(attr, getattr(record, attr))
        for name, mongo_name in SECRET_DOC_FIELDS.items():
            if record.secrets.get(name):
                doc[mongo_name] = record.secrets[name]
        return doc

    def may_have_applied(self, error: BaseException) -> bool:
        # No server to send it to (MongoDB down, no primary): the write never left. Any other
        # failure may come after the server applied it (an answer lost, a write concern).
        return not isinstance(error, ServerSelectionTimeoutError | ConfigurationError)

    async def create(self, record: BusinessRecord) -> BusinessRecord:
        try:
            await self.collection.insert_one(self._document(record))
        except DuplicateKeyError as error:
            raise _duplicate(error) from None
        return record

    async def get(self, business_id: str) -> BusinessRecord | None:
        if not ObjectId.is_valid(business_id):
            return None
        doc = await self.collection.find_one({"_id": ObjectId(business_id)})
        return _record(doc) if doc else None

    async def find(self, kind: KeyKind, value: str) -> BusinessRecord | None:
        self._count_query()
        field = {
            KeyKind.PHONE_NUMBER_ID: "whatsappPhoneNumberIds",
            KeyKind.WHATSAPP_NUMBER: "whatsappNumbers",
            KeyKind.SUBDOMAIN: "subDomain",
        }[kind]
        doc = await self.collection.find_one({field: value})
        return _record(doc) if doc else None

    async def update(
        self,
        business_id: str,
        fields: dict[str, Any],
        secrets: dict[str, str | None] | None = None,
        expected_update_time: datetime | None = None,
    ) -> BusinessRecord | None:
        if not ObjectId.is_valid(business_id):
            return None
        to_set = {FIELDS[attr]: _value(attr, value) for attr, value in fields.items()}
        to_unset: dict[str, str] = {}
        for name, value in (secrets or {}).items():
            if name not in SECRET_FIELDS:
                raise ValueError(f"unknown secret field {name}")
            if value:
                to_set[SECRET_DOC_FIELDS[name]] = value
            else:
                to_unset[SECRET_DOC_FIELDS[name]] = ""
        # An update pipeline, so update_time moves past the stored one in the same atomic step
        # (next_update_time); $literal keeps a value starting with "$" a value, not a path.
        stage: dict[str, Any] = {name: {"$literal": value} for name, value in to_set.items()}
        if "update_time" in fields:
            stage[FIELDS["update_time"]] = {
                "$max": [
                    {"$literal": fields["update_time"]},
                    {  # a hand-kept updatedAt may be missing or a string: nothing to step from
                        "$cond": [
                            {"$eq": [{"$type": "$updatedAt"}, "date"]},
                            {"$add": ["$updatedAt", UPDATE_TIME_STEP // timedelta(milliseconds=1)]},
                            None,
                        ]
                    },
                ]
            }
        change: list[dict[str, Any]] = [{"$set": stage}] if stage else []
        if to_unset:
            change.append({"$unset": list(to_unset)})
        match: dict[str, Any] = {"_id": ObjectId(business_id)}
        if expected_update_time is not None:
            match["updatedAt"] = expected_update_time  # the filter makes the check atomic
        try:
            doc = await self.collection.find_one_and_update(
                match, change, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError as error:
            raise _duplicate(error) from None
        if doc is None and expected_update_time is not None:
            current = await self.collection.find_one({"_id": match["_id"]}, {"updatedAt": 1})
            if current is not None:
                raise UpdateTimeConflict(_aware(current.get("updatedAt")))
        return _record(doc) if doc else None

    async def list(
        self, *, after_id: str | None, limit: int, include_inactive: bool, servable_only: bool
    ) -> list[BusinessRecord]:
        query: dict[str, Any] = {}
        if after_id:
            query["_id"] = {"$gt": ObjectId(after_id)}
        if servable_only:
            query["isActive"] = True
            query["whatsappEnabled"] = True
        elif not include_inactive:
            query["isActive"] = True
        cursor = self.collection.find(query).sort("_id", ASCENDING).limit(limit)
        return [_record(doc) async for doc in cursor]

    async def replace_secret(self, business_id: str, field: str, old: str, new: str) -> bool:
        mongo_name = SECRET_DOC_FIELDS[field]
        result = await self.collection.update_one(
            {"_id": ObjectId(business_id), mongo_name: old}, {"$set": {mongo_name: new}}
        )
        return result.modified_count == 1

    async def claim_request(
        self, request_id: str, fingerprint: str, claim: str, now: datetime, until: datetime
    ) -> RememberedRequest | None:
        entry = {"_id": request_id, "fingerprint": fingerprint, "claim": claim, "answer": None}
        while True:
            try:
                await self.requests.insert_one({**entry, "expiresAt": until})
            except DuplicateKeyError:
                pass  # the unique _id: another call holds it, or held it and expired
            else:
                return None
            found = await self.requests.find_one({"_id": request_id})
            if found is None:
                continue  # deleted meanwhile (released, or expired): try again
            if _aware(found.get("expiresAt")) > now:
                answer = bytes(found["answer"]) if found.get("answer") is not None else None
                return RememberedRequest(str(found["fingerprint"]), answer)
            # Expired, not yet deleted by the TTL monitor: take it over, unless another call
            # did first (the filter on its claim makes that atomic).
            taken = await self.requests.replace_one(
                {"_id": request_id, "claim": found.get("claim")}, {**entry, "expiresAt": until}
            )
            if taken.matched_count == 1:
                return None

    async def finish_request(
        self, request_id: str, claim: str, answer: bytes, until: datetime
    ) -> None:
        await self.requests.update_one(
            {"_id": request_id, "claim": claim},
            {"$set": {"answer": Binary(answer), "expiresAt": until}},
        )

    async def release_request(self, request_id: str, claim: str) -> None:
        await self.requests.delete_one({"_id": request_id, "claim": claim, "answer": None})

    async def raw_dump(self) -> str:
        docs = [repr(doc) async for doc in self.collection.find({})]
        docs += [repr(doc) async for doc in self.requests.find({})]
        return "\n".join(docs)
