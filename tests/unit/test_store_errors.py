"""Which database errors mean "PostgreSQL is unavailable" (UNAVAILABLE, retry) and which are bugs."""

from __future__ import annotations

import asyncpg

from jobcore.store import is_unavailable_error


def test_network_and_restart_errors_are_unavailable() -> None:
    assert is_unavailable_error(ConnectionRefusedError())
    assert is_unavailable_error(TimeoutError())
    # Raised while PostgreSQL restarts (SQLSTATE 57P03, 57P01) or the connection drops (08006).
    assert is_unavailable_error(
        asyncpg.CannotConnectNowError("the database system is shutting down")
    )
    assert is_unavailable_error(asyncpg.AdminShutdownError("terminating connection"))
    assert is_unavailable_error(asyncpg.ConnectionFailureError("connection failure"))
    # The pool's connection was closed under a call in progress.
    assert is_unavailable_error(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    # What asyncpg's protocol raises when the server dropped the connection under a call.
    assert is_unavailable_error(
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress")
    )


def test_data_errors_are_not_unavailable() -> None:
    assert not is_unavailable_error(ValueError("bad"))
    assert not is_unavailable_error(asyncpg.UniqueViolationError("duplicate key"))
    assert not is_unavailable_error(asyncpg.DataError("invalid input"))
