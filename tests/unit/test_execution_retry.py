"""worker.execution's retry of store calls through transient failures, with no I/O."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from jobcore.errors import StoreConflictError, StoreUnavailableError
from worker.execution import _retry_transient


async def test_a_transient_failure_is_retried_until_the_call_succeeds() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise StoreConflictError("deadlock")
        return "claimed"

    result = await _retry_transient("claim", flaky, give_up_after=timedelta(seconds=30))

    assert (result, calls) == ("claimed", 3)


async def test_retrying_gives_up_with_the_error_once_the_limit_would_pass() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        # Bounded by the test itself: a retry that ignored its limit would run on forever.
        await asyncio.wait_for(
            _retry_transient("finish", down, give_up_after=timedelta(seconds=0.5)), timeout=10
        )

    assert calls >= 2


async def test_an_unexpected_error_is_not_retried() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await _retry_transient("claim", broken, give_up_after=timedelta(seconds=30))

    assert calls == 1
