"""``python -m services.session.migrate`` against real Valkey: dry run, real run, and again."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis
from google.protobuf import json_format

from parley.session.v1 import session_pb2, session_pb2_grpc
from services.common.redis_client import make_client
from services.session import migrate as migrate_module
from services.session.model import ConversationKey, decode_message
from services.session.redis_store import PUT, RedisStore
from tests.session.conftest import start_session
from tests.support.processes import ROOT, Valkey, wait_for
from tests.support.proxy import ReplyCutter

LEGACY_DB, IMPORT_DB = 9, 10
WEEK = 7 * 24 * 3600


def migrate(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "services.session.migrate", "--redis-url", url, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def counts(result: subprocess.CompletedProcess[bytes]) -> dict[str, int]:
    """The ``name: count`` lines of a run's report."""
    return counts_of(result.stderr.decode())


def counts_of(stderr: str) -> dict[str, int]:
    """The ``name: count`` lines of a report."""
    out = {}
    for line in stderr.splitlines():
        name, sep, value = line.strip().rpartition(": ")
        if sep and value.isdigit():
            out[name] = int(value)
    return out


@pytest.fixture
def legacy_db(valkey: Valkey) -> Iterator[tuple[redis.Redis, str]]:
    db = redis.Redis(port=valkey.port, db=LEGACY_DB)
    db.flushdb()
    yield db, f"redis://127.0.0.1:{valkey.port}/{LEGACY_DB}"
    db.flushdb()


async def load(url: str, user: str, role: str = "client", business: str = "acme") -> object:
    client = make_client(url)
    try:
        store = RedisStore(client, ttl_seconds=900, history_limit=10)
        return await store.load(ConversationKey(business, user, role))  # type: ignore[arg-type]
    finally:
        await client.aclose()


def snapshot(db: redis.Redis) -> dict[bytes, object]:
    """Every key's value (and whether it has a TTL) to compare runs by."""
    out: dict[bytes, object] = {}
    for key in db.scan_iter():
        kind = db.type(key)
        value: object = {
            b"string": db.get,
            b"hash": db.hgetall,
            b"list": lambda k: db.lrange(k, 0, -1),
            b"zset": lambda k: db.zrange(k, 0, -1),
        }[kind](key)
        out[key] = (value, db.ttl(key) > 0)
    return out


