"""Which database errors are transient (and as which domain error) and which are bugs."""

from __future__ import annotations

import asyncpg
import pytest

from jobcore.database import translate_driver_error
from jobcore.errors import (
    StoreConflictError,
    StoreOverloadedError,
    StoreTimeoutError,
    StoreUnavailableError,
    TransientError,
)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        # A connect that timed out.
        TimeoutError(),
        # Raised while PostgreSQL restarts (SQLSTATE 57P03, 57P01, 57P02) or the connection
        # drops (08006).
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.AdminShutdownError("terminating connection"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another"),
        asyncpg.ConnectionFailureError("connection failure"),
        # The pool's connection was closed under a call in progress.
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.InterfaceError("pool is closing"),
        # What asyncpg's protocol raises when the server dropped the connection under a call.
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
    ],
)
def test_network_and_restart_errors_are_unavailable(error: BaseException) -> None:
    assert isinstance(translate_driver_error(error), StoreUnavailableError)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.OutOfMemoryError("out of memory"),
        asyncpg.DiskFullError("could not extend file"),
        asyncpg.InsufficientResourcesError("insufficient resources"),
    ],
)
def test_insufficient_resources_are_overload(error: BaseException) -> None:
    assert isinstance(translate_driver_error(error), StoreOverloadedError)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access due to concurrent update"),
    ],
)
def test_deadlocks_and_serialization_failures_are_conflicts(error: BaseException) -> None:
    assert isinstance(translate_driver_error(error), StoreConflictError)


def test_statement_timeout_is_a_timeout() -> None:
    error = asyncpg.QueryCanceledError("canceling statement due to statement timeout")

    assert isinstance(translate_driver_error(error), StoreTimeoutError)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.DeadlockDetectedError('deadlock detected DETAIL: ... UPDATE "jobs" SET ...'),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.ConnectionFailureError("connection to 127.0.0.1:5432 failed"),
    ],
)
def test_translated_messages_carry_no_driver_text(error: BaseException) -> None:
    translated = translate_driver_error(error)

    assert isinstance(translated, TransientError)
    assert str(error) not in str(translated)
    for driver_word in ("SQLSTATE", "DETAIL", "jobs", "127.0.0.1", "asyncpg"):
        assert driver_word not in str(translated)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.DataError("invalid input"),
        asyncpg.UndefinedTableError('relation "jobs" does not exist'),
        # Other rollbacks and operator interventions than the ones named above.
        asyncpg.TransactionRollbackError("rolled back"),
        asyncpg.DatabaseDroppedError("database dropped"),
    ],
)
def test_other_errors_are_not_translated(error: BaseException) -> None:
    assert translate_driver_error(error) is None
