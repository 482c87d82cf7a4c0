"""The per-credential rate limiter against the stack's real Redis (as the application's ACL user):
counts shared by every limiter on the same Redis, exact under concurrency, and calls let through
when Redis cannot count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from jobcore.errors import RateLimitedError
from jobcore.identity import Principal, Scope
from jobcore.rate_limits import PAUSE_SECONDS, RedisRateLimiter, parse_rate
from tests.eventually import eventually

SUPERVISION_LOGGER = "jobcore.supervision"


def _caller(tenant: str = "default") -> Principal:
    """A credential no other test (or earlier run on the same Redis) has counted."""
    return Principal(tenant, frozenset({Scope.JOBS_WRITE}), f"key:jobs_{uuid.uuid4().hex[:8]}")


@contextlib.asynccontextmanager
async def _limiter(rate: str, redis_url: str, **options: Any) -> AsyncIterator[RedisRateLimiter]:
    limiter = RedisRateLimiter(parse_rate(rate), redis_url=redis_url, **options)
    try:
        yield limiter
    finally:
        await limiter.close()


async def _admitted(limiter: RedisRateLimiter, principal: Principal, calls: int) -> int:
    """How many of `calls` concurrent calls the limiter lets through."""
    outcomes = await asyncio.gather(
        *(limiter.hit(principal) for _ in range(calls)), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, RateLimitedError):
            raise outcome
    return sum(outcome is None for outcome in outcomes)


async def test_calls_over_the_rate_are_refused_with_when_to_retry(stack: Stack) -> None:
    principal = _caller()
    async with _limiter("5/minute", stack.redis_url) as limiter:
        for _ in range(5):
            await limiter.hit(principal)
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit(principal)
    assert refused.value.limit == "5 per 1 minute"
    # All five in the window that began with the first: one more once that window has turned
    # (the margin below a minute is for a loaded host's scheduling between the calls).
    assert 50 < refused.value.retry_after_seconds <= 60.001


async def test_a_caller_that_waits_as_told_is_admitted(stack: Stack) -> None:
    principal = _caller()
    async with _limiter("4/second", stack.redis_url) as limiter:
        assert await _admitted(limiter, principal, 4) == 4
        await asyncio.sleep(0.6)  # into the window: it will turn, and its calls fade, meanwhile
        for _ in range(3):
            # Calls until one is refused (a stalled host may find room already), then the wait
            # it was told, after which a call must be admitted.
            refused = await _first_refusal(limiter, principal, calls=10)
            await asyncio.sleep(refused.retry_after_seconds)
            await limiter.hit(principal)


async def _first_refusal(
    limiter: RedisRateLimiter, principal: Principal, *, calls: int
) -> RateLimitedError:
    for _ in range(calls):
        try:
            await limiter.hit(principal)
        except RateLimitedError as refused:
            return refused
    raise AssertionError(f"none of {calls} calls in a row was refused")


async def test_a_refused_caller_is_admitted_again_once_the_window_slides(stack: Stack) -> None:
    principal = _caller()
    async with _limiter("3/second", stack.redis_url) as limiter:
        assert await _admitted(limiter, principal, 3) == 3
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit(principal)
        started = time.monotonic()

        async def admitted() -> bool:
            try:
                await limiter.hit(principal)
            except RateLimitedError:
                return False
            return True

        await eventually(admitted, until=bool, timeout_seconds=10)
    # Refused calls are not counted, so polling does not push the moment back: admitted again
    # about when the refusal said (the margin is for a loaded host's scheduling).
    assert time.monotonic() - started <= refused.value.retry_after_seconds + 3.0


async def test_every_limiter_on_the_same_redis_shares_the_count(stack: Stack) -> None:
    """Two limiters stand for two server processes or replicas: a credential has one budget."""
    principal = _caller()
    async with (
        _limiter("10/minute", stack.redis_url) as first,
        _limiter("10/minute", stack.redis_url) as second,
    ):
        admitted = await asyncio.gather(
            _admitted(first, principal, 25), _admitted(second, principal, 25)
        )
    assert sum(admitted) == 10


async def test_concurrent_calls_of_one_credential_are_counted_exactly(stack: Stack) -> None:
    """Calls counted together (one round trip for many) admit exactly the limit, no more."""
    principal = _caller()
    async with _limiter("50/minute", stack.redis_url) as limiter:
        assert await _admitted(limiter, principal, 300) == 50
        assert await _admitted(limiter, principal, 10) == 0


async def test_each_credential_has_its_own_count(stack: Stack) -> None:
    first = _caller("acme")
    same_actor_other_tenant = Principal("globex", first.scopes, first.actor)
    other_actor_same_tenant = _caller("acme")
    async with _limiter("2/minute", stack.redis_url) as limiter:
        admitted = await asyncio.gather(
            _admitted(limiter, first, 5),
            _admitted(limiter, same_actor_other_tenant, 5),
            _admitted(limiter, other_actor_same_tenant, 5),
        )
    assert list(admitted) == [2, 2, 2]


class _Proxy:
    """A TCP relay to Redis that a test can cut (refusing and dropping connections) and restore."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update((writer, upstream_writer))


def _via(redis_url: str, port: int) -> str:
    """`redis_url` with its port replaced (same user, password and database)."""
    parts = urlsplit(redis_url)
    credentials, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == SUPERVISION_LOGGER and record.levelno == logging.WARNING
    ]


async def test_calls_pass_uncounted_while_redis_is_down_with_one_warning(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SUPERVISION_LOGGER)
    proxy = _Proxy(urlsplit(stack.redis_url).port or 6379)
    await proxy.start()
    principal = _caller()
    clock = _Clock()
    async with _limiter("5/minute", _via(stack.redis_url, proxy.port), clock=clock) as limiter:
        assert await _admitted(limiter, principal, 10) == 5

        await proxy.cut()
        for _ in range(3):
            assert await _admitted(limiter, principal, 20) == 20
            # Past the pause: the next round asks Redis again, and finds it still away.
            clock.now += PAUSE_SECONDS
        warnings = _warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "calls pass uncounted until it answers again" in warnings[0]

        await proxy.start()
        # Counting resumes, and the 5 calls counted before the outage still stand.
        assert await _admitted(limiter, principal, 1) == 0
    assert any("recovered" in record.getMessage() for record in caplog.records)
    await proxy.cut()


async def test_a_silent_redis_delays_calls_once_by_the_timeout_not_every_call(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts connections and never answers (a hung host, a partition)."""
    caplog.set_level(logging.WARNING, logger=SUPERVISION_LOGGER)
    held: list[asyncio.StreamWriter] = []
    received = bytearray()  # everything every connection sent it

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while data := await reader.read(65536):
            received.extend(data)

    port = free_port()
    server = await asyncio.start_server(never_answer, "127.0.0.1", port)
    try:
        async with _limiter(
            "1/minute", _via(stack.redis_url, port), timeout_seconds=0.2, pause_seconds=60
        ) as limiter:
            principal = _caller()
            started = time.monotonic()
            assert await _admitted(limiter, principal, 10) == 10
            first_round = time.monotonic() - started
            asked = (len(held), len(received))
            assert await _admitted(limiter, principal, 1000) == 1000
            # During the pause no call asks Redis (no connection, not a byte), so none can
            # wait for its timeout again.
            assert (len(held), len(received)) == asked
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()
    assert asked[1] > 0  # the first round did ask
    assert first_round < 1.0
    assert len(_warnings(caplog)) == 1
    assert "no answer within 0.2 s" in _warnings(caplog)[0]
