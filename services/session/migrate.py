"""Moving conversations into, out of and between Redis deployments.

    python -m services.session.migrate legacy --business-id ID [--dry-run] [--ttl SECONDS]
    python -m services.session.migrate export [--output FILE] [--business-id ID]
    python -m services.session.migrate import [--input FILE] [--dry-run] [--ttl SECONDS]
                                              [--restore-ended]

``--redis-url`` (before the command) overrides ``SESSION_REDIS_URL`` / ``REDIS_URL``. Every
command prints what it did (or, with ``--dry-run``, would do) as counts, shows a progress bar
on a terminal, and can be re-run safely: a second run changes nothing.

``legacy`` imports the guides' old keys ``chat:customer:<user>`` (role client) and
``admin:context:<user>`` (role admin), found with SCAN, into the unified layout under the
business given with ``--business-id`` (old keys carry none). A legacy value is JSON (a string
key) or a hash; its ``history`` may be ``[{"user": …, "agent": …}]`` pairs or
``[{"role": …, "content": …}]``; its ``state`` object (or, without one, every other field) becomes
the state. Each migrated legacy key is kept with a 7-day TTL for rollback, and recorded in a
ledger (``conversation-migration:{<business>}``) so a re-run skips it. A live conversation
for the same user is never overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import orjson
from google.protobuf.message import DecodeError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from parley.session.v1 import session_pb2
from services.common.redact import mask_url
from services.common.redis_client import RedisClient, make_client
from services.common.settings import ConfigurationError, configuring, load_settings, refuse_to_start
from services.common.struct_values import python_to_value
from services.session.convert import MAX_CONTENT, MAX_ID
from services.session.model import (
    LEGACY_PREFIXES,
    ROLES,
    Conversation,
    ConversationKey,
    Role,
    StateTooLarge,
    check_state_bounds,
    decode_message,
    encode_message,
    ledger_key,
    new_conversation_id,
)
from services.session.redis_store import RedisStore
from services.session.settings import MAX_TTL_SECONDS, SessionSettings

LEGACY_KEEP_SECONDS = 7 * 24 * 3600
PROGRESS_MIN_ITEMS = 50  # shorter runs finish before a bar would help
# A reply nests a state value 4 messages deep, and each JSON list in it 2 more, each object 3:
# with fewer brackets than this no value can pass protobuf's 100 levels (see _replies).
SHALLOW_BRACKETS = 32
# Far past the longest line an export writes (~26 MB: 1,000 messages of 4,096 characters, a
# 1 MiB state): a longer one (a binary given by mistake, a file with no line breaks) is skipped
# unread, not held in memory whole.
MAX_LINE_BYTES = 256 * 2**20
# A ledger entry made before its conversation is written: ``pending:<id>``.
PENDING = "pending:"
NEWER = "skipped: Redis holds a conversation updated later"
KEPT = "skipped: Redis has this version or newer"
ENDED = "skipped: ended since (--restore-ended writes it)"


@dataclass
class Report:
    """What a run did (or would do), by outcome."""

    command: str
    dry_run: bool
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: the run stops between two conversations
    failed: bool = False  # an error (Redis gone, a file) stopped the run
    ctrl_c: Callable[[], None] | None = field(default=None, repr=False)  # stop_on_ctrl_c's

    def render(self) -> str:
        how = "dry run, nothing written" if self.dry_run else "done"
        if self.failed:
            how = "stopped by the error below, so only what is counted here"
            how = f"dry run, nothing written; {how}" if self.dry_run else how
        elif self.interrupted:
            how = f"{how}; interrupted, so only what is counted here"
        lines = [f"{self.command} ({how}):"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.counts.items())]
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  … and {len(self.problems) - 50} more problems")
        return "\n".join(lines)


def stop_on_ctrl_c(report: Report) -> None:
    """The first Ctrl-C ends the run between two conversations, never inside one; a second one
    at once. Not by cancelling the task: on Python 3.11 redis-py's writes (``asyncio.wait_for``)
    lose a cancellation that arrives as they finish, so an import went on to its end."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        report.interrupted = True
        loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt
        print("stopping after this conversation (Ctrl-C again: at once)", file=sys.stderr)

    report.ctrl_c = stop
    loop.add_signal_handler(signal.SIGINT, stop)


