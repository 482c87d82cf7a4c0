"""The connection to PostgreSQL: the asyncpg pool, the bounded wait for one of its connections,
and the one place driver errors become the store's transient domain errors.

It runs whatever SQL it is given; which statements exist is jobcore.queries' and jobcore.store's
business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

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

# A network that fails by silence (packets dropped, no reset) must not hold a call forever.
# The kernel ends such a connection on both sides: TCP_USER_TIMEOUT when data sent goes
# unacknowledged that long, keepalive probes when the peer went quiet while we wait for its
# answer (an idle socket has nothing unacknowledged). So a statement on a black-holed
# connection fails within about KEEPALIVE_IDLE + KEEPALIVE_COUNT x KEEPALIVE_INTERVAL (11 s),
# and a new connection within _CONNECT_TIMEOUT_SECONDS; PostgreSQL is asked to do the same
# from its end, so a dead client's transaction (and its row locks) ends as soon.
TCP_KEEPALIVE_IDLE_SECONDS = 5
TCP_KEEPALIVE_INTERVAL_SECONDS = 2
TCP_KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_SECONDS = 10
# The last net, for a server that is reachable but does not answer (a statement stuck behind
# a lock): longer than any statement the store runs, so it only ends the stuck ones. asyncpg
# then asks PostgreSQL to cancel the statement, and the connection is dropped, not reused.
COMMAND_TIMEOUT_SECONDS = 60
# The rules as TCP-level socket options, for every connection that can fail silently (this
# module's, and the worker's to the broker: jobcore.celery_app), enabled by SO_KEEPALIVE.
TCP_SILENT_LOSS_OPTIONS = {
    socket.TCP_KEEPIDLE: TCP_KEEPALIVE_IDLE_SECONDS,
    socket.TCP_KEEPINTVL: TCP_KEEPALIVE_INTERVAL_SECONDS,
    socket.TCP_KEEPCNT: TCP_KEEPALIVE_COUNT,
    socket.TCP_USER_TIMEOUT: TCP_USER_TIMEOUT_SECONDS * 1000,
}
# PostgreSQL's names for the same socket rules on its end (an operator's own, given as
# parameters of DATABASE_URL, win).
_SERVER_SOCKET_SETTINGS = {
    "tcp_keepalives_idle": str(TCP_KEEPALIVE_IDLE_SECONDS),
    "tcp_keepalives_interval": str(TCP_KEEPALIVE_INTERVAL_SECONDS),
    "tcp_keepalives_count": str(TCP_KEEPALIVE_COUNT),
    "tcp_user_timeout": str(TCP_USER_TIMEOUT_SECONDS * 1000),
}


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


def bound_silent_loss(transport: object) -> None:
    """Give a TCP connection to PostgreSQL the keepalive and user-timeout rules above.

    A unix socket (or anything that is not TCP) is left alone: it cannot fail silently.
    """
    if not isinstance(transport, asyncio.BaseTransport):
        return
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in TCP_SILENT_LOSS_OPTIONS.items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def server_socket_settings(database_url: str) -> dict[str, str]:
    """asyncpg's `server_settings` that ask PostgreSQL to end a silently lost connection too;
    parameters given in `database_url` itself are left to it."""
    given = make_url(database_url).query
    return {name: value for name, value in _SERVER_SOCKET_SETTINGS.items() if name not in given}


class BoundedConnection(asyncpg.Connection):
    """A connection whose socket has the silent-loss rules (bound_silent_loss) from its start.

    asyncpg has no socket hook of its own; its connection is built from the open transport.
    """

    def __init__(self, protocol: Any, transport: object, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        bound_silent_loss(transport)


class _StatelessConnection(BoundedConnection):
    """A pool connection that needs no reset query when it is given back.

    The store only runs statements and transactions on its connections (no LISTEN, SET,
    cursors or advisory locks), so asyncpg's default reset would be a wasted round trip per
    call; asyncpg ends a transaction left open on release in any case.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(database_url: str, *, pool_size: int) -> asyncpg.Pool:
    """A pool of up to `pool_size` connections, opened as needed, that need no reset query.

    Connections broken by a database restart, or silently lost (see bound_silent_loss), fail
    their call (StoreUnavailableError, which callers retry) and are replaced by the pool.
    """
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=pool_size,
        timeout=_CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        server_settings=server_socket_settings(database_url),
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
        # Whether the last call that held a connection got PostgreSQL's answer (an error is
        # an answer too). A call that finds no free connection is told the store is overloaded
        # when it did, and unavailable when it did not: then the connections are held by calls
        # waiting on a network that went silent, and another replica may reach PostgreSQL.
        self._answering = True

    async def close(self) -> None:
        """Close the pool's connections (waiting briefly for calls in progress)."""
        await asyncio.wait_for(self._pool.close(), timeout=_CLOSE_TIMEOUT_SECONDS)

    @contextlib.asynccontextmanager
    async def _free_connection(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections for a call; if none frees up in time,
        StoreOverloadedError, or StoreUnavailableError while calls get no answer."""
        try:
            async with asyncio.timeout(self._pool_wait_seconds):
                await self._free_connections.acquire()
        except TimeoutError:
            logger.warning(
                "no pooled PostgreSQL connection became free within %s s%s",
                self._pool_wait_seconds,
                "" if self._answering else " (the last call got no answer)",
            )
            if not self._answering:
                raise StoreUnavailableError(_UNAVAILABLE_MESSAGE) from None
            raise StoreOverloadedError(_OVERLOADED_MESSAGE) from None
        try:
            yield
        except (StoreUnavailableError, TimeoutError, asyncio.CancelledError):
            self._answering = False
            raise
        except BaseException:
            self._answering = True
            raise
        else:
            self._answering = True
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
                    with _dropped_if_abandoned(connection):
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
                async with self._pool.acquire() as connection:
                    transaction = connection.transaction()
                    with _dropped_if_abandoned(connection):
                        await transaction.start()
                    try:
                        with _dropped_if_abandoned(connection):
                            yield Transaction(connection)
                    except BaseException:
                        # An abandoned connection is closed: PostgreSQL rolls back for it.
                        if not connection.is_closed():
                            await transaction.rollback()
                        raise
                    with _dropped_if_abandoned(connection):
                        await transaction.commit()
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


@contextlib.contextmanager
def _dropped_if_abandoned(
    connection: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
) -> Iterator[None]:
    """Close the connection at once if its call is cancelled or timed out mid-flight.

    Its state is then unknown (a statement may still run, an answer may be on its way), and
    over a silently lost network asyncpg's own cleanup (a cancel request on a new connection,
    a ROLLBACK) would wait on the same dead network. Closing it ends the caller's wait now;
    the pool opens a fresh connection for the next call, and PostgreSQL rolls back whatever
    was open on the closed one.
    """
    try:
        yield
    except (asyncio.CancelledError, TimeoutError):
        connection.terminate()
        raise


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