async def test_legacy_dry_run_then_import_then_again(legacy_db: tuple[redis.Redis, str]) -> None:
    db, url = legacy_db
    pairs = {
        "history": [
            {"user": "שלום", "agent": "היי!"},
            {"user": "flights to Rome", "agent": "When?"},
        ],
        "state": {"destination": "FCO", "pax": 2},
    }
    db.set("chat:customer:+15551110001", orjson.dumps(pairs), ex=1800)
    db.set(
        "chat:customer:+15551110002",
        orjson.dumps(
            {
                "history": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ],
                "lang": "he",
            }
        ),
    )
    db.hset(
        "admin:context:+15551110003",
        mapping={
            "history": orjson.dumps([{"role": "user", "content": "add a product"}]),
            "pending": orjson.dumps({"op": "create_product"}),
            "note": "plain text",
        },
    )
    db.set(
        "chat:customer:+15551110004",
        orjson.dumps([{"user": f"q{n}", "agent": f"a{n}"} for n in range(15)]),
    )
    db.set("chat:customer:+15551110005", b"not json {")
    before = snapshot(db)

    dry = migrate(url, "legacy", "--business-id", "acme", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    assert counts(dry) == {
        "legacy keys found": 5,
        "would import": 4,
        "messages to import": 4 + 2 + 1 + 10,
        "skipped: unreadable": 1,
    }
    assert "chat:customer:+15551110005" in dry.stderr.decode()
    assert snapshot(db) == before  # the dry run wrote nothing

    real = migrate(url, "legacy", "--business-id", "acme")
    assert real.returncode == 0, real.stderr.decode()
    assert counts(real)["imported"] == 4
    assert counts(real)["legacy keys kept for 7 days"] == 4

    first = await load(url, "+15551110001")
    assert first is not None
    assert [decode_message(m)[:2] for m in first.history] == [  # type: ignore[attr-defined]
        ("user", "שלום"),
        ("assistant", "היי!"),
        ("user", "flights to Rome"),
        ("assistant", "When?"),
    ]
    assert first.state == {"destination": b'"FCO"', "pax": b"2"}  # type: ignore[attr-defined]
    assert first.version == 1  # type: ignore[attr-defined]
    second = await load(url, "+15551110002")
    assert second.state == {"lang": b'"he"'}  # type: ignore[attr-defined]
    admin = await load(url, "+15551110003", "admin")
    assert [decode_message(m)[1] for m in admin.history] == ["add a product"]  # type: ignore[attr-defined]
    assert admin.state == {"pending": b'{"op":"create_product"}', "note": b'"plain text"'}  # type: ignore[attr-defined]
    long = await load(url, "+15551110004")
    assert [decode_message(m)[1] for m in long.history][:2] == ["q10", "a10"]  # type: ignore[attr-defined]
    assert len(long.history) == 10  # type: ignore[attr-defined]
    assert await load(url, "+15551110005") is None

    # Legacy keys stay, for rollback, with a 7-day TTL (also the one that had 30 minutes).
    for name in ("chat:customer:+15551110001", "chat:customer:+15551110002"):
        assert WEEK - 60 < db.ttl(name) <= WEEK
    assert db.ttl("chat:customer:+15551110005") == -1  # unreadable: untouched

    after_first = snapshot(db)
    again = migrate(url, "legacy", "--business-id", "acme")
    assert again.returncode == 0
    assert counts(again)["already migrated (skipped)"] == 4
    assert "imported" not in counts(again)
    assert snapshot(db) == after_first  # the second run changed nothing


async def test_legacy_never_overwrites_a_live_conversation(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    db, url = legacy_db
    client = make_client(url)
    try:
        store = RedisStore(client, ttl_seconds=900, history_limit=10)
        await store.get(
            ConversationKey("acme", "+15551110006", "client"), create=True, new_id="live-id"
        )
    finally:
        await client.aclose()
    db.set("chat:customer:+15551110006", orjson.dumps([{"user": "old", "agent": "stale"}]))
    result = migrate(url, "legacy", "--business-id", "acme")
    assert counts(result)["skipped: a live conversation exists"] == 1
    kept = await load(url, "+15551110006")
    assert kept.id == "live-id" and not kept.history  # type: ignore[attr-defined]


async def test_export_then_import_elsewhere_idempotently(
    legacy_db: tuple[redis.Redis, str], valkey: Valkey, tmp_path: Path
) -> None:
    db, url = legacy_db
    db.set("chat:customer:+15551110007", orjson.dumps([{"user": "u", "agent": "a"}]))
    db.set("admin:context:+15551110008", orjson.dumps({"history": [], "step": 3}))
    assert migrate(url, "legacy", "--business-id", "acme", "--ttl", "600").returncode == 0

    dump = tmp_path / "conversations.jsonl"
    exported = migrate(url, "export", "--output", str(dump))
    assert exported.returncode == 0, exported.stderr.decode()
    assert counts(exported)["exported"] == 2
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {r["user_id"] for r in records} == {"+15551110007", "+15551110008"}

    target = redis.Redis(port=valkey.port, db=IMPORT_DB)
    target.flushdb()
    target_url = f"redis://127.0.0.1:{valkey.port}/{IMPORT_DB}"
    try:
        dry = migrate(target_url, "import", "--input", str(dump), "--dry-run")
        assert counts(dry) == {"would write": 2}
        assert target.dbsize() == 0
        real = migrate(target_url, "import", "--input", str(dump))
        assert counts(real) == {"written": 2}
        for user, role in (("+15551110007", "client"), ("+15551110008", "admin")):
            source, copy = await load(url, user, role), await load(target_url, user, role)
            assert copy is not None and copy.to_json() == source.to_json()  # type: ignore[attr-defined]
        assert 0 < target.ttl(next(target.scan_iter(match="conversation:*:meta"))) <= 600
        after = snapshot(target)
        again = migrate(target_url, "import", "--input", str(dump))
        assert counts(again) == {"skipped: Redis has this version or newer": 2}
        assert snapshot(target) == after

        bad = migrate(target_url, "import", stdin=b'{"role": "client"}\nnot json\n')
        assert bad.returncode == 1
        assert counts(bad) == {"invalid lines": 2}
        assert "line 2" in bad.stderr.decode()
    finally:
        target.flushdb()


def test_legacy_requires_a_business_id(legacy_db: tuple[redis.Redis, str]) -> None:
    _, url = legacy_db
    result = migrate(url, "legacy")
    assert result.returncode == 2
    assert "--business-id" in result.stderr.decode()


def test_long_runs_show_a_progress_bar_on_a_terminal(legacy_db: tuple[redis.Redis, str]) -> None:
    db, url = legacy_db
    for n in range(60):
        db.set(f"chat:customer:+1555222{n:04d}", orjson.dumps([{"user": "hi", "agent": "yo"}]))
    leader, follower = os.openpty()  # stderr is a terminal, as for an operator
    try:
        command = ["legacy", "--business-id", "acme", "--dry-run"]
        result = subprocess.run(
            [sys.executable, "-m", "services.session.migrate", "--redis-url", url, *command],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        output = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(leader, 65536):
                output += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0
    text = output.decode(errors="replace")
    assert "60/60" in text, text  # the bar's counter, complete
    assert "would import: 60" in text


def test_a_failed_export_leaves_the_earlier_file_as_it_was(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """Re-running an export over yesterday's file with a wrong URL (or a Ctrl-C, or Redis
    going away midway) must not leave the operator with an empty or half file instead."""
    _, url = legacy_db
    dump = tmp_path / "all.jsonl"
    dump.write_bytes(b'{"an": "earlier backup"}\n')
    refused = migrate("redis://127.0.0.1:1/0", "export", "--output", str(dump))
    assert refused.returncode != 0
    assert dump.read_bytes() == b'{"an": "earlier backup"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["all.jsonl"]  # no partial file left

    done = migrate(url, "export", "--output", str(dump))
    assert done.returncode == 0, done.stderr.decode()
    assert dump.read_bytes() == b""  # this database holds no conversation


def test_operator_errors_are_one_line_with_no_traceback_or_password(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    _, url = legacy_db
    port = url.split(":")[2].split("/")[0]
    cases = [
        # (arguments, exit status, what the one line says)
        ((url, "import", "--input", str(tmp_path / "missing.jsonl")), 1, "No such file"),
        ((url, "export", "--output", str(tmp_path / "no-dir" / "x.jsonl")), 1, "No such file"),
        (("redis://:pw-not-shown@127.0.0.1:1/0", "export"), 1, "connecting to 127.0.0.1:1"),
        (
            (f"redis://nobody:pw-not-shown@127.0.0.1:{port}/9", "legacy", "--business-id", "b"),
            1,
            "invalid username-password",
        ),
        (("redis://:pw-not-shown@127.0.0.1:notaport/0", "export"), 2, "--redis-url: "),
    ]
    for (target, *args), status, says in cases:
        result = migrate(target, *args)
        err = result.stderr.decode()
        assert result.returncode == status, err
        assert "Traceback" not in err and "pw-not-shown" not in err, err
        assert says in err, err


def test_the_global_options_are_taken_after_the_command_too(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """`migrate export --redis-url URL` is how most people write it. (Was a bug: argparse took
    `--redis-url` and `--no-progress` only before the command; after it they were "unrecognized
    arguments", quoted in full: the URL's password printed on the terminal.)"""
    _, url = legacy_db
    command = [sys.executable, "-m", "services.session.migrate"]
    dump = tmp_path / "after.jsonl"
    done = subprocess.run(
        [*command, "export", "--output", str(dump), "--redis-url", url, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert dump.exists()
    refused = subprocess.run(
        [*command, "export", "--redis-url", "redis://:pw-not-shown@127.0.0.1:1/0"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    err = refused.stderr.decode()
    assert refused.returncode == 1, err
    assert "connecting to 127.0.0.1:1" in err and "pw-not-shown" not in err, err
    # Given on both sides, the one after the command wins, as with any later option.
    both = subprocess.run(
        [
            *command,
            "--redis-url",
            url,
            "export",
            "--redis-url",
            "redis://:pw-not-shown@127.0.0.1:1/0",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert both.returncode == 1 and "127.0.0.1:1" in both.stderr.decode()
    # A misspelt option is still refused, without the password it would have quoted.
    typo = subprocess.run(
        [*command, "export", "--redis_url=redis://:pw-not-shown@127.0.0.1:1/0"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert typo.returncode == 2 and "unrecognized arguments" in typo.stderr.decode()
    assert "pw-not-shown" not in typo.stderr.decode(), typo.stderr.decode()


def test_an_interrupted_import_says_what_it_did_and_a_re_run_finishes_it(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    db, url = legacy_db
    now = int(time.time() * 1000)
    dump = tmp_path / "many.jsonl"
    with dump.open("wb") as out:
        for n in range(20_000):
            record = {
                "business_id": "acme", "user_id": f"+1555{n:07d}", "role": "client",
                "id": f"c{n}", "version": 2, "created_ms": now, "updated_ms": now,
                "expire_ms": now + 600_000, "history": [{"r": "u", "c": "hi", "t": now}],
                "state": {},
            }  # fmt: skip
            out.write(orjson.dumps(record) + b"\n")
    command = [sys.executable, "-m", "services.session.migrate", "--redis-url", url]
    running = subprocess.Popen(
        [*command, "import", "--input", str(dump)], cwd=ROOT, stderr=subprocess.PIPE
    )
    assert wait_for(lambda: db.dbsize() > 0, timeout=30, interval=0.01)
    running.send_signal(signal.SIGINT)  # an operator's Ctrl-C
    _, raw_err = running.communicate(timeout=30)
    err = raw_err.decode()
    assert running.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    done_before = counts_of(err)
    assert 0 < done_before["written"] < 20_000, err

    again = migrate(url, "import", "--input", str(dump))
    assert again.returncode == 0, again.stderr.decode()
    assert counts(again) == {
        "written": 20_000 - done_before["written"],
        "skipped: Redis has this version or newer": done_before["written"],
    }


def test_an_import_waiting_for_its_input_stops_at_a_ctrl_c(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """An import reads its input a line at a time, and a read blocks the event loop, where the
    Ctrl-C handler runs: an import waiting on standard input (a terminal, a pipe that stalled)
    could be stopped by neither a first nor a second Ctrl-C. Now a Ctrl-C while it waits for a
    line stops it at once, with the counts of what it did."""
    db, url = legacy_db
    now = int(time.time() * 1000)
    record = {
        "business_id": "acme", "user_id": "+15551110801", "role": "client", "id": "c1",
        "version": 1, "created_ms": now, "updated_ms": now, "expire_ms": now + 600_000,
        "history": [], "state": {},
    }  # fmt: skip
    command = [sys.executable, "-m", "services.session.migrate", "--redis-url", url, "import"]
    running = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert running.stdin is not None and running.stderr is not None
        running.stdin.write(orjson.dumps(record) + b"\n")
        running.stdin.flush()  # and the pipe stays open: the next line never comes
        assert wait_for(lambda: db.dbsize() > 0, timeout=30, interval=0.01)

        def reading_its_input() -> bool:  # the main thread in read(0, …)
            return Path(f"/proc/{running.pid}/syscall").read_text().startswith("0 0x0 ")

        assert wait_for(reading_its_input, timeout=30, interval=0.01)
        running.send_signal(signal.SIGINT)  # an operator's Ctrl-C
        running.wait(timeout=30)
        err = running.stderr.read().decode()
        assert running.returncode == 130, err
        assert "Traceback" not in err and counts_of(err) == {"written": 1}, err
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()


async def test_import_keeps_what_the_service_can_serve(
    session_redis_url: str, stub: session_pb2_grpc.SessionServiceStub, tmp_path: Path
) -> None:
    """A hand-made dump (an old in-memory store's, with no limits) must not import
    conversations that every later get fails on, nor stop the import half way."""
    now = int(time.time() * 1000)
    users = [f"+1666{now % 10**8:08d}{n}" for n in range(4)]  # this run's own

    def record(user: str, messages: int, length: int, state: dict[str, object]) -> bytes:
        history = [{"r": "u", "c": f"{n:05d}" + "x" * length, "t": now} for n in range(messages)]
        return orjson.dumps({
            "business_id": "dump", "user_id": user, "role": "client", "id": f"id-{user}",
            "version": 1, "created_ms": now, "updated_ms": now, "expire_ms": now + 600_000,
            "history": history, "state": state,
        })  # fmt: skip

    dump = tmp_path / "hand-made.jsonl"
    dump.write_bytes(
        b"\n".join([
            record(users[0], 10_000, 10, {}),  # Lua's unpack refused it: the run stopped
            record(users[1], 300, 20_000, {}),  # 6 MB: over gRPC's 4 MiB reply
            record(users[2], 1, 10, {"notes": "y" * 5_000_000}),  # a state no reply can carry
            record(users[3], 2, 10, {"step": 1}),
        ])
    )  # fmt: skip
    result = migrate(session_redis_url, "import", "--input", str(dump))
    err = result.stderr.decode()
    assert result.returncode == 1, err  # the state's line is invalid; the rest is written
    assert counts(result)["written"] == 3, err
    assert counts(result)["invalid lines"] == 1 and "line 3: " in err, err

    for user, messages, length in ((users[0], 10_000, 10), (users[1], 300, 20_000)):
        got = await stub.GetConversation(
            session_pb2.GetConversationRequest(
                key=session_pb2.ConversationKey(
                    business_id="dump", user_id=user, role=session_pb2.CONVERSATION_ROLE_CLIENT
                )
            )
        )
        history = got.conversation.history
        assert len(history) == 10  # the newest SESSION_HISTORY_LIMIT, as the service keeps
        assert history[-1].content.startswith(f"{messages - 1:05d}")
        assert len(history[-1].content) == min(5 + length, 4096)


async def test_legacy_leaves_a_state_no_reply_can_carry_untouched(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    db, url = legacy_db
    db.set("chat:customer:+15551110009", orjson.dumps({"history": [], "cart": "z" * 5_000_000}))
    result = migrate(url, "legacy", "--business-id", "acme")
    assert counts(result)["skipped: unreadable"] == 1, result.stderr.decode()
    assert "past its bounds" in result.stderr.decode()
    assert await load(url, "+15551110009") is None
    assert db.ttl("chat:customer:+15551110009") == -1  # kept as it was, for the operator


async def test_import_refuses_fields_of_the_wrong_type(
    session_redis_url: str, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    """A dump written by a script of its own: nulls and wrong types are invalid lines, not a
    user called "None", nor a version Redis's Lua numbers cannot hold exactly (after which
    every update of the conversation failed with INTERNAL)."""
    now = int(time.time() * 1000)
    user = f"+1777{now % 10**8:08d}"
    good = {
        "business_id": "types", "user_id": user, "role": "client", "id": "c1", "version": 1,
        "created_ms": now, "updated_ms": now, "expire_ms": now + 600_000,
        "history": [{"r": "u", "c": "hi", "t": now}], "state": {},
    }  # fmt: skip
    bad = [
        {"user_id": None},
        {"business_id": 42},
        {"id": None},
        {"version": True},
        {"version": 2.5},
        {"version": 2**60},
        {"expire_ms": "soon"},
        {"history": [{"r": "u", "c": "hi", "t": now, "p": None}]},
    ]
    lines = [orjson.dumps({**good, **change}) for change in bad]
    result = migrate(session_redis_url, "import", stdin=b"\n".join(lines))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert counts(result) == {"invalid lines": len(bad)}, err
    for name in ("user_id", "business_id", "id", "version", "expire_ms", "p"):
        assert name in err, err
    key = session_pb2.ConversationKey(
        business_id="types", user_id="None", role=session_pb2.CONVERSATION_ROLE_CLIENT
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConversation(session_pb2.GetConversationRequest(key=key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_legacy_survives_timestamps_out_of_range(legacy_db: tuple[redis.Redis, str]) -> None:
    """One odd timestamp (a corrupt value, nanoseconds times a thousand) stopped the whole
    run, dry run included, with a traceback: orjson cannot write an integer past 64 bits."""
    db, url = legacy_db
    for n, stamp in enumerate((1e300, 1e20, -5, 1_700_000_000)):
        history = [{"user": "hi", "agent": "yo", "timestamp": stamp}]
        db.set(f"chat:customer:+1555333000{n}", orjson.dumps({"history": history}))
    dry = migrate(url, "legacy", "--business-id", "acme", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    assert counts(dry)["would import"] == 4
    real = migrate(url, "legacy", "--business-id", "acme")
    assert counts(real)["imported"] == 4, real.stderr.decode()
    now = time.time() * 1000
    for n in range(3):  # not a time: the time of the import instead
        odd = await load(url, f"+1555333000{n}")
        assert abs(decode_message(odd.history[0])[2] - now) < 120_000  # type: ignore[attr-defined]
    kept = await load(url, "+15553330003")
    assert decode_message(kept.history[0])[2] == 1_700_000_000_000  # type: ignore[attr-defined]


async def test_restoring_an_old_backup_never_replaces_a_newer_conversation(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    # Versions restart at 1 with every conversation id, so across ids they say nothing: a backup
    # of a conversation at version 4, restored after its user began a new one (version 1),
    # replaced the new one. Across ids, the one updated later wins.
    _, url = legacy_db
    key = ConversationKey("acme", "+15551110099", "client")
    client = make_client(url)
    try:
        store = RedisStore(client, ttl_seconds=900, history_limit=10)
        await store.get(key, create=True, new_id="backed-up")
        for n in range(3):
            await store.update(
                key,
                append=[],
                set_state={"n": str(n).encode()},
                remove_state=[],
                expected_version=None,
                new_id="unused",
            )
        dump = tmp_path / "backup.jsonl"
        assert migrate(url, "export", "--output", str(dump)).returncode == 0
        (record,) = [json.loads(line) for line in dump.read_text().splitlines()]
        assert record["version"] == 4
        await client.delete(*key.redis_keys()[:3])  # gone by its TTL (an end would keep it out)
        await asyncio.sleep(0.01)
        await store.get(key, create=True, new_id="the-new-one")

        dry = migrate(url, "import", "--input", str(dump), "--dry-run")
        real = migrate(url, "import", "--input", str(dump))
        newer = "skipped: Redis holds a conversation updated later"
        assert counts(dry) == counts(real) == {newer: 1}, real.stderr.decode()
        assert (await store.load(key)).id == "the-new-one"  # type: ignore[union-attr]

        # A record updated after the live conversation (a move from a store that kept serving)
        # does replace it.
        record["updated_ms"] = int(time.time() * 1000) + 60_000
        dump.write_text(json.dumps(record) + "\n")
        assert counts(migrate(url, "import", "--input", str(dump))) == {"written": 1}
        assert (await store.load(key)).id == "backed-up"  # type: ignore[union-attr]
    finally:
        await client.aclose()


async def test_restoring_a_backup_never_brings_back_an_erased_conversation(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """An export taken before an erase (``EndConversation``), imported again, wrote the erased
    conversation back, messages and state: an erase is a privacy action, and a restore from
    last night's backup undid it. Now the import skips it (counted, in the dry run too) while
    Redis keeps the end (a TTL and a day); ``--restore-ended`` writes it all the same."""
    _, url = legacy_db
    erased = ConversationKey("acme", "+15551110201", "client")
    expired = ConversationKey("acme", "+15551110202", "client")
    kept = ConversationKey("acme", "+15551110203", "client")
    client = make_client(url)
    try:
        store = RedisStore(client, ttl_seconds=900, history_limit=10)
        for key in (erased, expired, kept):
            await store.update(
                key,
                append=[],
                set_state={"secret": b'"card 4111"'},
                remove_state=[],
                expected_version=None,
                new_id=f"id-{key.user_id}",
            )
        dump = tmp_path / "backup.jsonl"
        assert migrate(url, "export", "--output", str(dump)).returncode == 0
        assert await store.end(erased)
        # Gone from Redis by its TTL before the erase: the end finds nothing to delete.
        await client.delete(*expired.redis_keys()[:3])
        assert not await store.end(expired)

        dry = migrate(url, "import", "--input", str(dump), "--dry-run")
        real = migrate(url, "import", "--input", str(dump))
        skipped = "skipped: ended since (--restore-ended writes it)"
        expect = {skipped: 2, "skipped: Redis has this version or newer": 1}
        assert counts(dry) == counts(real) == expect, real.stderr.decode()
        assert real.returncode == 0
        assert await store.load(erased) is None and await store.load(expired) is None

        again = migrate(url, "import", "--input", str(dump), "--restore-ended")
        assert counts(again) == {"written": 2, "skipped: Redis has this version or newer": 1}
        restored = await store.load(erased)
        assert restored is not None and restored.state == {"secret": b'"card 4111"'}
        # The end is undone: a replica's outage writes to the restored one are written back.
        restored.version += 1
        assert await store.put(restored) == ("written", 1, 0)
    finally:
        await client.aclose()


def nested(depth: int, container: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if container == "list" else {"a": value}
    return value


async def test_import_refuses_a_state_nested_deeper_than_a_reply_can_carry(
    session_redis_url: str,
    stub: session_pb2_grpc.SessionServiceStub,
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """protobuf reads a message nested at most 100 levels deep, and a state value's JSON list
    costs a reply two levels, an object three: a dump whose state held a list 49 deep (or an
    object 33 deep) was imported, and every get and update of that conversation then failed
    with INTERNAL ("Exception deserializing response") until it expired."""
    now = int(time.time() * 1000)
    users = [f"+1888{now % 10**8:08d}{n}" for n in range(4)]
    states = [nested(48, "list"), nested(32, "object"), nested(49, "list"), nested(33, "object")]
    lines = []
    for user, state in zip(users, states, strict=True):
        record = {
            "business_id": "deep", "user_id": user, "role": "client", "id": f"id-{user}",
            "version": 1, "created_ms": now, "updated_ms": now, "expire_ms": now + 600_000,
            "history": [], "state": {"plan": state},
        }  # fmt: skip
        lines.append(orjson.dumps(record))
    result = migrate(session_redis_url, "import", stdin=b"\n".join(lines))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert counts(result) == {"written": 2, "invalid lines": 2}, err
    assert "line 3: " in err and "line 4: " in err and "nested" in err, err
    for n, user in enumerate(users):
        key = session_pb2.ConversationKey(
            business_id="deep", user_id=user, role=session_pb2.CONVERSATION_ROLE_CLIENT
        )
        if n >= 2:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetConversation(session_pb2.GetConversationRequest(key=key))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            continue
        got = await stub.GetConversation(session_pb2.GetConversationRequest(key=key))
        assert got.conversation.state["plan"].WhichOneof("kind") in ("list_value", "struct_value")

    db, url = legacy_db
    db.set("chat:customer:+15551110301", orjson.dumps({"plan": nested(49, "list")}))
    legacy = migrate(url, "legacy", "--business-id", "acme")
    assert counts(legacy)["skipped: unreadable"] == 1, legacy.stderr.decode()
    assert await load(url, "+15551110301") is None


async def test_legacy_survives_a_value_nested_past_what_json_writing_takes(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """A legacy value is read with orjson (1,024 levels) and its state written again with it
    (254 levels): one value nested 300 deep stopped the whole run, dry run included, with a
    traceback. Now it is an unreadable key, listed and left as it was."""
    db, url = legacy_db
    db.set("chat:customer:+15551110401", b'{"plan": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}")
    db.hset("admin:context:+15551110402", "plan", b"[" * 300 + b"1" + b"]" * 300)
    db.set("chat:customer:+15551110403", orjson.dumps({"plan": [1]}))
    for args in (("--dry-run",), ()):
        result = migrate(url, "legacy", "--business-id", "acme", *args)
        err = result.stderr.decode()
        assert result.returncode == 0 and "Traceback" not in err, err
        assert counts(result)["skipped: unreadable"] == 2, err
        assert "chat:customer:+15551110401" in err and "admin:context:+15551110402" in err, err
    assert await load(url, "+15551110401") is None
    assert await load(url, "+15551110403") is not None
    assert db.ttl("chat:customer:+15551110401") == -1


async def test_import_refuses_times_past_what_a_timestamp_holds(
    session_redis_url: str, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    """A time was whole milliseconds up to 2**53 - 1 for the import, but a reply carries it as a
    ``google.protobuf.Timestamp``, which ends with the year 9999: a message time or an expiry
    past it (a dump in microseconds) was imported, and the admin API's view of the session
    (``json_format.MessageToDict``) then failed on every read of it. ``--ttl`` was unbounded
    and could give the same."""
    now = int(time.time() * 1000)
    user = f"+1999{now % 10**8:08d}"
    good = {
        "business_id": "times", "user_id": user, "role": "client", "id": "c1", "version": 1,
        "created_ms": now, "updated_ms": now, "expire_ms": now + 600_000,
        "history": [{"r": "u", "c": "hi", "t": now}], "state": {},
    }  # fmt: skip
    micro = now * 1000  # a dump written in microseconds: the year 58,000 or so
    bad = [
        {"history": [{"r": "u", "c": "hi", "t": micro}]},
        {"created_ms": micro},
        {"updated_ms": micro},
        {"expire_ms": micro},
    ]
    lines = [
        orjson.dumps({**good, **change, "user_id": f"{user}{n}"}) for n, change in enumerate(bad)
    ] + [orjson.dumps(good)]
    result = migrate(session_redis_url, "import", stdin=b"\n".join(lines))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert counts(result) == {"invalid lines": len(bad), "written": 1}, err
    for name in ("t", "created_ms", "updated_ms", "expire_ms"):
        assert f"{name} must be" in err, err
    key = session_pb2.ConversationKey(
        business_id="times", user_id=user, role=session_pb2.CONVERSATION_ROLE_CLIENT
    )
    got = await stub.GetConversation(session_pb2.GetConversationRequest(key=key))
    assert json_format.MessageToDict(got.conversation)["history"][0]["content"] == "hi"

    for command in ("import", "legacy --business-id acme"):
        too_long = migrate(session_redis_url, *command.split(), "--ttl", str(10**12))
        assert too_long.returncode == 2 and "--ttl" in too_long.stderr.decode()


def test_a_dry_run_counts_a_file_s_repeated_conversations_as_the_import_will(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """Two dumps joined into one file hold some conversations twice: the dry run compared each
    line with Redis alone and said "would write" for every copy, while the import writes the
    first and skips a later copy that is not newer. Now the dry run counts each line against
    what the lines before it would have written."""
    db, url = legacy_db
    now = int(time.time() * 1000)

    def line(user: str, cid: str, version: int, updated_ms: int) -> bytes:
        return orjson.dumps({
            "business_id": "joined", "user_id": user, "role": "client", "id": cid,
            "version": version, "created_ms": now - 60_000, "updated_ms": updated_ms,
            "expire_ms": now + 600_000, "history": [], "state": {},
        })  # fmt: skip

    lines = [
        line("+15551110501", "a", 1, now),
        line("+15551110501", "a", 2, now),  # newer: written over the first
        line("+15551110501", "a", 2, now),  # the same again: skipped
        line("+15551110502", "b", 3, now),
        line("+15551110502", "c", 1, now - 5),  # another id, updated before: skipped
        line("+15551110502", "d", 1, now + 5),  # another id, updated after: written
    ]
    dump = b"\n".join(lines)
    dry = migrate(url, "import", "--dry-run", stdin=dump)
    assert db.dbsize() == 0
    real = migrate(url, "import", stdin=dump)
    expect = {
        "written": 4,
        "skipped: Redis has this version or newer": 1,
        "skipped: Redis holds a conversation updated later": 1,
    }
    assert counts(real) == expect, real.stderr.decode()
    dry_counts = counts(dry)
    assert dry_counts.pop("would write") == expect.pop("written"), dry.stderr.decode()
    assert dry_counts == expect, dry.stderr.decode()


def test_an_import_that_loses_redis_half_way_says_it_stopped(
    fresh_valkey: Valkey, tmp_path: Path
) -> None:
    """Redis going away in the middle of an import ended the report with "import (done):" and
    the count written so far, then the error: read as a finished import that had one hiccup.
    Now the report says the run stopped there, and a re-run carries on."""
    now = int(time.time() * 1000)
    dump = tmp_path / "many.jsonl"
    with dump.open("wb") as out:
        for n in range(20_000):
            record = {
                "business_id": "acme", "user_id": f"+1555{n:07d}", "role": "client",
                "id": f"c{n}", "version": 1, "created_ms": now, "updated_ms": now,
                "expire_ms": now + 600_000, "history": [], "state": {},
            }  # fmt: skip
            out.write(orjson.dumps(record) + b"\n")
    db = fresh_valkey.client()
    command = [sys.executable, "-m", "services.session.migrate", "--redis-url", fresh_valkey.url]
    running = subprocess.Popen(
        [*command, "import", "--input", str(dump)], cwd=ROOT, stderr=subprocess.PIPE
    )
    assert wait_for(lambda: db.dbsize() > 0, timeout=30, interval=0.01)
    fresh_valkey.stop()
    _, raw_err = running.communicate(timeout=60)
    err = raw_err.decode()
    assert running.returncode == 1, err
    assert "Traceback" not in err and "error: " in err, err
    assert "import (done)" not in err and "import (stopped by the error below" in err, err
    assert 0 < counts_of(err)["written"] < 20_000, err

    fresh_valkey.start()
    again = migrate(fresh_valkey.url, "import", "--input", str(dump))
    assert again.returncode == 0, again.stderr.decode()
    assert sum(counts(again).values()) == 20_000


def test_import_reads_its_input_a_line_at_a_time(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """The import read its whole input into memory and then split it into a second copy: a
    300 MB dump took 650 MB, so a large deployment's export could not be imported on a host
    with less than twice its size in memory (and a file with no line breaks, such as a binary
    given by mistake, was held whole). Now it reads a line at a time."""
    _, url = legacy_db
    now = int(time.time() * 1000)
    dump = tmp_path / "large.jsonl"
    with dump.open("wb") as out:
        for n in range(60):  # each line's state is past its bounds: 60 invalid lines, quickly
            record = {
                "business_id": "large", "user_id": f"+1555{n:07d}", "role": "client",
                "id": f"c{n}", "version": 1, "created_ms": now, "updated_ms": now,
                "expire_ms": now + 600_000, "history": [], "state": {"blob": "x" * 5_000_000},
            }  # fmt: skip
            out.write(orjson.dumps(record) + b"\n")
    size_mb = dump.stat().st_size / 2**20
    # The import's peak memory, from a small parent of its own: a child's ru_maxrss counts
    # the memory of the process it was forked from, here the whole test session.
    measure = (
        "import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:]); "
        "_, status, usage = os.wait4(child.pid, 0); "
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024)"
    )
    command = [sys.executable, "-m", "services.session.migrate", "--redis-url", url]
    result = subprocess.run(
        [sys.executable, "-c", measure, *command, "import", "--input", str(dump)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    err = result.stderr.decode()
    status, peak_mb = map(int, result.stdout.split())  # ru_maxrss is in kilobytes on Linux
    assert status == 1, err
    assert counts_of(err) == {"invalid lines": 60}, err
    assert peak_mb < size_mb / 2, (peak_mb, size_mb)


def test_a_line_longer_than_any_conversation_is_skipped_unread() -> None:
    lines = io.BytesIO(b'{"a": 1}\n' + b"x" * 100 + b"\n" + b"y" * 10 + b"\n" + b"z" * 11)
    assert list(migrate_module.read_lines(lines, limit=10)) == [
        b'{"a": 1}\n',
        None,  # over the limit: not held, not parsed
        b"y" * 10 + b"\n",
        None,
    ]


def test_an_end_erases_the_legacy_copy_kept_for_rollback(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """``legacy`` keeps each migrated key for 7 days, for rollback, and names it (the user's
    number) in its ledger. An erase (``DELETE /admin/users/…``, which ends the user's
    conversations) left both: the user's old history and state stayed in Redis for up to a week
    after Parley answered that it had erased them. Now an end of a conversation migrated from
    a legacy key deletes that key and its ledger entry; another business's end does not."""
    db, url = legacy_db
    for user in ("+15551110601", "+15551110602"):
        db.set(f"chat:customer:{user}", orjson.dumps([{"user": "my card is 4111", "agent": "ok"}]))
    db.hset("admin:context:+15551110601", "step", b"3")
    assert counts(migrate(url, "legacy", "--business-id", "acme"))["imported"] == 3
    ledger = "conversation-migration:{acme}"
    running = start_session(tmp_path, url)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)

            def end(business: str, user: str, role: int) -> bool:
                key = session_pb2.ConversationKey(business_id=business, user_id=user, role=role)
                request = session_pb2.EndConversationRequest(key=key)
                return stub.EndConversation(request).ended  # type: ignore[no-any-return]

            client = session_pb2.CONVERSATION_ROLE_CLIENT
            admin = session_pb2.CONVERSATION_ROLE_ADMIN
            assert not end("other-business", "+15551110601", client)
            assert db.exists("chat:customer:+15551110601")  # migrated into acme, not there
            assert end("acme", "+15551110601", client) and end("acme", "+15551110601", admin)
    finally:
        running.stop()
    assert not db.exists("chat:customer:+15551110601", "admin:context:+15551110601")
    assert db.hkeys(ledger) == [b"chat:customer:+15551110602"]
    assert db.exists("chat:customer:+15551110602")  # another user's, kept for rollback


async def test_legacy_leaves_a_key_whose_name_is_not_utf8_untouched(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """A legacy key named in another encoding (``chat:customer:`` and Latin-1 bytes) was
    imported under a user id of U+FFFD replacement characters, which no message ever carries,
    and its own key set to expire in 7 days: the conversation was lost a week later. Now it is
    an unusable user id, listed and left as it was."""
    db, url = legacy_db
    odd = b"chat:customer:Jos\xe9"
    db.set(odd, orjson.dumps([{"user": "hola", "agent": "hi"}]))
    result = migrate(url, "legacy", "--business-id", "acme")
    err = result.stderr.decode()
    assert counts(result) == {"legacy keys found": 1, "skipped: unusable user id": 1}, err
    assert "unusable user id" in err, err
    assert await load(url, "Jos\ufffd") is None
    assert db.ttl(odd) == -1


async def test_export_leaves_out_an_unreadable_conversation_and_says_so(
    legacy_db: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """One conversation whose stored history held something not JSON (a raw edit in
    ``redis-cli``, which docs/session.md warns against) stopped the export with a traceback, and
    no file was written: the tool to get the conversations out of a damaged Redis gave none.
    Now the others are exported, and that one is named, with exit status 1."""
    db, url = legacy_db
    client = make_client(url)
    try:
        store = RedisStore(client, ttl_seconds=900, history_limit=10)
        keys = [ConversationKey("damaged", f"+15551110{n}", "client") for n in range(3)]
        for key in keys:
            await store.get(key, create=True, new_id=f"id-{key.user_id}")
    finally:
        await client.aclose()
    db.rpush(keys[1].redis_keys()[1], b"not json")
    dump = tmp_path / "out.jsonl"
    result = migrate(url, "export", "--output", str(dump))
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert counts(result) == {"exported": 2, "unreadable, not exported": 1}, err
    assert keys[1].redis_keys()[0] in err, err
    exported = [json.loads(line)["user_id"] for line in dump.read_text().splitlines()]
    assert sorted(exported) == [keys[0].user_id, keys[2].user_id]


async def test_legacy_refuses_a_business_id_no_request_can_name(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """``--business-id "$(cat business.txt)"`` from a file saved on Windows ends in a carriage
    return: every legacy key was migrated under ``acme\\r``, a business id every RPC refuses
    (control characters), so no message could reach those conversations, and the legacy keys
    were set to expire in 7 days. Now the command refuses it, as the service would."""
    db, url = legacy_db
    db.set("chat:customer:+15551110701", orjson.dumps([{"user": "hi", "agent": "yo"}]))
    result = migrate(url, "legacy", "--business-id", "acme\r")
    assert result.returncode == 2, result.stderr.decode()
    assert "--business-id" in result.stderr.decode()
    assert db.ttl("chat:customer:+15551110701") == -1
    assert not db.keys("conversation:*")


async def test_legacy_records_a_conversation_whose_answer_was_lost(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """The answer to a legacy conversation's write lost on the way (a connection reset after
    Redis wrote it): the client sent the write again, Redis answered that it held this very
    copy already, and the run counted it "skipped: a live conversation exists" and left it out
    of the ledger, so the user's end (an erase) left their old history kept for rollback."""
    db, url = legacy_db
    db.set("chat:customer:+15551110701", orjson.dumps([{"user": "lost-answer-7", "agent": "ok"}]))
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    db.script_load(PUT)  # as on a Redis the service runs on: the write runs at once
    cutter = ReplyCutter(f"127.0.0.1:{port}").start()
    try:
        cutter.cut_reply_to(b"lost-answer-7")  # only the write carries the old history
        result = migrate(f"redis://{cutter.address}/{LEGACY_DB}", "legacy", "--business-id", "acme")
    finally:
        cutter.stop()
    assert cutter.cuts == 1
    assert result.returncode == 0, result.stderr.decode()
    assert counts(result)["imported"] == 1, result.stderr.decode()
    migrated = await load(url, "+15551110701")
    assert migrated is not None
    ledger = "conversation-migration:{acme}"
    assert db.hget(ledger, "chat:customer:+15551110701") == migrated.id.encode()  # type: ignore[attr-defined]


async def test_a_legacy_run_stopped_after_a_write_is_finished_by_the_re_run(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """A run stopped between writing a conversation and recording it in the ledger (killed,
    Redis gone): the re-run found the conversation live, counted it "skipped: a live
    conversation exists" and never recorded it, so the user's end (an erase) left their old
    history kept for rollback. Now the re-run finishes what the stopped run began."""
    db, url = legacy_db
    db.set("chat:customer:+15551110702", orjson.dumps([{"user": "hello", "agent": "hi"}]))
    key = ConversationKey("acme", "+15551110702", "client")
    client = make_client(url)
    store = RedisStore(client, ttl_seconds=900, history_limit=10)
    put = store.put

    async def put_then_stop(*args: Any, **kwargs: Any) -> Any:
        await put(*args, **kwargs)
        raise redis.exceptions.ConnectionError("test: the run stops right after the write")

    def run() -> Any:
        report = migrate_module.Report("legacy", False)
        return migrate_module.migrate_legacy(
            client, store, "acme", dry_run=False, ttl_seconds=900, history_limit=10,
            report=report, show_progress=False,
        )  # fmt: skip

    try:
        store.put = put_then_stop  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError):
            await run()
        store.put = put  # type: ignore[method-assign]
        again = await run()
        assert again.counts["imported"] == 1, again.counts
        assert "skipped: a live conversation exists" not in again.counts
        assert await store.end(key)
    finally:
        await client.aclose()
    assert not db.exists("chat:customer:+15551110702")  # erased with the conversation
    assert not db.hexists("conversation-migration:{acme}", "chat:customer:+15551110702")


async def test_a_legacy_key_gone_before_it_is_read_is_not_called_unreadable(
    legacy_db: tuple[redis.Redis, str],
) -> None:
    """The guides' old keys carry TTLs, and a long run reads each a while after its SCAN found
    it: one that expired (or that the old system deleted) meanwhile was reported "skipped:
    unreadable", with the problem "a none key, not a string or hash", which sent the operator
    looking for a corrupt value that was never there."""
    db, url = legacy_db
    for user in ("+15551110801", "+15551110802"):
        db.set(f"chat:customer:{user}", orjson.dumps([{"user": "hi", "agent": "hello"}]))
    client = make_client(url)
    store = RedisStore(client, ttl_seconds=900, history_limit=10)
    kind = client.type

    async def expired_before_read(name: Any) -> Any:
        if name == b"chat:customer:+15551110801":
            db.delete(name)  # its TTL ran out after the SCAN found it
        return await kind(name)

    client.type = expired_before_read  # type: ignore[method-assign]
    try:
        report = await migrate_module.migrate_legacy(
            client, store, "acme", dry_run=False, ttl_seconds=900, history_limit=10,
            report=migrate_module.Report("legacy", False), show_progress=False,
        )  # fmt: skip
    finally:
        await client.aclose()
    assert report.counts["imported"] == 1
    assert report.counts["gone before migration"] == 1
    assert "skipped: unreadable" not in report.counts and not report.problems


def test_a_legacy_entry_whose_content_is_not_text_is_named_for_it() -> None:
    """A history entry of a known role whose content is not text (OpenAI's list of content
    parts, a number) was reported as "unknown history entry role 'user'": the operator was sent
    to look at a role that was fine."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="content") as error:
        migrate_module.legacy_history(parts, 0)
    assert "unknown" not in str(error.value)
    with pytest.raises(ValueError, match="unknown history entry role 'tool'"):
        migrate_module.legacy_history([{"role": "tool", "content": "x"}], 0)
