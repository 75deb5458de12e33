"""The embedded store: one SQLite file (``BUSINESS_DB_PATH``) through aiosqlite.

aiosqlite runs every statement on a thread of its own, so the event loop never waits on disk.
Two connections: writes go through one, serialized by an asyncio lock and wrapped in
``BEGIN IMMEDIATE`` (which also serializes against the CLI in another process), each transaction
run to its end whether or not its caller still waits; reads use the other, which under WAL sees
only committed data and never waits for a writer.

Identities live in their own table whose primary key ``(kind, value)`` is both the lookup index
and the uniqueness rule; the business row keeps the lists too, so a lookup is one indexed join.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from services.business.model import SECRET_FIELDS, BusinessRecord, TokenStatus
from services.business.store import (
    BusinessStore,
    RememberedRequest,
    UpdateTimeConflict,
    next_update_time,
)
from services.common.business_keys import KeyKind
from services.common.errors import AlreadyExists
from services.common.tasks import run_shielded

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS businesses (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    subdomain TEXT NOT NULL,
    whatsapp_phone_number_ids TEXT NOT NULL DEFAULT '[]',
    whatsapp_numbers TEXT NOT NULL DEFAULT '[]',
    whatsapp_enabled INTEGER NOT NULL,
    is_active INTEGER NOT NULL,
    time_zone TEXT NOT NULL,
    locale TEXT NOT NULL,
    access_token_status TEXT NOT NULL DEFAULT '',
    whatsapp_access_token TEXT,
    twilio_account_sid TEXT,
    twilio_auth_token TEXT,
    webhook_app_secret TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS subdomain_unique ON businesses (subdomain);
CREATE INDEX IF NOT EXISTS subdomain_lookup_idx ON businesses (subdomain, is_active);
CREATE INDEX IF NOT EXISTS servable_idx ON businesses (is_active, whatsapp_enabled, id);
CREATE TABLE IF NOT EXISTS business_identities (
    kind TEXT NOT NULL CHECK (kind IN ('pnid', 'num')),
    value TEXT NOT NULL,
    business_id TEXT NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_business_idx ON business_identities (business_id);
CREATE TABLE IF NOT EXISTS business_requests (
    request_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    claim TEXT NOT NULL,
    answer BLOB,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_expiry_idx ON business_requests (expires_ms);
"""

_COLUMNS = (
    "id, name, subdomain, whatsapp_phone_number_ids, whatsapp_numbers, whatsapp_enabled, "
    "is_active, time_zone, locale, access_token_status, whatsapp_access_token, "
    "twilio_account_sid, twilio_auth_token, webhook_app_secret, created_at, updated_at"
)
_BY_SUBDOMAIN = f"SELECT {_COLUMNS} FROM businesses WHERE subdomain = ?"
# The identities table's primary key (kind, value) finds the row; one join brings the business.
_BY_IDENTITY = (
    f"SELECT {', '.join('b.' + c.strip() for c in _COLUMNS.split(','))} "
    "FROM business_identities i JOIN businesses b ON b.id = i.business_id "
    "WHERE i.kind = ? AND i.value = ?"
)
_FIELD_COLUMNS = {
    "name": "name",
    "subdomain": "subdomain",
    "phone_number_ids": "whatsapp_phone_number_ids",
    "numbers": "whatsapp_numbers",
    "whatsapp_enabled": "whatsapp_enabled",
    "active": "is_active",
    "time_zone": "time_zone",
    "locale": "locale",
    "access_token_status": "access_token_status",
    "update_time": "updated_at",
}
_FIELD_MESSAGES = {
    "subdomain": "business.subdomain: this subdomain belongs to another business",
    "pnid": "business.whatsapp_phone_number_ids: a phone_number_id belongs to another business",
    "num": "business.whatsapp_numbers: a WhatsApp number belongs to another business",
}


def _encode(field: str, value: Any) -> Any:
    if field in ("phone_number_ids", "numbers"):
        return json.dumps(list(value))
    if field in ("whatsapp_enabled", "active"):
        return int(bool(value))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, TokenStatus):
        return value.value
    return value


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> BusinessRecord:
    secrets = {name: row[10 + i] for i, name in enumerate(SECRET_FIELDS) if row[10 + i] is not None}
    return BusinessRecord(
        id=row[0],
        name=row[1],
        subdomain=row[2],
        phone_number_ids=tuple(json.loads(row[3])),
        numbers=tuple(json.loads(row[4])),
        whatsapp_enabled=bool(row[5]),
        active=bool(row[6]),
        time_zone=row[7],
        locale=row[8],
        access_token_status=TokenStatus(row[9] or ""),
        create_time=datetime.fromisoformat(row[14]),
        update_time=datetime.fromisoformat(row[15]),
        secrets=secrets,
    )


