"""The two declarations of the schema agree, and every named query fits the schema and is used.

Alembic's migrations build the database; jobcore/schema.py declares it for SQLAlchemy; the
store's SQL lives in jobcore/sql/queries.sql. These tests fail when one moves without the
others: a migration that misses a column or index of schema.py (or the other way round), a
query that no longer prepares against the migrated tables, or a query nothing runs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import jobcore
from devstack.stack import Stack
from jobcore import store
from jobcore.database import asyncpg_dsn
from jobcore.queries import QUERIES, QUERIES_FILE
from jobcore.schema import metadata


@pytest.fixture(scope="module")
def migrated_database_url(stack: Stack) -> str:
    """A new database that only the Alembic migrations have touched."""
    assert stack.postgres is not None
    url = stack.postgres.create_database("jobs_schema_drift")
    subprocess.run(
        [sys.executable, "-m", "jobcore.migrate"],
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


@pytest.fixture(scope="module")
async def declared_database_url(stack: Stack) -> str:
    """A new database built from schema.py alone (SQLAlchemy's create_all)."""
    assert stack.postgres is not None
    url = stack.postgres.create_database("jobs_schema_declared")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as sync_connection:
            await sync_connection.run_sync(metadata.create_all)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def connection(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(migrated_database_url))
    yield connection
    await connection.close()


def _differences(sync_connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        sync_connection,
        opts={"compare_type": True, "compare_server_default": True},
    )
    return list(compare_metadata(context, metadata))


async def test_the_migrations_build_the_schema_that_schema_py_declares(
    migrated_database_url: str,
) -> None:
    engine = create_async_engine(migrated_database_url)
    try:
        async with engine.connect() as sync_connection:
            differences = await sync_connection.run_sync(_differences)
    finally:
        await engine.dispose()

    # Tables, columns, types, nullability, server defaults, indexes (with their expressions)
    # and constraints: the migrated database and schema.py must not differ in any.
    assert differences == []


# PostgreSQL's own rendering of every column, index and constraint of the public schema, so
# two databases can be compared where Alembic's comparison cannot look: partial-index
# predicates, check constraints, foreign-key actions, column order (NOTIFY payloads are rows
# as JSON, in column order).
_CATALOG = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default
          FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> 'alembic_version'
         ORDER BY table_name, ordinal_position
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef
          FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> 'alembic_version'
         ORDER BY tablename, indexname
    """,
    "constraints": """
        SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid)
          FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace
           AND conrelid::regclass::text <> 'alembic_version'
         ORDER BY 1, 2
    """,
}


async def _catalog(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return {
            name: [tuple(row) for row in await connection.fetch(sql)]
            for name, sql in _CATALOG.items()
        }
    finally:
        await connection.close()


async def test_the_migrated_and_the_declared_database_match_in_postgres_catalog(
    migrated_database_url: str, declared_database_url: str
) -> None:
    migrated = await _catalog(migrated_database_url)
    declared = await _catalog(declared_database_url)

    assert migrated["indexes"], "the catalog query found no indexes"
    for kind in _CATALOG:
        assert migrated[kind] == declared[kind], kind


async def test_every_named_query_prepares_against_the_migrated_schema(
    connection: asyncpg.Connection,
) -> None:
    failures = {}
    for name, query in QUERIES.items():
        try:
            await connection.prepare(query.sql)
        except asyncpg.PostgresError as error:
            failures[name] = f"{type(error).__name__}: {error}"

    assert failures == {}


async def test_list_jobs_prepares_with_every_filter_fragment_and_the_cursor(
    connection: asyncpg.Connection,
) -> None:
    shape = tuple(store._CONDITION_SQL)
    statement = await connection.prepare(store._list_jobs_sql(shape, after_cursor=True))

    # The limit, the tenant, one value per condition, then the cursor's time and id.
    assert [parameter.name for parameter in statement.get_parameters()] == [
        "int4",
        "text",
        *("text",) * 4,
        *("timestamptz",) * 6,
        "timestamptz",
        "uuid",
    ]


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_every_named_query_is_run_by_the_code() -> None:
    package = Path(jobcore.__file__).resolve().parent
    used: set[str] = set()
    for path in package.rglob("*.py"):
        if path.name != "queries.py" and "migrations" not in path.parts:
            used |= _string_constants(path)

    unused = [name for name in QUERIES if name not in used]

    assert unused == [], f"{QUERIES_FILE.name} has queries no code runs"