def read_between(report: Report, lines: Iterable[bytes | None]) -> Iterator[bytes | None]:
    """``lines``, with a Ctrl-C stopping at once (KeyboardInterrupt) while the next one is
    read, between two conversations: a read blocks the event loop, so stop_on_ctrl_c's handler
    could not run, and an import waiting on a terminal or a stalled pipe could not be stopped."""
    loop = asyncio.get_running_loop()
    source = iter(lines)
    while True:
        handler = None if report.interrupted else report.ctrl_c
        if handler is not None:
            loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt
        line = next(source, b"")  # read_lines never yields b"": "" is the end here
        if handler is not None:
            loop.add_signal_handler(signal.SIGINT, handler)
        if line == b"":
            return
        yield line


@contextlib.contextmanager
def progress(total: int | None, label: str, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr for long runs (or of unknown length, None) on a terminal;
    a no-op otherwise."""
    long = total is None or total >= PROGRESS_MIN_ITEMS
    show = enabled and long and sys.stderr.isatty()
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout may carry the export itself
        disable=not show,
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


async def scan(client: RedisClient, pattern: str, count: int = 500) -> AsyncIterator[bytes]:
    """SCAN on every primary (Cluster) or the one server."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        for node in client.get_primaries():
            cursor = 0
            while True:
                reply: Any = await client.scan(
                    cursor, match=pattern, count=count, target_nodes=node
                )
                cursors, keys = reply
                for key in keys:
                    yield key
                cursor = int(cursors[node.name])
                if cursor == 0:
                    break
    else:
        async for key in client.scan_iter(match=pattern, count=count):
            yield key


# -- legacy ------------------------------------------------------------------------------------

LEGACY_ROLES = {
    "user": "user",
    "customer": "user",
    "human": "user",
    "assistant": "assistant",
    "agent": "assistant",
    "bot": "assistant",
    "ai": "assistant",
    "system": "system",
}


# Fields of the old pair shape, in the order they happened.
PAIR_FIELDS = (
    ("user", "user"),
    ("agent", "assistant"),
    ("assistant", "assistant"),
    ("bot", "assistant"),
)


def _time_ms(entry: dict[str, Any], default: int) -> int:
    """An entry's time in seconds or milliseconds; ``default`` for anything else (a corrupt
    value past 64 bits would stop the whole run when the message is encoded)."""
    value = entry.get("timestamp", entry.get("time"))
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e14:
        return default
    return int(value if value > 1e11 else value * 1000)


def legacy_history(raw: object, now: int) -> list[bytes]:
    """Either old shape → stored messages, oldest first; ValueError for anything else."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("history is not a list")
    out: list[bytes] = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise ValueError("a history entry is not an object")
        at = _time_ms(entry, now)
        if "role" in entry or "content" in entry:
            role = LEGACY_ROLES.get(str(entry.get("role", "")).lower())
            content = entry.get("content")
            if role is None:
                raise ValueError(f"unknown history entry role {entry.get('role')!r}")
            if not isinstance(content, str):
                raise ValueError(f"a {entry.get('role')!r} history entry's content is not text")
            out.append(encode_message(role, content[:MAX_CONTENT], at))
            continue
        pair = False
        for name, role in PAIR_FIELDS:
            content = entry.get(name)
            if isinstance(content, str):
                out.append(encode_message(role, content[:MAX_CONTENT], at))
                pair = True
        if not pair:
            raise ValueError("a history entry is neither a user/agent pair nor role/content")
    return out


def parse_legacy(value: object, now: int) -> tuple[list[bytes], dict[str, bytes]]:
    """A legacy value (decoded JSON, or a hash as a dict of str) → (history, state)."""
    if isinstance(value, list):
        return legacy_history(value, now), {}
    if not isinstance(value, dict):
        raise ValueError("neither a JSON object, a JSON list nor a hash")
    history = legacy_history(value.get("history", value.get("messages")), now)
    state_source = value.get("state")
    if not isinstance(state_source, dict):
        state_source = {k: v for k, v in value.items() if k not in ("history", "messages", "state")}
    try:
        state = {str(k): orjson.dumps(v) for k, v in state_source.items()}
    except orjson.JSONEncodeError as error:  # nested past orjson's 254 levels: a TypeError
        raise ValueError(f"state: {error}") from None
    _check_state(state)
    return history, state


def _check_state(state: dict[str, bytes]) -> None:
    """ValueError for a state past the service's bounds, or with a value nested deeper than a
    reply can carry: every get of it would fail (a reply past gRPC's 4 MiB, or one protobuf
    will not read), and no part of a state can be dropped safely for it."""
    try:
        check_state_bounds({}, state)
    except StateTooLarge as error:
        raise ValueError(error.message) from None
    for name, raw in state.items():
        if raw.count(b"[") + raw.count(b"{") >= SHALLOW_BRACKETS and not _replies(name, raw):
            raise ValueError(
                f"state key {name[:40]!r} is nested deeper than a reply can carry "
                "(protobuf reads 100 levels: a JSON list takes 2, an object 3)"
            )


def _replies(name: str, raw: bytes) -> bool:
    """Whether a reply holding this state value can be read: protobuf refuses a message nested
    past 100 levels, so a deeper value made every get and update of its conversation fail
    (INTERNAL) on the caller's side until it expired."""
    reply = session_pb2.GetConversationResponse()
    try:
        python_to_value(orjson.loads(raw), reply.conversation.state[name])
        session_pb2.GetConversationResponse.FromString(reply.SerializeToString())
    except (DecodeError, RecursionError):
        return False
    return True


def _hash_value(fields: dict[Any, Any]) -> dict[str, Any]:
    """A legacy hash: JSON-looking fields decoded, the rest kept as strings."""
    out: dict[str, Any] = {}
    for raw_name, raw_value in fields.items():
        try:
            out[raw_name.decode()] = orjson.loads(raw_value)
        except orjson.JSONDecodeError:
            out[raw_name.decode()] = raw_value.decode(errors="replace")
    return out


# What read_legacy answers for a key gone since the SCAN found it (its TTL ran out, the old
# system deleted it): not an unreadable value.
GONE = object()


async def read_legacy(client: RedisClient, key: bytes) -> object:
    raw_kind = await client.type(key)
    kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
    if kind == "string":
        raw = await client.get(key)
        return orjson.loads(raw) if raw is not None else GONE
    if kind == "hash":
        fields = await client.hgetall(key)
        return _hash_value(fields) if fields else GONE
    if kind == "none":
        return GONE
    raise ValueError(f"a {kind} key, not a string or hash")


async def migrate_legacy(
    client: RedisClient,
    store: RedisStore,
    business_id: str,
    *,
    dry_run: bool,
    ttl_seconds: int,
    history_limit: int,
    report: Report,
    show_progress: bool = True,
) -> Report:
    found: list[tuple[bytes, Role]] = []
    for prefix, role in LEGACY_PREFIXES.items():
        async for key in scan(client, prefix.replace("*", r"\*") + "*"):
            found.append((key, role))
    report.counts["legacy keys found"] = len(found)
    ledger = ledger_key(business_id)
    with progress(len(found), "legacy", show_progress) as advance:
        for raw_key, role in found:
            if report.interrupted:
                break
            advance()
            name = raw_key.decode(errors="replace")
            try:
                user_id = raw_key.decode().split(":", 2)[2]
            except UnicodeDecodeError:  # no message names a user in another encoding
                user_id = ""
            if not user_id or len(user_id) > MAX_ID or not user_id.isprintable():
                report.counts["skipped: unusable user id"] += 1
                report.problems.append(f"{name}: unusable user id")
                continue
            recorded = await client.hget(ledger, name)
            if isinstance(recorded, bytes):
                recorded = recorded.decode()
            if recorded is not None and not recorded.startswith(PENDING):
                report.counts["already migrated (skipped)"] += 1
                continue
            # A run stopped between writing this key's conversation and recording it: its id.
            planned = None if recorded is None else recorded.removeprefix(PENDING)
            target = ConversationKey(business_id, user_id, role)
            live = await store.load(target)
            if live is not None and live.id == planned:
                if dry_run:
                    report.counts["would import"] += 1
                    continue
                await client.hset(ledger, name, live.id)
                report.counts["imported"] += 1
                report.counts["legacy keys kept for 7 days"] += 1
                continue
            if live is not None:
                report.counts["skipped: a live conversation exists"] += 1
                if planned is not None and not dry_run:
                    await client.hdel(ledger, name)
                continue
            now = int(time.time() * 1000)
            try:
                value = await read_legacy(client, raw_key)
                if value is GONE:
                    report.counts["gone before migration"] += 1
                    continue
                history, state = parse_legacy(value, now)
            except (ValueError, orjson.JSONDecodeError) as error:
                report.counts["skipped: unreadable"] += 1
                report.problems.append(f"{name}: {error}")
                continue
            history = history[-history_limit:]
            report.counts["messages" if not dry_run else "messages to import"] += len(history)
            if dry_run:
                report.counts["would import"] += 1
                continue
            # Keep the legacy key for rollback first: a crash after this leaves it importable.
            await client.expire(raw_key, LEGACY_KEEP_SECONDS)
            cid = planned or new_conversation_id()
            conversation = Conversation(
                cid, target, history, state, 1, now, now, now + ttl_seconds * 1000
            )
            # Recorded as pending before the write: an end erases the kept key from now on, and
            # a re-run after a stop between the write and the record below knows the id.
            await client.hset(ledger, name, PENDING + cid)
            await client.expire(ledger, LEGACY_KEEP_SECONDS)
            # As a write-back: a conversation live traffic created meanwhile always wins. 'same':
            # this very copy, written already (its answer lost, the client sent it again).
            outcome, *_ = await store.put(conversation)
            if outcome not in ("written", "same"):
                report.counts["skipped: a live conversation exists"] += 1
                await client.hdel(ledger, name)
                continue
            await client.hset(ledger, name, cid)
            report.counts["imported"] += 1
            report.counts["legacy keys kept for 7 days"] += 1
    return report


# -- export / import ---------------------------------------------------------------------------


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[IO[bytes]]:
    """A file written beside ``path`` and put in its place only once complete: an export that
    fails or is interrupted (a wrong URL, Redis going away, Ctrl-C) leaves an earlier file of
    that name as it was, not truncated or half written."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


async def export(
    store: RedisStore,
    out: IO[bytes],
    business_id: str | None,
    report: Report,
    show_progress: bool = True,
) -> Report:
    keys = [
        k
        for k in await store.scan_conversations()
        if business_id is None or k.business_id == business_id
    ]
    with progress(len(keys), "export", show_progress) as advance:
        for key in keys:
            if report.interrupted:
                break
            advance()
            try:
                conversation = await store.load(key)
                record = None if conversation is None else conversation.to_json()
            except (ValueError, TypeError) as error:  # not as written: a raw edit, a bug
                report.counts["unreadable, not exported"] += 1
                report.problems.append(f"{key.redis_keys()[0]}: {error!r}")
                continue
            if record is None:  # expired or ended since the scan
                report.counts["gone before export"] += 1
                continue
            out.write(orjson.dumps(record) + b"\n")
            report.counts["exported"] += 1
    return report


def _checked(record: object) -> Conversation:
    if not isinstance(record, dict):
        raise ValueError("a line is not a JSON object")
    conversation = Conversation.from_json(record)
    for value in (conversation.key.business_id, conversation.key.user_id):
        if not value or len(value) > MAX_ID or not value.isprintable():
            raise ValueError("business_id and user_id must be 1-128 printable characters")
    if conversation.key.role not in ROLES or conversation.version < 1:
        raise ValueError("role must be client or admin, and version at least 1")
    _check_state(conversation.state)
    return conversation


def _servable(conversation: Conversation, history_limit: int, report: Report) -> None:
    """Hold a conversation to what the service keeps, as legacy does: the newest
    SESSION_HISTORY_LIMIT messages of at most MAX_CONTENT characters. A dump with no limits (an
    old in-memory store's) would otherwise make one every get fails on (past gRPC's 4 MiB
    reply), or one Redis cannot take in one script call (thousands of messages)."""
    history = conversation.history
    if len(history) > history_limit:
        report.counts["older messages left out (SESSION_HISTORY_LIMIT)"] += (
            len(history) - history_limit
        )
        del history[:-history_limit]
    for n, raw in enumerate(history):
        if len(raw) > MAX_CONTENT:  # the JSON is longer than its text: only these can be over
            role, content, time_ms, provider_id = decode_message(raw)
            if len(content) > MAX_CONTENT:
                history[n] = encode_message(role, content[:MAX_CONTENT], time_ms, provider_id)
                report.counts[f"messages cut to {MAX_CONTENT} characters"] += 1


async def _would(
    store: RedisStore,
    conversation: Conversation,
    planned: dict[ConversationKey, tuple[str, int, int]],
    restore_ended: bool,
) -> str:
    """What the import's put would do with this line, as PUT decides, given what the lines
    before it would have written ((id, version, updated) by key): a dry run writes nothing, so
    Redis alone would not know of a conversation that a file holds twice."""
    if not restore_ended and await store.kept_out(conversation):
        return ENDED
    key = conversation.key
    held = planned.get(key)
    if held is None:
        current = await store.load(key)
        if current is not None:
            held = (current.id, current.version, current.updated_ms)
    if held is not None and held[0] != conversation.id:
        if held[2] >= conversation.updated_ms:
            return NEWER
    elif held is not None and held[1] >= conversation.version:
        return KEPT
    planned[key] = (conversation.id, conversation.version, conversation.updated_ms)
    return "would write"


def read_lines(source: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of ``source``, one at a time: an import holds one line, never the whole
    file. None for a line longer than ``limit`` (its line break aside), read past unkept."""
    while line := source.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = source.readline(2**20)
        yield None


def count_lines(source: IO[bytes]) -> int | None:
    """How many lines a file holds (for the progress bar), read once ahead; None for a pipe."""
    if not source.seekable():
        return None
    count, last = 0, b"\n"
    while chunk := source.read(2**20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    source.seek(0)
    return count + (last != b"\n")


async def import_lines(
    store: RedisStore,
    lines: Iterable[bytes | None],
    *,
    dry_run: bool,
    ttl_seconds: int | None,
    history_limit: int,
    report: Report,
    show_progress: bool = True,
    restore_ended: bool = False,
    total: int | None = None,
) -> Report:
    """Each conversation is written unless Redis holds the same or a higher version, or an end
    (an erase) since keeps it out (unless ``restore_ended``). ``lines`` as :func:`read_lines`
    gives them; ``total``, their number if known, for the progress bar."""
    now = int(time.time() * 1000)
    planned: dict[ConversationKey, tuple[str, int, int]] = {}  # a dry run's writes so far
    with progress(total, "import", show_progress) as advance:
        for number, line in enumerate(read_between(report, lines), 1):
            if report.interrupted:
                break
            advance()
            if line is None:
                report.counts["invalid lines"] += 1
                report.problems.append(f"line {number}: over {MAX_LINE_BYTES >> 20} MiB, not read")
                continue
            if not line.strip():
                continue
            try:
                conversation = _checked(orjson.loads(line))
            except (ValueError, orjson.JSONDecodeError) as error:
                report.counts["invalid lines"] += 1
                report.problems.append(f"line {number}: {error}")
                continue
            _servable(conversation, history_limit, report)
            if ttl_seconds is not None:
                conversation.expire_ms = now + ttl_seconds * 1000
            if conversation.expire_ms <= now:
                report.counts["skipped: expired"] += 1
                continue
            if dry_run:
                report.counts[await _would(store, conversation, planned, restore_ended)] += 1
                continue
            outcome, *_ = await store.put(
                conversation, write_back=False, restore_ended=restore_ended
            )
            report.counts[
                {
                    "written": "written",
                    "kept": KEPT,
                    "expired": "skipped: expired",
                    "newer": NEWER,
                    "ended": ENDED,
                }[outcome]
            ] += 1
    return report


# -- command line ------------------------------------------------------------------------------


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


class Parser(argparse.ArgumentParser):
    """argparse, whose errors quote what they refuse ("unrecognized arguments: --redis_url
    redis://:pw@…"): every URL in them with its password masked."""

    def error(self, message: str) -> NoReturn:
        super().error(URL.sub(lambda url: mask_url(url[0]), message))


def parser() -> argparse.ArgumentParser:
    cli = Parser(prog="python -m services.session.migrate", description=__doc__.split("\n\n")[0])
    cli.add_argument("--redis-url", help="default: SESSION_REDIS_URL, else REDIS_URL")
    cli.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    # The same options after the command too (`export --redis-url URL`), where they were
    # "unrecognized arguments", quoted whole with the URL's password. SUPPRESS: a command's
    # parser sets them only when given, so one before the command is kept otherwise.
    after = Parser(add_help=False)
    after.add_argument(
        "--redis-url", default=argparse.SUPPRESS, help="as before the command, which see"
    )
    after.add_argument(
        "--no-progress", action="store_true", default=argparse.SUPPRESS, help="never a bar"
    )
    commands = cli.add_subparsers(dest="command", required=True)
    legacy = commands.add_parser(
        "legacy", help="import chat:customer:* and admin:context:*", parents=[after]
    )
    legacy.add_argument("--business-id", required=True, help="the business the old keys belong to")
    legacy.add_argument("--dry-run", action="store_true", help="write nothing; print counts")
    legacy.add_argument("--ttl", type=int, help="seconds the imported conversations live")
    out = commands.add_parser("export", help="every conversation as JSON Lines", parents=[after])
    out.add_argument("--output", default="-", help="file (default: standard output)")
    out.add_argument("--business-id", help="only this business")
    into = commands.add_parser(
        "import", help="conversations from JSON Lines (higher version wins)", parents=[after]
    )
    into.add_argument("--input", default="-", help="file (default: standard input)")
    into.add_argument("--dry-run", action="store_true", help="write nothing; print counts")
    into.add_argument("--ttl", type=int, help="give each a fresh TTL of this many seconds")
    into.add_argument(
        "--restore-ended",
        action="store_true",
        help="also write conversations ended (erased) since the export",
    )
    return cli


async def run(
    args: argparse.Namespace,
    settings: SessionSettings,
    report: Report,
    output: IO[bytes] | None = None,
    source: IO[bytes] | None = None,
    total: int | None = None,
) -> Report:
    with configuring("--redis-url" if args.redis_url else settings.effective_redis_url_variable):
        client = make_client(args.redis_url or settings.effective_redis_url)
    store = RedisStore(
        client, ttl_seconds=settings.redis_ttl_seconds, history_limit=settings.session_history_limit
    )
    show = not args.no_progress
    stop_on_ctrl_c(report)
    try:
        if args.command == "legacy":
            return await migrate_legacy(
                client,
                store,
                args.business_id,
                dry_run=args.dry_run,
                ttl_seconds=args.ttl or settings.redis_ttl_seconds,
                history_limit=settings.session_history_limit,
                report=report,
                show_progress=show,
            )
        if args.command == "export":
            assert output is not None
            return await export(store, output, args.business_id, report, show)
        assert source is not None
        return await import_lines(
            store,
            read_lines(source),
            total=total,
            dry_run=args.dry_run,
            ttl_seconds=args.ttl,
            history_limit=settings.session_history_limit,
            report=report,
            show_progress=show,
            restore_ended=args.restore_ended,
        )
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    business_id: str = getattr(args, "business_id", None) or ""
    if args.command == "legacy" and not (
        0 < len(business_id) <= MAX_ID and business_id.isprintable()
    ):  # as every RPC checks it: conversations under another id could never be reached
        cli.error("--business-id must be 1-128 printable characters")
    if getattr(args, "ttl", None) is not None and not 0 < args.ttl <= MAX_TTL_SECONDS:
        # As REDIS_TTL_SECONDS: an expiry ages away, and past the year 9999 no reply carries it.
        cli.error(f"--ttl must be 1 to {MAX_TTL_SECONDS} seconds (30 days)")
    settings = load_settings(SessionSettings)
    report = Report(args.command, getattr(args, "dry_run", False))
    output: IO[bytes] | None = None
    source: IO[bytes] | None = None
    total: int | None = None
    try:
        with contextlib.ExitStack() as files:
            if args.command == "export":
                output = (
                    sys.stdout.buffer
                    if args.output == "-"
                    else files.enter_context(replacing(Path(args.output)))
                )
            elif args.command == "import":
                source = (
                    sys.stdin.buffer
                    if args.input == "-"
                    else files.enter_context(Path(args.input).open("rb"))
                )
                total = count_lines(source)  # here, where a Ctrl-C stops it at once
            asyncio.run(run(args, settings, report, output, source, total))
            if report.interrupted:
                raise KeyboardInterrupt  # an export's file is not put in place
    except ConfigurationError as error:
        refuse_to_start(str(error))
    except KeyboardInterrupt:
        report.interrupted = True
    except (OSError, RedisError, RedisClusterException) as error:
        # What the operator can act on (a path, a refused connection, a wrong password), not
        # a traceback; redis-py's messages name the host, never the URL's password.
        report.failed = True
        print(report.render(), file=sys.stderr)
        print(f"error: {error or type(error).__name__}", file=sys.stderr)
        return 1
    print(report.render(), file=sys.stderr)
    if report.interrupted:
        print(
            "interrupted: the export is incomplete; an --output file was left as it was"
            if args.command == "export"
            else "interrupted: a re-run is safe and skips what was done",
            file=sys.stderr,
        )
        return 130
    return 1 if report.problems and report.command in ("import", "export") else 0


if __name__ == "__main__":
    sys.exit(main())