class SqliteStore(BusinessStore):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; writes open their own BEGIN IMMEDIATE.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA foreign_keys = ON")
        return db

    async def open(self) -> None:
        async with self._open_lock:
            if self._writer is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = await self._connect()
            try:
                await writer.execute("PRAGMA journal_mode = WAL")
                await writer.execute("PRAGMA synchronous = NORMAL")
                await writer.executescript(SCHEMA)
                reader = await self._connect()
            except BaseException:
                await writer.close()
                raise
            self._writer, self._reader = writer, reader

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._writer = self._reader = None

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise ConnectionError("the SQLite store is not open")
        return self._reader

    async def ping(self) -> None:
        try:
            await self.open()
            async with self._read().execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except (sqlite3.Error, OSError) as error:
            raise ConnectionError(f"SQLite store {self.path} unavailable: {error}") from None

    async def _claims(
        self, db: aiosqlite.Connection, record_id: str, fields: dict[str, Any]
    ) -> None:
        """Raise AlreadyExists naming the field when another business holds an identity."""
        if "subdomain" in fields:
            async with db.execute(
                "SELECT 1 FROM businesses WHERE subdomain = ? AND id != ?",
                (fields["subdomain"], record_id),
            ) as cursor:
                if await cursor.fetchone():
                    raise AlreadyExists(_FIELD_MESSAGES["subdomain"])
        for kind, field in (
            (KeyKind.PHONE_NUMBER_ID, "phone_number_ids"),
            (KeyKind.WHATSAPP_NUMBER, "numbers"),
        ):
            values = list(fields.get(field, ()))
            if not values:
                continue
            marks = ",".join("?" * len(values))
            async with db.execute(
                f"SELECT 1 FROM business_identities WHERE kind = ? AND value IN ({marks}) "
                "AND business_id != ? LIMIT 1",
                (kind.value, *values, record_id),
            ) as cursor:
                if await cursor.fetchone():
                    raise AlreadyExists(_FIELD_MESSAGES[kind.value])

    async def _set_identities(
        self, db: aiosqlite.Connection, record_id: str, kind: KeyKind, values: tuple[str, ...]
    ) -> None:
        await db.execute(
            "DELETE FROM business_identities WHERE business_id = ? AND kind = ?",
            (record_id, kind.value),
        )
        await db.executemany(
            "INSERT INTO business_identities (kind, value, business_id) VALUES (?, ?, ?)",
            [(kind.value, v, record_id) for v in values],
        )

    async def _write(self) -> aiosqlite.Connection:
        await self.open()
        assert self._writer is not None
        return self._writer

    async def _transaction(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """``body`` in one ``BEGIN IMMEDIATE`` transaction on the writer: committed if it returns,
        rolled back if it raises.

        The transaction is shielded from the caller's cancellation (its RPC deadline). aiosqlite
        runs a statement on its thread whether or not anyone still awaits it, so a caller
        cancelled while BEGIN waits for another process's lock would leave the writer inside a
        transaction nothing ends: every later write would fail, and the file stay locked for the
        CLI, until a restart. Rolling back on cancellation instead would still have to wait for
        that BEGIN (a queued statement cannot be withdrawn), so the transaction simply runs to
        its end and the caller only stops waiting.
        """
        db = await self._write()

        async def run() -> T:
            async with self._write_lock:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body(db)
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
                return result

        return await run_shielded(run())

    def may_have_applied(self, error: BaseException) -> bool:
        return False  # a write that failed was rolled back (_transaction), or never began

    async def create(self, record: BusinessRecord) -> BusinessRecord:
        async def insert(db: aiosqlite.Connection) -> None:
            fields = {
                "subdomain": record.subdomain,
                "phone_number_ids": record.phone_number_ids,
                "numbers": record.numbers,
            }
            await self._claims(db, record.id, fields)
            values = (
                record.id,
                record.name,
                record.subdomain,
                _encode("phone_number_ids", record.phone_number_ids),
                _encode("numbers", record.numbers),
                int(record.whatsapp_enabled),
                int(record.active),
                record.time_zone,
                record.locale,
                record.access_token_status.value,
                *(record.secrets.get(name) for name in SECRET_FIELDS),
                record.create_time.isoformat(),
                record.update_time.isoformat(),
            )
            try:
                await db.execute(
                    f"INSERT INTO businesses ({_COLUMNS}) VALUES ({','.join('?' * 16)})", values
                )
            except sqlite3.IntegrityError:  # the id (another identity is a _claims error)
                raise AlreadyExists("business.id: a business with this id exists") from None
            await self._set_identities(
                db, record.id, KeyKind.PHONE_NUMBER_ID, record.phone_number_ids
            )
            await self._set_identities(db, record.id, KeyKind.WHATSAPP_NUMBER, record.numbers)

        await self._transaction(insert)
        return record

    async def get(self, business_id: str) -> BusinessRecord | None:
        await self.open()
        async with self._read().execute(
            f"SELECT {_COLUMNS} FROM businesses WHERE id = ?", (business_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def find(self, kind: KeyKind, value: str) -> BusinessRecord | None:
        await self.open()
        self._count_query()
        args: tuple[str, ...]
        if kind is KeyKind.SUBDOMAIN:
            sql, args = _BY_SUBDOMAIN, (value,)
        else:
            sql, args = _BY_IDENTITY, (kind.value, value)
        async with self._read().execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def update(
        self,
        business_id: str,
        fields: dict[str, Any],
        secrets: dict[str, str | None] | None = None,
        expected_update_time: datetime | None = None,
    ) -> BusinessRecord | None:
        for name in secrets or {}:
            if name not in SECRET_FIELDS:
                raise ValueError(f"unknown secret field {name}")

        async def change(db: aiosqlite.Connection) -> BusinessRecord | None:
            # Read and write in one write transaction: no other write comes between.
            async with db.execute(
                "SELECT updated_at FROM businesses WHERE id = ?", (business_id,)
            ) as select:
                found = await select.fetchone()
            if found is None:
                return None
            current = datetime.fromisoformat(found[0])
            if expected_update_time is not None and current != expected_update_time:
                raise UpdateTimeConflict(current)
            await self._claims(db, business_id, fields)
            sets: list[str] = []
            args: list[Any] = []
            for field, value in fields.items():
                if field == "update_time":
                    value = next_update_time(value, current)
                sets.append(f"{_FIELD_COLUMNS[field]} = ?")
                args.append(_encode(field, value))
            for name, secret in (secrets or {}).items():
                sets.append(f"{name} = ?")
                args.append(secret)
            cursor = await db.execute(
                f"UPDATE businesses SET {', '.join(sets)} WHERE id = ?", (*args, business_id)
            )
            if cursor.rowcount == 0:
                return None  # no such business: the transaction changed nothing
            if "phone_number_ids" in fields:
                await self._set_identities(
                    db, business_id, KeyKind.PHONE_NUMBER_ID, tuple(fields["phone_number_ids"])
                )
            if "numbers" in fields:
                await self._set_identities(
                    db, business_id, KeyKind.WHATSAPP_NUMBER, tuple(fields["numbers"])
                )
            async with db.execute(
                f"SELECT {_COLUMNS} FROM businesses WHERE id = ?", (business_id,)
            ) as select:
                row = await select.fetchone()
            return _record(row) if row else None

        return await self._transaction(change)

    async def list(
        self, *, after_id: str | None, limit: int, include_inactive: bool, servable_only: bool
    ) -> list[BusinessRecord]:
        await self.open()
        where = ["id > ?"]
        if servable_only:
            where.append("is_active = 1 AND whatsapp_enabled = 1")
        elif not include_inactive:
            where.append("is_active = 1")
        sql = f"SELECT {_COLUMNS} FROM businesses WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        async with self._read().execute(sql, (after_id or "", limit)) as cursor:
            rows = await cursor.fetchall()
        return [_record(row) for row in rows]

    async def replace_secret(self, business_id: str, field: str, old: str, new: str) -> bool:
        if field not in SECRET_FIELDS:
            raise ValueError(f"unknown secret field {field}")
        db = await self._write()
        async with self._write_lock:
            cursor = await db.execute(
                f"UPDATE businesses SET {field} = ? WHERE id = ? AND {field} = ?",
                (new, business_id, old),
            )
            return cursor.rowcount == 1

    async def claim_request(
        self, request_id: str, fingerprint: str, claim: str, now: datetime, until: datetime
    ) -> RememberedRequest | None:
        async def take(db: aiosqlite.Connection) -> RememberedRequest | None:
            # Expired entries go here, through the expiry index: the table stays about one
            # hour of requests long with nothing else to run.
            await db.execute("DELETE FROM business_requests WHERE expires_ms <= ?", (_ms(now),))
            async with db.execute(
                "SELECT fingerprint, answer FROM business_requests WHERE request_id = ?",
                (request_id,),
            ) as select:
                found = await select.fetchone()
            if found is not None:
                return RememberedRequest(found[0], found[1])
            await db.execute(
                "INSERT INTO business_requests (request_id, fingerprint, claim, expires_ms) "
                "VALUES (?, ?, ?, ?)",
                (request_id, fingerprint, claim, _ms(until)),
            )
            return None

        return await self._transaction(take)

    async def finish_request(
        self, request_id: str, claim: str, answer: bytes, until: datetime
    ) -> None:
        async def remember(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE business_requests SET answer = ?, expires_ms = ? "
                "WHERE request_id = ? AND claim = ?",
                (answer, _ms(until), request_id, claim),
            )

        await self._transaction(remember)

    async def release_request(self, request_id: str, claim: str) -> None:
        async def forget(db: aiosqlite.Connection) -> None:
            await db.execute(
                "DELETE FROM business_requests WHERE request_id = ? AND claim = ? "
                "AND answer IS NULL",
                (request_id, claim),
            )

        await self._transaction(forget)

    async def raw_dump(self) -> str:
        await self.open()
        lines: list[str] = []
        for table in ("businesses", "business_identities", "business_requests"):
            async with self._read().execute(f"SELECT * FROM {table}") as cursor:
                lines.extend(repr(tuple(row)) for row in await cursor.fetchall())
        return "\n".join(lines)

    async def index_names(self) -> set[str]:
        names: set[str] = set()
        for table in ("businesses", "business_identities", "business_requests"):
            async with self._read().execute(f"PRAGMA index_list({table})") as cursor:
                names.update(row[1] for row in await cursor.fetchall())
        return names

    async def journal_mode(self) -> str:
        async with self._read().execute("PRAGMA journal_mode") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else ""
