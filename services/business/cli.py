"""Operator CLI for businesses: ``python -m services.business.cli COMMAND``.

It talks to the store directly (the same settings as the service: MONGODB_URI or
BUSINESS_DB_PATH, ENCRYPTION_SECRET[_PREVIOUS]) and, when GATEWAY_REDIS_URL or REDIS_URL is
set, tells running replicas and the gateway's workers to drop what it changed from their
caches. Secrets are read from stdin (or a prompt), never from the command line, where ``ps``
and shell history would keep them.

  add          --name N --subdomain S [--phone-number-id ID ...] [--number +E164 ...]
               [--time-zone Z] [--locale L] [--inactive] [--whatsapp-disabled]
               [--access-token-stdin]
  list         [--all] [--json]
  show         ID | --subdomain S | --phone-number-id ID   (tokens masked)
  set-token    ID {whatsapp-access-token,twilio-account-sid,twilio-auth-token,webhook-app-secret}
               [--clear]   (the value from stdin)
  deactivate   ID
  rotate-keys  [--dry-run]   re-encrypt every secret with the current ENCRYPTION_SECRET
  ensure-demo  [--json]      create the demo business of `make run` once; print its identities
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from services.business.core import BusinessCore, RotationReport, store_errors
from services.business.crypto import key_id_of
from services.business.model import (
    BusinessRecord,
    validate_business_id,
    validate_locale,
    validate_name,
    validate_number,
    validate_numbers,
    validate_phone_number_id,
    validate_phone_number_ids,
    validate_subdomain,
    validate_time_zone,
)
from services.business.server import make_bus, make_cipher, make_store
from services.business.settings import BusinessSettings
from services.common.business_keys import KeyKind
from services.common.errors import ServiceError
from services.common.settings import load_settings

DEMO = {
    "name": "Parley Demo Travel",
    "subdomain": "demo",
    "phone_number_ids": ("100000000000001",),
    "numbers": ("+15550100001",),
    "time_zone": "UTC",
    "locale": "en",
}
SECRET_CHOICES = {
    "whatsapp-access-token": "whatsapp_access_token",
    "twilio-account-sid": "twilio_account_sid",
    "twilio-auth-token": "twilio_auth_token",
    "webhook-app-secret": "webhook_app_secret",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.business.cli",
        description="Manage Parley businesses directly in the store.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    add = sub.add_parser("add", help="create a business")
    add.add_argument("--name", required=True)
    add.add_argument("--subdomain", required=True)
    add.add_argument("--phone-number-id", action="append", default=[], dest="pnids")
    add.add_argument("--number", action="append", default=[], dest="numbers")
    add.add_argument("--time-zone", default="UTC")
    add.add_argument("--locale", default="en")
    add.add_argument("--inactive", action="store_true")
    add.add_argument("--whatsapp-disabled", action="store_true")
    add.add_argument(
        "--access-token-stdin", action="store_true", help="read the Cloud API token from stdin"
    )
    add.add_argument("--json", action="store_true")

    lst = sub.add_parser("list", help="list businesses")
    lst.add_argument("--all", action="store_true", help="include inactive businesses")
    lst.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="show one business (secrets masked)")
    show.add_argument("id", nargs="?")
    show.add_argument("--subdomain")
    show.add_argument("--phone-number-id")
    show.add_argument("--number")
    show.add_argument("--json", action="store_true")

    token = sub.add_parser("set-token", help="store one channel secret (value from stdin)")
    token.add_argument("id")
    token.add_argument("secret", choices=sorted(SECRET_CHOICES))
    token.add_argument("--clear", action="store_true")

    deactivate = sub.add_parser("deactivate", help="mark a business inactive")
    deactivate.add_argument("id")

    rotate = sub.add_parser("rotate-keys", help="re-encrypt every secret with the current key")
    rotate.add_argument("--dry-run", action="store_true")
    rotate.add_argument("--batch-size", type=int, default=200)

    demo = sub.add_parser("ensure-demo", help="create the demo business once; print identities")
    demo.add_argument("--json", action="store_true")
    return p


def masked(record: BusinessRecord) -> dict[str, Any]:
    """A record as the CLI shows it: secrets as 'set (key id …)', never their value."""
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "subdomain": record.subdomain,
        "whatsapp_phone_number_ids": list(record.phone_number_ids),
        "whatsapp_numbers": list(record.numbers),
        "whatsapp_enabled": record.whatsapp_enabled,
        "active": record.active,
        "time_zone": record.time_zone,
        "locale": record.locale,
        "access_token_status": record.access_token_status.value or "NONE",
        "create_time": record.create_time.isoformat(),
        "update_time": record.update_time.isoformat(),
    }
    for name in SECRET_CHOICES.values():
        stored = record.secrets.get(name)
        out[name] = f"set (key id {_key_id(stored)})" if stored else "not set"
    return out


def _key_id(stored: str) -> str:
    try:
        return key_id_of(stored)
    except Exception:
        return "unknown format"


def _read_secret(what: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ").strip()
    return sys.stdin.readline().strip()


def _print_record(record: BusinessRecord, as_json: bool) -> None:
    view = masked(record)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    width = max(len(k) for k in view)
    for key, value in view.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")


async def _find(core: BusinessCore, args: argparse.Namespace) -> BusinessRecord:
    if args.id:
        return await core.get(validate_business_id(args.id))
    if args.subdomain:
        kind, value = KeyKind.SUBDOMAIN, validate_subdomain(args.subdomain, "--subdomain")
    elif args.phone_number_id:
        kind = KeyKind.PHONE_NUMBER_ID
        value = validate_phone_number_id(args.phone_number_id, "--phone-number-id")
    elif args.number:
        kind, value = KeyKind.WHATSAPP_NUMBER, validate_number(args.number, "--number")
    else:
        raise SystemExit("show: give an id, --subdomain, --phone-number-id or --number")
    record = await core.store.find(kind, value)
    if record is None:
        raise SystemExit("no business has this identity")
    return record


async def ensure_demo(core: BusinessCore) -> tuple[BusinessRecord, bool]:
    """The demo business, created on first call; (record, created)."""
    existing = await core.store.find(KeyKind.SUBDOMAIN, str(DEMO["subdomain"]))
    if existing is not None:
        return existing, False
    record = await core.create(
        name=str(DEMO["name"]),
        subdomain=str(DEMO["subdomain"]),
        phone_number_ids=tuple(DEMO["phone_number_ids"]),
        numbers=tuple(DEMO["numbers"]),
        whatsapp_enabled=True,
        active=True,
        time_zone=str(DEMO["time_zone"]),
        locale=str(DEMO["locale"]),
        # A dummy token: in dev the gateway writes replies to its outbox instead of Meta.
        secrets={"whatsapp_access_token": "dev-dummy-" + secrets.token_urlsafe(18)},
    )
    return record, True


def _progress(dry_run: bool) -> Callable[[RotationReport], None]:
    verb = "to re-encrypt" if dry_run else "re-encrypted"

    def show(report: RotationReport) -> None:
        print(
            f"  {report.businesses} businesses, {report.secrets} secrets: "
            f"{report.rotated} {verb}, {report.already_current} already current, "
            f"{report.failed} failed",
            file=sys.stderr,
            flush=True,
        )

    return show


async def run(args: argparse.Namespace, settings: BusinessSettings) -> int:
    cipher = make_cipher(settings)
    store = make_store(settings)
    # Publish-only: running replicas and the gateway's workers drop what this command changes.
    bus = make_bus(settings, on_invalidate=lambda keys, ids: None, on_reset=lambda: None)
    core = BusinessCore(store, cipher, bus=bus)
    try:
        with store_errors():  # unreachable or unusable: one line (main), not the driver's trace
            await store.open()
        return await _dispatch(core, args)
    finally:
        if bus is not None:
            await bus.stop()
        await store.close()


async def _dispatch(core: BusinessCore, args: argparse.Namespace) -> int:
    if args.command == "add":
        token = _read_secret("Cloud API access token") if args.access_token_stdin else ""
        if args.access_token_stdin and not token:
            # An unset variable piped in (`echo "$TOKEN"`): a business without its token would
            # have every reply dead-lettered. Refused, as set-token refuses an empty value.
            raise SystemExit("add: --access-token-stdin read an empty token; nothing created")
        record = await core.create(
            name=validate_name(args.name, "--name"),
            subdomain=validate_subdomain(args.subdomain, "--subdomain"),
            phone_number_ids=validate_phone_number_ids(args.pnids, "--phone-number-id"),
            numbers=validate_numbers(args.numbers, "--number"),
            whatsapp_enabled=not args.whatsapp_disabled,
            active=not args.inactive,
            time_zone=validate_time_zone(args.time_zone, "--time-zone"),
            locale=validate_locale(args.locale, "--locale"),
            secrets={"whatsapp_access_token": token} if token else {},
        )
        _print_record(record, args.json)
    elif args.command == "list":
        records: list[BusinessRecord] = []
        after: str | None = None
        while page := await core.list(after_id=after, limit=500, include_inactive=args.all):
            records.extend(page)
            after = page[-1].id
        if args.json:
            print(json.dumps([masked(r) for r in records], indent=2))
        else:
            print(f"{'id':<24}  {'subdomain':<20}  {'active':<6}  {'whatsapp':<8}  name")
            for r in records:
                print(
                    f"{r.id:<24}  {r.subdomain:<20}  {r.active!s:<6}  "
                    f"{r.whatsapp_enabled!s:<8}  {r.name}"
                )
            print(f"({len(records)} businesses)")
    elif args.command == "show":
        _print_record(await _find(core, args), args.json)
    elif args.command == "set-token":
        business_id = validate_business_id(args.id)
        name = SECRET_CHOICES[args.secret]
        value = "" if args.clear else _read_secret(args.secret)
        if not value and not args.clear:
            raise SystemExit("set-token: empty value (use --clear to remove the secret)")
        record = await core.set_secret(business_id, name, value)
        done = "cleared" if args.clear else "stored"
        print(f"{args.secret} {done} for {record.id} ({record.subdomain})")
    elif args.command == "deactivate":
        record = await core.deactivate(validate_business_id(args.id))
        print(f"deactivated {record.id} ({record.subdomain})")
    elif args.command == "rotate-keys":
        mode = "dry run: nothing written" if args.dry_run else "re-encrypting"
        print(f"rotate-keys to key id {core.cipher.current_key_id} ({mode})", file=sys.stderr)
        report = await core.rotate(
            dry_run=args.dry_run,
            page_size=max(1, args.batch_size),
            progress=_progress(args.dry_run),
        )
        verb = "would re-encrypt" if args.dry_run else "re-encrypted"
        print(
            f"{report.businesses} businesses, {report.secrets} secrets: {verb} {report.rotated}, "
            f"already current {report.already_current}, changed meanwhile "
            f"{report.changed_meanwhile}, failed {report.failed}"
        )
        return 1 if report.failed else 0
    elif args.command == "ensure-demo":
        record, created = await ensure_demo(core)
        identities = {
            "id": record.id,
            "name": record.name,
            "subdomain": record.subdomain,
            "phone_number_id": record.phone_number_ids[0] if record.phone_number_ids else "",
            "whatsapp_number": record.numbers[0] if record.numbers else "",
            "active": record.active and record.whatsapp_enabled,
            "created": created,
        }
        if args.json:
            print(json.dumps(identities))
        else:
            state = "created" if created else "already there"
            print(f"demo business {state}: {record.name} (id {record.id})")
            print(f"  subdomain        {record.subdomain}")
            print(f"  phone_number_id  {identities['phone_number_id']}")
            print(f"  whatsapp number  {identities['whatsapp_number']}")
            if not identities["active"]:
                print("  WARNING: it is inactive or WhatsApp-disabled; lookups will not find it")
    return 0


def _quiet_logs() -> None:
    """Warnings and errors only, on stderr: stdout is the command's answer (maybe JSON)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(BusinessSettings)
    _quiet_logs()
    try:
        code = asyncio.run(run(args, settings))
        sys.stdout.flush()  # here, where a closed pipe is caught, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (`list | head -1`): it has what it wanted. As Python's
        # documentation advises, stdout to /dev/null so the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except ServiceError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except ValueError as error:  # configuration (ENCRYPTION_SECRET)
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
