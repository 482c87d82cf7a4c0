"""Wait for a condition by polling with a deadline, never with fixed sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool],
    timeout_seconds: float = 30,
    interval_seconds: float = 0.05,
) -> T:
    """Call `probe` until `until(result)` holds and return that result; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        result = await probe()
        if until(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds} s; last: {result!r}")
        await asyncio.sleep(interval_seconds)
