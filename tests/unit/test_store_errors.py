"""Which database errors mean "PostgreSQL is unavailable" (UNAVAILABLE, retry) and which are bugs."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from jobcore.store import is_unavailable_error


def test_network_and_restart_errors_are_unavailable() -> None:
    assert is_unavailable_error(ConnectionRefusedError())
    assert is_unavailable_error(TimeoutError())
    assert is_unavailable_error(OperationalError("SELECT 1", {}, Exception("gone")))
    # Raised by asyncpg itself while the pool reconnects during a restart (SQLSTATE 57P03).
    assert is_unavailable_error(
        asyncpg.CannotConnectNowError("the database system is shutting down")
    )
    assert is_unavailable_error(asyncpg.AdminShutdownError("terminating connection"))
    wrapped = DBAPIError("SELECT 1", {}, asyncpg.AdminShutdownError("terminating connection"))
    assert is_unavailable_error(wrapped)


def test_data_errors_are_not_unavailable() -> None:
    assert not is_unavailable_error(ValueError("bad"))
    unique = asyncpg.UniqueViolationError("duplicate key")
    assert not is_unavailable_error(unique)
    assert not is_unavailable_error(IntegrityError("INSERT", {}, unique))
