"""The connection to PostgreSQL: the asyncpg pool, the bounded wait for one of its connections,
and the one place driver errors become the store's transient domain errors.

It runs whatever SQL it is given; which statements exist is jobcore.queries' and jobcore.store's
business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import asyncpg.pool
from sqlalchemy.engine import make_url

from jobcore.errors import (
    StoreConflictError,
    StoreOverloadedError,
    StoreTimeoutError,
    StoreUnavailableError,
    TransientError,
)

logger = logging.getLogger(__name__)

# How long a call waits for a free pooled connection before the store counts as
# overloaded: long enough to ride out a burst, short enough that callers hear about a
# saturated pool (and can back off) instead of queueing without end.
DEFAULT_POOL_WAIT = timedelta(seconds=5)
# What callers are told; the driver's own text (which may quote SQL) only goes to the log.
_UNAVAILABLE_MESSAGE = "the job store (PostgreSQL) is unavailable"
_OVERLOADED_MESSAGE = "the job store (PostgreSQL) has no connection to spare"
CONFLICT_MESSAGE = "the job store (PostgreSQL) aborted the change in a conflict; retry it"
_TIMEOUT_MESSAGE = "the job store (PostgreSQL) did not finish the statement in time"
# SQLSTATEs of a server that went away: 57P01 admin_shutdown, 57P02 crash_shutdown,
# 57P03 cannot_connect_now (and the whole class 08, connection exception).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# 40001 serialization_failure, 40P01 deadlock_detected: the transaction was rolled back.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# 57014 query_canceled: statement_timeout (nothing in the store cancels otherwise).
_TIMEOUT_SQLSTATE = "57014"
_CONNECT_TIMEOUT_SECONDS = 10
_CLOSE_TIMEOUT_SECONDS = 10


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq URL asyncpg expects, from SQLAlchemy's `postgresql+asyncpg://` form."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def translate_driver_error(error: BaseException) -> TransientError | None:
    """The domain error a driver or network failure stands for; None for anything else (a bug).

    Every error returned is transient: the same call may succeed if retried later. Its
    message carries no driver text or SQL.
    """
    sqlstate = str(getattr(error, "sqlstate", "") or "")
    if sqlstate in _CONFLICT_SQLSTATES:
        return StoreConflictError(CONFLICT_MESSAGE)
    if sqlstate == _TIMEOUT_SQLSTATE:
        return StoreTimeoutError(_TIMEOUT_MESSAGE)
    if sqlstate.startswith("53"):  # insufficient resources: 53300 too_many_connections, ...
        return StoreOverloadedError(_OVERLOADED_MESSAGE)
    if (
        sqlstate.startswith("08")
        or sqlstate in _UNAVAILABLE_SQLSTATES
        # Refused or timed-out connects, connections that died under a call, and
        # asyncpg's protocol state when the server dropped a connection mid-call.
        or isinstance(
            error, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
        )
    ):
        return StoreUnavailableError(_UNAVAILABLE_MESSAGE)
    return None


class _StatelessConnection(asyncpg.Connection):
    """A pool connection that needs no reset query when it is given back.

    The store only runs statements and transactions on its connections (no LISTEN, SET,
    cursors or advisory locks), so asyncpg's default reset would be a wasted round trip per
    call; asyncpg ends a transaction left open on release in any case.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(database_url: str, *, pool_size: int) -> asyncpg.Pool:
    """A pool of up to `pool_size` connections, opened as needed, that need no reset query.

    Connections broken by a database restart fail their call (StoreUnavailableError, which
    callers retry) and are replaced by the pool.
    """
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=pool_size,
        timeout=_CONNECT_TIMEOUT_SECONDS,
        connection_class=_StatelessConnection,
    )


class Database:
    """Runs statements on a pool, each one implicit transaction and one round trip (or several
    in one explicit transaction).

    asyncpg prepares each SQL text once per connection and keeps it (its statement cache
    is keyed by the text), so callers pass the same text for the same statement.
    """

    def __init__(self, pool: asyncpg.Pool, *, pool_wait: timedelta = DEFAULT_POOL_WAIT) -> None:
        self._pool = pool
        # One permit per pooled connection, so a call knows that waiting for one timed out
        # (overloaded) apart from opening one timing out (unavailable). The store is the
        # pool's only user.
        self._free_connections = asyncio.Semaphore(pool.get_max_size())
        self._pool_wait_seconds = pool_wait.total_seconds()

    async def close(self) -> None:
        """Close the pool's connections (waiting briefly for calls in progress)."""
        await asyncio.wait_for(self._pool.close(), timeout=_CLOSE_TIMEOUT_SECONDS)

    @contextlib.asynccontextmanager
    async def _free_connection(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections for a call; StoreOverloadedError if none frees up in time."""
        try:
            async with asyncio.timeout(self._pool_wait_seconds):
                await self._free_connections.acquire()
        except TimeoutError:
            logger.warning(
                "no pooled PostgreSQL connection became free within %s s", self._pool_wait_seconds
            )
            raise StoreOverloadedError(_OVERLOADED_MESSAGE) from None
        try:
            yield
        finally:
            self._free_connections.release()

    async def fetch(self, sql: str, *arguments: object) -> list[asyncpg.Record]:
        """Run one statement; a TransientError if PostgreSQL failed in a way that passes.

        The one place driver errors are mapped (see translate_driver_error); anything
        else propagates unchanged.
        """
        async with self._free_connection():
            try:
                async with self._pool.acquire() as connection:
                    rows: list[asyncpg.Record] = await connection.fetch(sql, *arguments)
                    return rows
            except Exception as error:
                _raise_translated(error)
                raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One connection and one explicit transaction for several statements: all of them
        commit when the block ends, or none (an exception rolls back, and propagates).

        Driver errors, of the commit too, become TransientErrors as in `fetch`.
        """
        async with self._free_connection():
            try:
                async with self._pool.acquire() as connection, connection.transaction():
                    yield Transaction(connection)
            except Exception as error:
                _raise_translated(error)
                raise


class Transaction:
    """Statements run inside one transaction of Database.transaction, one round trip each."""

    def __init__(self, connection: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *arguments: object) -> list[asyncpg.Record]:
        """Run one statement of the transaction (errors as Database.fetch)."""
        try:
            rows: list[asyncpg.Record] = await self._connection.fetch(sql, *arguments)
        except Exception as error:
            _raise_translated(error)
            raise
        return rows


def _raise_translated(error: Exception) -> None:
    """Raise the TransientError a driver error stands for (logged here); return for any other."""
    translated = translate_driver_error(error)
    if translated is None:
        return
    logger.warning(
        "PostgreSQL call failed (%s): %s: %s",
        type(translated).__name__,
        type(error).__name__,
        error,
    )
    raise translated from error
