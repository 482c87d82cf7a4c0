"""JobStore against a real PostgreSQL that fails on purpose: every failure that passes
reaches callers as the store's own transient error, with a message free of driver text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from jobcore.database import asyncpg_dsn
from jobcore.errors import (
    StoreConflictError,
    StoreOverloadedError,
    StoreTimeoutError,
    TransientError,
)
from jobcore.ids import new_job_id
from jobcore.models import Job, JobStatus
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.eventually import eventually
from tests.owners import TEST_OWNER

LEASE = timedelta(minutes=5)


@pytest.fixture(scope="module")
async def store(isolated_database_url: str) -> AsyncIterator[JobStore]:
    store = await JobStore.connect(isolated_database_url, pool_size=4)
    yield store
    await store.close()


@pytest.fixture
async def admin(isolated_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection outside any transaction, to watch the others."""
    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def blocker(isolated_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection for a transaction of its own that holds row locks; rolled back at the end."""
    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    yield connection
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")
    await connection.close()


def _with_settings(database_url: str, **settings: str) -> str:
    """The URL with PostgreSQL settings for its sessions (asyncpg passes unknown parameters on)."""
    return make_url(database_url).update_query_dict(settings).render_as_string(hide_password=False)


async def _new_job(store: JobStore) -> Job:
    job, _ = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([3.0]),
    )
    return job


async def _lock_row(blocker: asyncpg.Connection, job: Job) -> None:
    """Start the blocker's transaction by changing the job's row, which keeps it locked."""
    await blocker.execute("BEGIN")
    await blocker.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", job.id)


async def _until_someone_waits_for(admin: asyncpg.Connection, blocker: asyncpg.Connection) -> None:
    pid = blocker.get_server_pid()
    await eventually(
        lambda: admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        ),
        until=bool,
        timeout_seconds=10,
        interval_seconds=0.01,
    )


def _assert_no_driver_text(error: TransientError, *, sqlstate: str | None) -> None:
    """The error came from PostgreSQL's `sqlstate` (if given); its message says nothing of it."""
    message = str(error)
    assert message
    cause = error.__cause__
    if sqlstate is not None:
        assert isinstance(cause, asyncpg.PostgresError)
        assert cause.sqlstate == sqlstate
        assert str(cause) not in message
    for driver_word in ("SQLSTATE", "ERROR", "DETAIL", "jobs", "asyncpg", "statement_timeout"):
        assert driver_word not in message


async def test_postgres_out_of_connections_is_overload(
    isolated_database_url: str,
) -> None:
    dsn = asyncpg_dsn(isolated_database_url)
    held: list[asyncpg.Connection] = []
    try:
        refused = False
        while not refused:
            assert len(held) < 5000, "PostgreSQL never refused a connection"
            opened = await asyncio.gather(
                *(asyncpg.connect(dsn) for _ in range(20)), return_exceptions=True
            )
            for result in opened:
                if isinstance(result, asyncpg.Connection):
                    held.append(result)
                elif isinstance(result, asyncpg.TooManyConnectionsError):
                    refused = True
                else:
                    raise result
        store = await JobStore.connect(isolated_database_url, pool_size=1)
        try:
            with pytest.raises(StoreOverloadedError) as raised:
                await store.get(new_job_id(), tenant=None)
        finally:
            await store.close()
    finally:
        await asyncio.gather(*(connection.close() for connection in held))

    _assert_no_driver_text(raised.value, sqlstate="53300")


async def test_a_pool_with_no_free_connection_is_overload(
    isolated_database_url: str, admin: asyncpg.Connection, blocker: asyncpg.Connection
) -> None:
    store = await JobStore.connect(
        isolated_database_url, pool_size=1, pool_wait=timedelta(milliseconds=200)
    )
    try:
        job = await _new_job(store)
        await _lock_row(blocker, job)
        # The pool's only connection waits for the row lock.
        cancelling = asyncio.create_task(store.cancel(job.id, by=TEST_OWNER))
        await _until_someone_waits_for(admin, blocker)

        with pytest.raises(StoreOverloadedError) as raised:
            await store.get(job.id, tenant=None)

        await blocker.execute("ROLLBACK")
        assert (await cancelling).status == JobStatus.CANCELLED
        assert (await store.get(job.id, tenant=None)).status == JobStatus.CANCELLED
    finally:
        await store.close()
    _assert_no_driver_text(raised.value, sqlstate=None)


async def test_the_store_as_a_deadlock_victim_is_a_conflict(
    store: JobStore, admin: asyncpg.Connection, blocker: asyncpg.Connection
) -> None:
    first, second = await asyncio.gather(_new_job(store), _new_job(store))
    claims = sorted(
        [claim for job in (first, second) if (claim := await store.claim(job.id, lease=LEASE))],
        key=lambda claim: claim.job_id,
    )
    assert len(claims) == 2
    low, high = claims
    # The blocker waits 10 s before it looks for a deadlock, the store's session the default
    # 1 s: the store's statement is the one PostgreSQL aborts.
    await blocker.execute("BEGIN")
    await blocker.execute("SET LOCAL deadlock_timeout = '10s'")
    await blocker.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", high.job_id)
    # The store's renewal locks the low row, then waits for the high one.
    renewing = asyncio.create_task(store.renew([low, high], lease=LEASE))
    await _until_someone_waits_for(admin, blocker)

    await blocker.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", low.job_id)

    with pytest.raises(StoreConflictError) as raised:
        await asyncio.wait_for(renewing, timeout=10)
    _assert_no_driver_text(raised.value, sqlstate="40P01")
    await blocker.execute("ROLLBACK")
    assert await store.renew(claims, lease=LEASE) == {
        (low.job_id, low.attempt),
        (high.job_id, high.attempt),
    }


async def test_a_serialization_failure_is_a_conflict(
    store: JobStore,
    isolated_database_url: str,
    admin: asyncpg.Connection,
    blocker: asyncpg.Connection,
) -> None:
    repeatable = await JobStore.connect(
        _with_settings(isolated_database_url, default_transaction_isolation="repeatable read"),
        pool_size=1,
    )
    try:
        job = await _new_job(store)
        await _lock_row(blocker, job)
        cancelling = asyncio.create_task(repeatable.cancel(job.id, by=TEST_OWNER))
        await _until_someone_waits_for(admin, blocker)

        # Committed after the cancel's snapshot was taken: repeatable read cannot go on.
        await blocker.execute("COMMIT")

        with pytest.raises(StoreConflictError) as raised:
            await asyncio.wait_for(cancelling, timeout=10)
        # Retried, the change goes through.
        assert (await repeatable.cancel(job.id, by=TEST_OWNER)).status == JobStatus.CANCELLED
    finally:
        await repeatable.close()
    _assert_no_driver_text(raised.value, sqlstate="40001")


async def test_a_statement_past_statement_timeout_is_a_timeout(
    store: JobStore, isolated_database_url: str, blocker: asyncpg.Connection
) -> None:
    impatient = await JobStore.connect(
        _with_settings(isolated_database_url, statement_timeout="200"), pool_size=1
    )
    try:
        job = await _new_job(store)
        await _lock_row(blocker, job)

        with pytest.raises(StoreTimeoutError) as raised:
            await impatient.cancel(job.id, by=TEST_OWNER)

        await blocker.execute("ROLLBACK")
        assert (await impatient.cancel(job.id, by=TEST_OWNER)).status == JobStatus.CANCELLED
    finally:
        await impatient.close()
    _assert_no_driver_text(raised.value, sqlstate="57014")
