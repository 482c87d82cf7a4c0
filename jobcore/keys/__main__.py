"""`python -m jobcore.keys create|list|revoke`: API keys straight in the database (DATABASE_URL).

This is how the first admin key of a deployment is made, before any key exists to call
AdminService with (`jobs keys ...` does the same through the service afterwards):

    python -m jobcore.keys create --tenant ops --scope admin --name first-admin --expires 30d

`create` prints the key this once; the database keeps only its SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from jobcore.database import Database, create_pool
from jobcore.errors import ApiKeyNotFoundError, InvalidJobError, TransientError
from jobcore.identity import Scope
from jobcore.keys.expiry import EXPIRES_HELP, parse_expiry
from jobcore.keys.records import ApiKeyRecord, key_to_json, parse_key_id
from jobcore.keys.store import KeyStore
from jobcore.settings import get_settings

# As the `jobs` CLI: 1 refused (invalid, not found), 2 usage, 3 the database is unreachable.
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3


def _expiry(text: str) -> datetime:
    try:
        return parse_expiry(text, now=datetime.now(UTC))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """The parser: create, list and revoke, each with --json."""
    parser = argparse.ArgumentParser(
        prog="python -m jobcore.keys",
        description="Make, list and revoke API keys in the job service's database "
        "(DATABASE_URL), e.g. the first admin key of a deployment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = commands.add_parser("create", help="make a key and print it (only this once)")
    create.add_argument("--tenant", required=True, help="the tenant whose jobs the key reaches")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=[scope.value for scope in Scope],
        help="what the key may do; repeat for several",
    )
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument("--expires", type=_expiry, default=None, help=EXPIRES_HELP)
    listing = commands.add_parser("list", help="list keys that work now, newest first")
    listing.add_argument("--all", action="store_true", help="also revoked and expired keys")
    revoke = commands.add_parser("revoke", help="stop a key from working, on every server")
    revoke.add_argument("key_id", metavar="ID", help="the key's id, as create or list print it")
    for command in (create, listing, revoke):
        command.add_argument("--json", action="store_true", help="print JSON (one key a line)")
    return parser


def describe(record: ApiKeyRecord, *, now: datetime) -> str:
    """One line about a key, for people."""
    scopes = ",".join(sorted(scope.value for scope in record.scopes))
    expires = record.expires_at.isoformat() if record.expires_at is not None else "never"
    name = f"  name={record.name!r}" if record.name else ""
    return (
        f"{record.id}  {record.prefix}  tenant={record.tenant}  scopes={scopes}  "
        f"expires={expires}  {record.state(now)}{name}"
    )


def _print_new_key(record: ApiKeyRecord, key: str, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(key_to_json(record, key=key)))
        return
    print(describe(record, now=datetime.now(UTC)))
    print("The key (shown only this once; the service keeps only its hash):")
    print(f"  {key}")
    print(f"export JOBS_API_KEY={key}")


async def run(args: argparse.Namespace, database_url: str) -> int:
    """Make the one change or read the command asks for, and print it."""
    database = Database(await create_pool(database_url, pool_size=1))
    keys = KeyStore(database)
    try:
        match args.command:
            case "create":
                record, key = await keys.create(
                    tenant=args.tenant, scopes=args.scopes, name=args.name, expires_at=args.expires
                )
                _print_new_key(record, key, as_json=args.json)
                return EXIT_OK
            case "list":
                records = await keys.list(include_inactive=args.all)
            case "revoke":
                records = [await keys.revoke(parse_key_id(args.key_id))]
            case _:  # pragma: no cover - argparse allows only the commands above
                raise AssertionError(args.command)
    finally:
        await database.close()
    now = datetime.now(UTC)
    for record in records:
        print(json.dumps(key_to_json(record)) if args.json else describe(record, now=now))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m jobcore.keys`."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, get_settings().database_url))
    except (InvalidJobError, ApiKeyNotFoundError) as error:
        print(f"python -m jobcore.keys: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except (TransientError, OSError) as error:
        print(f"python -m jobcore.keys: cannot use the database: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
