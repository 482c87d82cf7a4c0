"""KeyStore: API keys in PostgreSQL, the one owner of the api_keys statements of queries.sql."""

from __future__ import annotations

import builtins
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final

import asyncpg

from jobcore.database import Database, create_pool
from jobcore.errors import ApiKeyNotFoundError, FieldViolation, InvalidJobError
from jobcore.identity import Scope, check_tenant, parse_scopes
from jobcore.ids import new_job_id
from jobcore.keys.material import new_key
from jobcore.keys.records import ApiKeyRecord, StoredApiKey, check_expiry, check_name
from jobcore.queries import QUERIES, QueryName

logger = logging.getLogger(__name__)

# Draws of a new key whose random prefix is already taken, before giving up: with 32 random
# bits, even a million keys make three clashes in a row a one in 10^10 event.
_INSERT_TRIES: Final = 3
_KNOWN_SCOPES: Final = frozenset(scope.value for scope in Scope)


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    """An ApiKeyRecord from an api_keys row (id, prefix, tenant, scopes, name, created_at,
    expires_at, revoked_at)."""
    return ApiKeyRecord(
        id=row["id"],
        prefix=row["prefix"],
        tenant=row["tenant"],
        # A scope this version does not know (stored by a newer one) grants nothing here.
        scopes=frozenset(Scope(name) for name in row["scopes"] if name in _KNOWN_SCOPES),
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _checked(violations: list[FieldViolation], check: Callable[[], object]) -> None:
    """Run one check, adding its violations to `violations`, so all are reported at once."""
    try:
        check()
    except InvalidJobError as error:
        violations += error.violations


class KeyStore:
    """Makes, lists and revokes API keys; reads them all, with their digests, for the key ring."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def _fetch(self, query: QueryName, *arguments: object) -> list[asyncpg.Record]:
        """Run the named query (a TransientError if that fails in a way that passes)."""
        return await self._database.fetch(QUERIES[query].sql, *arguments)

    async def create(
        self,
        *,
        tenant: str,
        scopes: Iterable[str],
        name: str,
        expires_at: datetime | None,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for `tenant`: its record, and the key itself, which is stored nowhere.

        InvalidJobError names every invalid field: a malformed tenant, no scope or an unknown
        one, a name too long or unprintable, an expiry without a UTC offset or not in the future.
        """
        scope_list = list(scopes)
        violations: list[FieldViolation] = []
        _checked(violations, lambda: check_tenant(tenant))
        _checked(violations, lambda: parse_scopes(scope_list))
        _checked(violations, lambda: check_name(name))
        _checked(violations, lambda: check_expiry(expires_at, now=datetime.now(UTC)))
        if violations:
            raise InvalidJobError(violations)
        scope_names = sorted(scope.value for scope in parse_scopes(scope_list))
        for _ in range(_INSERT_TRIES):
            drawn = new_key()
            rows = await self._fetch(
                "insert_api_key",
                new_job_id(),  # a UUIDv7, as job ids are: keys sort by creation
                drawn.prefix,
                drawn.digest,
                tenant,
                scope_names,
                name,
                expires_at,
            )
            if rows:
                return _record(rows[0]), drawn.key
            logger.info("API key prefix %s is taken already; drawing another key", drawn.prefix)
        raise RuntimeError(f"{_INSERT_TRIES} random API key prefixes in a row were taken")

    async def list(self, *, include_inactive: bool) -> list[ApiKeyRecord]:
        """Every key that works now, or with `include_inactive` every key; newest first."""
        rows = await self._fetch("list_api_keys", include_inactive)
        return [_record(row) for row in rows]

    async def revoke(self, key_id: uuid.UUID) -> ApiKeyRecord:
        """Revoke the key now (a revoked key stays as it was); ApiKeyNotFoundError if unknown."""
        rows = await self._fetch("revoke_api_key", key_id)
        if not rows:
            raise ApiKeyNotFoundError(str(key_id))
        return _record(rows[0])

    async def all_keys(self) -> builtins.list[StoredApiKey]:  # `list` is a method here
        """Every key with its digest, revoked and expired ones too: what a key ring holds."""
        rows = await self._fetch("api_key_ring")
        return [StoredApiKey(_record(row), bytes(row["secret_hash"])) for row in rows]


async def create_key(
    database_url: str,
    *,
    tenant: str,
    scopes: Iterable[str],
    name: str,
    expires_at: datetime | None,
) -> tuple[ApiKeyRecord, str]:
    """Make a key straight in the database at `database_url`: the first admin key of a
    deployment, or make run's development key. Its record, and the key, shown only now."""
    database = Database(await create_pool(database_url, pool_size=1))
    try:
        return await KeyStore(database).create(
            tenant=tenant, scopes=scopes, name=name, expires_at=expires_at
        )
    finally:
        await database.close()
