"""The operator CLI, run as operators run it: a process against the store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.business.conftest import TEST_SECRET, SecretRegistry
from tests.support.processes import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


class Cli:
    def __init__(self, registry: SecretRegistry, db: Path) -> None:
        self.registry = registry
        self.env = {
            "PATH": "/usr/bin:/bin",
            "BUSINESS_DB_PATH": str(db),
            "ENCRYPTION_SECRET": TEST_SECRET,
        }

    def __call__(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "services.business.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Kept for the scan of every log and output of the run for tokens.
        with (self.registry.log_dir / "cli.log").open("a") as log:
            log.write(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}")
        return done


@pytest.fixture
def cli(registry: SecretRegistry, tmp_path: Path) -> Cli:
    return Cli(registry, tmp_path / "business.db")


def test_add_show_list_set_token_deactivate(cli: Cli, registry: SecretRegistry) -> None:
    token = registry.token("cli")
    added = cli(
        "add", "--name", "Acme Trips", "--subdomain", "acme", "--phone-number-id", "123456",
        "--number", "whatsapp:+14155238886", "--time-zone", "Europe/Paris", "--locale", "fr_fr",
        "--access-token-stdin", "--json", stdin=token + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["whatsapp_numbers"] == ["+14155238886"] and shown["locale"] == "fr-FR"
    assert shown["whatsapp_access_token"].startswith("set (key id ")
    business_id = shown["id"]

    for args in (
        ("show", business_id),
        ("show", "--subdomain", "acme"),
        ("show", "--number", "+14155238886"),
    ):
        out = cli(*args)
        assert out.returncode == 0 and "Acme Trips" in out.stdout
        assert token not in out.stdout + out.stderr
        assert "set (key id" in out.stdout

    listed = cli("list", "--json")
    assert [b["subdomain"] for b in json.loads(listed.stdout)] == ["acme"]

    second = registry.token("cli2")
    assert cli("set-token", business_id, "twilio-auth-token", stdin=second + "\n").returncode == 0
    assert (
        "set (key id" in json.loads(cli("show", business_id, "--json").stdout)["twilio_auth_token"]
    )

    assert cli("deactivate", business_id).returncode == 0
    assert json.loads(cli("list", "--json").stdout) == []
    assert len(json.loads(cli("list", "--all", "--json").stdout)) == 1


def test_bad_input_names_the_option(cli: Cli) -> None:
    bad = cli("add", "--name", "X", "--subdomain", "Not_Valid")
    assert bad.returncode == 1 and "--subdomain" in bad.stderr
    cli("add", "--name", "X", "--subdomain", "x1", "--phone-number-id", "77")
    clash = cli("add", "--name", "Y", "--subdomain", "y1", "--phone-number-id", "77")
    assert clash.returncode == 1 and "phone_number_id" in clash.stderr
    no_secret = cli("list", ENCRYPTION_SECRET="")
    assert no_secret.returncode == 2 and "ENCRYPTION_SECRET" in no_secret.stderr


def test_add_refuses_an_empty_token_from_stdin(cli: Cli) -> None:
    """`echo "$TOKEN" | … add --access-token-stdin` with TOKEN unset pipes an empty line. (Was
    a bug: the business was created without a token, exit 0, and every reply of it was
    dead-lettered; set-token refused the same empty value.)"""
    args = ("add", "--name", "No Token", "--subdomain", "no-token", "--access-token-stdin")
    empty = cli(*args, stdin="\n")
    assert empty.returncode == 1, empty.stdout
    assert "empty token" in empty.stderr and "nothing created" in empty.stderr, empty.stderr
    assert "(0 businesses)" in cli("list", "--all").stdout


def test_rotate_keys_dry_run_progress_and_idempotence(cli: Cli, registry: SecretRegistry) -> None:
    for i in range(3):
        done = cli(
            "add", "--name", f"R{i}", "--subdomain", f"r{i}", "--access-token-stdin",
            stdin=registry.token("rot") + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    rotated_env = {
        "ENCRYPTION_SECRET": "a-brand-new-secret-0123456789",
        "ENCRYPTION_SECRET_PREVIOUS": TEST_SECRET,
    }
    dry = cli("rotate-keys", "--dry-run", **rotated_env)
    assert dry.returncode == 0 and "would re-encrypt 3" in dry.stdout
    assert "dry run" in dry.stderr and "businesses" in dry.stderr  # progress
    real = cli("rotate-keys", "--batch-size", "2", **rotated_env)
    assert real.returncode == 0 and "re-encrypted 3" in real.stdout
    again = cli("rotate-keys", **rotated_env)
    assert "re-encrypted 0, already current 3" in again.stdout
    # The old secret is no longer needed to read anything.
    only_new = cli(
        "show", "--subdomain", "r1", "--json", ENCRYPTION_SECRET="a-brand-new-secret-0123456789"
    )
    key_id = json.loads(only_new.stdout)["whatsapp_access_token"]
    assert (
        key_id
        == json.loads(cli("show", "--subdomain", "r2", "--json", **rotated_env).stdout)[
            "whatsapp_access_token"
        ]
    )
    # Without the previous secret, values under an unknown key are reported, not crashed on.
    lost = cli("rotate-keys", ENCRYPTION_SECRET="yet-another-secret-0123456789")
    assert lost.returncode == 1 and "failed 3" in lost.stdout


def test_a_previous_secret_is_read_as_it_was_used(cli: Cli, registry: SecretRegistry) -> None:
    """`ENCRYPTION_SECRET` is used exactly as set, so one with a trailing newline (a Kubernetes
    secret made `--from-file`) or a space encrypted the tokens with that character in its key.
    Moved to `ENCRYPTION_SECRET_PREVIOUS` as it was, it must still decrypt them. (Was a bug:
    each previous secret was stripped, so its key differed, and after the roll every token was
    undecryptable: rotate-keys failed them all, lookups with credentials FAILED_PRECONDITION.)"""
    padded = TEST_SECRET + "-padded\n"
    done = cli(
        "add", "--name", "Padded", "--subdomain", "padded", "--access-token-stdin",
        stdin=registry.token("padded") + "\n", ENCRYPTION_SECRET=padded,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rotated = cli(
        "rotate-keys",
        ENCRYPTION_SECRET="a-brand-new-secret-0123456789",
        ENCRYPTION_SECRET_PREVIOUS=f"{TEST_SECRET}-unused, {padded}",
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "re-encrypted 1" in rotated.stdout and "failed 0" in rotated.stdout


@pytest.mark.parametrize(
    "old_secret",
    ["Vq3,Zr8pLm2Xw9Tk4Hs7Bn", "first-half-long-enough,second-half-long-enough"],
    ids=["a-short-piece", "two-long-pieces"],
)
def test_a_previous_secret_with_a_comma_in_it_still_decrypts(
    cli: Cli, registry: SecretRegistry, old_secret: str
) -> None:
    """`ENCRYPTION_SECRET` may hold a comma (a password manager's symbols), and step 2 of the
    rotation moves it to the comma-separated `ENCRYPTION_SECRET_PREVIOUS` as it was. (Was a bug:
    it was split into pieces, none of them the secret: a piece shorter than 16 characters
    stopped every replica at step 2, and two long pieces started them with every token
    undecryptable, rotate-keys failing them all.)"""
    done = cli(
        "add", "--name", "Comma", "--subdomain", "comma", "--access-token-stdin",
        stdin=registry.token("comma") + "\n", ENCRYPTION_SECRET=old_secret,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    new_secret = "a-brand-new-secret-0123456789"
    for previous in (old_secret, f"{TEST_SECRET}-older-one, {old_secret}"):
        dry = cli(
            "rotate-keys", "--dry-run",
            ENCRYPTION_SECRET=new_secret, ENCRYPTION_SECRET_PREVIOUS=previous,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would re-encrypt 1" in dry.stdout and "failed 0" in dry.stdout


def test_a_previous_secret_shorter_than_a_secret_can_be_is_refused(
    cli: Cli, registry: SecretRegistry
) -> None:
    """No `ENCRYPTION_SECRET` shorter than 16 characters was ever accepted, so a shorter entry
    of `ENCRYPTION_SECRET_PREVIOUS` is a mistake: a secret cut short in the copy, or step 1 of
    the rotation staging a new secret that step 2 will refuse. (Was a bug: accepted without a
    word; the cut-short old secret decrypted nothing, and the staged short one stopped every
    replica at step 2, half-way through the roll.)"""
    short = "0123456789"
    refused = cli("list", ENCRYPTION_SECRET_PREVIOUS=f"{TEST_SECRET}-older-one, {short}")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ENCRYPTION_SECRET_PREVIOUS" in refused.stderr and "16" in refused.stderr
    assert "entry 2" in refused.stderr and short not in refused.stderr, refused.stderr
    # Blank entries (a trailing comma) and secrets of 16 characters or more are fine.
    assert cli("list", ENCRYPTION_SECRET_PREVIOUS=f"{TEST_SECRET}-old,").returncode == 0


def test_output_to_a_reader_that_went_away_is_no_traceback(cli: Cli) -> None:
    """`python -m services.business.cli list | head -1`: head exits, the next write is EPIPE.
    The command stops quietly with status 1, as Python's documentation advises. (Was a bug: a
    BrokenPipeError traceback on the operator's terminal.)"""
    for i in range(3):
        assert cli("add", "--name", f"P{i}", "--subdomain", f"p{i}").returncode == 0
    for args in (("list",), ("list", "--json"), ("show", "--subdomain", "p1")):
        process = subprocess.Popen(
            [sys.executable, "-m", "services.business.cli", *args],
            cwd=ROOT,
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        process.stdout.close()  # no reader left: every write to stdout is EPIPE
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, stderr
        assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_ensure_demo_is_idempotent_with_fixed_identities(cli: Cli) -> None:
    first = json.loads(cli("ensure-demo", "--json").stdout)
    assert first["created"] is True
    assert (
        first["name"],
        first["subdomain"],
        first["phone_number_id"],
        first["whatsapp_number"],
    ) == (
        "Parley Demo Travel",
        "demo",
        "100000000000001",
        "+15550100001",
    )
    again = json.loads(cli("ensure-demo", "--json").stdout)
    assert again["created"] is False and again["id"] == first["id"] and again["active"] is True
    shown = json.loads(cli("show", "--phone-number-id", "100000000000001", "--json").stdout)
    assert (shown["time_zone"], shown["locale"], shown["active"], shown["whatsapp_enabled"]) == (
        "UTC",
        "en",
        True,
        True,
    )
    assert shown["whatsapp_access_token"].startswith("set")
    text = cli("ensure-demo").stdout
    assert "already there" in text and "100000000000001" in text and "+15550100001" in text


def test_a_store_that_does_not_answer_is_one_line(cli: Cli) -> None:
    """The operator's commonest mistake, a MongoDB that is down or a wrong host, was a 40-line
    driver traceback. (A BUSINESS_DB_PATH SQLite cannot open takes the same path, but
    aiosqlite 0.22's worker thread may then print its own traceback at exit.)"""
    refused = f"mongodb://parley:pw-not-shown@127.0.0.1:{free_port()}/parley"
    out = cli("list", MONGODB_URI=refused + "?serverSelectionTimeoutMS=300")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "pw-not-shown" not in out.stderr, out.stderr
    assert "business store is unavailable" in out.stderr, out.stderr


@pytest.mark.parametrize("variable", ["REDIS_URL", "GATEWAY_REDIS_URL"])
def test_a_redis_url_it_cannot_use_is_named_without_its_password(
    cli: Cli, registry: SecretRegistry, variable: str
) -> None:
    """A password with an unencoded '/' ends the URL's host part early, and the parser's
    message quotes what came before it. (Was a bug: the CLI built its invalidation client
    without the service's `configuring`, so it printed `error: Port could not be cast to integer
    value as '<the password>'`.)"""
    password = registry.token("redis")
    out = cli("list", **{variable: f"redis://:{password}/rest@redis.example:6379/0"})
    assert out.returncode == 2, out.stderr
    assert password not in out.stderr + out.stdout, out.stderr
    assert out.stderr.startswith(f"error: {variable}: "), out.stderr
    assert "percent-encoded" in out.stderr, out.stderr


def test_a_store_that_stops_answering_during_rotate_keys_is_one_line(
    cli: Cli, registry: SecretRegistry, tmp_path: Path
) -> None:
    """rotate-keys runs for a while against a store in use: a write it cannot make (the SQLite
    file locked past its busy timeout, a MongoDB failing over) ends it with the documented line
    and status 1, and a re-run finishes the job. (Was a bug: the driver's traceback, because
    the rotation's reads and writes went to the store without the CLI's error handling.)"""
    for i in range(2):
        done = cli(
            "add", "--name", f"L{i}", "--subdomain", f"l{i}", "--access-token-stdin",
            stdin=registry.token("locked") + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    rotated_env = {
        "ENCRYPTION_SECRET": "a-brand-new-secret-0123456789",
        "ENCRYPTION_SECRET_PREVIOUS": TEST_SECRET,
    }
    # Another process holds the write lock longer than the CLI's busy timeout (5 s).
    holder = sqlite3.connect(tmp_path / "business.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        locked = cli("rotate-keys", **rotated_env)
    finally:
        holder.close()
    assert locked.returncode == 1, locked.stderr
    assert "Traceback" not in locked.stderr, locked.stderr
    assert "business store is unavailable" in locked.stderr, locked.stderr
    again = cli("rotate-keys", **rotated_env)
    assert again.returncode == 0 and "re-encrypted 2" in again.stdout, again.stdout
