"""The LISTEN loop without a database: connection failures of every kind are survived, a bug is not
hidden, and stopping never raises (issue 11, defect 2)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from jobcore import events
from jobcore.events import LISTENER_TASK, JobEventHub
from jobcore.supervision import Supervisor
from tests.eventually import eventually


class _Connection:
    """What the hub uses of an asyncpg connection; each method can be told to fail."""

    def __init__(
        self,
        *,
        add_listener_error: BaseException | None = None,
        probe_error: BaseException | None = None,
        close_error: BaseException | None = None,
    ) -> None:
        self.add_listener_error = add_listener_error
        self.probe_error = probe_error
        self.close_error = close_error
        self.closed = False
        self.terminated = False
        self.listening = False

    def add_termination_listener(self, _callback: Callable[[Any], None]) -> None:
        pass

    async def add_listener(self, _channel: str, _callback: Callable[..., None]) -> None:
        if self.add_listener_error is not None:
            raise self.add_listener_error
        self.listening = True

    async def execute(self, _query: str, *, timeout: float) -> str:  # noqa: ASYNC109 - asyncpg's signature
        if self.probe_error is not None:
            raise self.probe_error
        return "SELECT 1"

    def is_closed(self) -> bool:
        return self.closed or self.terminated

    async def close(self, *, timeout: float) -> None:  # noqa: ASYNC109 - asyncpg's signature
        if self.close_error is not None:
            raise self.close_error
        self.closed = True

    def terminate(self) -> None:
        self.terminated = True


class _Server:
    """Hands out the listed outcomes of asyncpg.connect in turn, then healthy connections."""

    def __init__(self, *outcomes: _Connection | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.connections: list[_Connection] = []

    async def connect(self, _dsn: str, *, timeout: float, **_options: Any) -> _Connection:  # noqa: ASYNC109 - asyncpg's signature
        outcome = self.outcomes.pop(0) if self.outcomes else _Connection()
        if isinstance(outcome, BaseException):
            raise outcome
        self.connections.append(outcome)
        return outcome


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Callable[..., _Server]:
    def install(*outcomes: _Connection | BaseException) -> _Server:
        fake = _Server(*outcomes)
        monkeypatch.setattr(asyncpg, "connect", fake.connect)
        # Probe a quiet connection often, so a silent loss shows up within the test.
        monkeypatch.setattr(events, "_PROBE_INTERVAL_SECONDS", 0.05, raising=False)
        return fake

    return install


async def _connected(hub: JobEventHub) -> bool:
    return hub.connected


async def test_a_failure_of_add_listener_is_retried(server: Callable[..., _Server]) -> None:
    fake = server(
        _Connection(add_listener_error=asyncpg.ConnectionDoesNotExistError("connection was closed"))
    )
    hub = JobEventHub("postgresql://nobody@localhost/none")

    await hub.start(timeout_seconds=5)
    try:
        await eventually(lambda: _connected(hub), until=bool, timeout_seconds=10)
    finally:
        await hub.stop()

    assert len(fake.connections) == 2
    assert fake.connections[0].is_closed()


async def test_close_failing_after_a_silent_network_loss_is_survived(
    server: Callable[..., _Server],
) -> None:
    fake = server(_Connection(probe_error=TimeoutError(), close_error=TimeoutError()))
    hub = JobEventHub("postgresql://nobody@localhost/none")

    await hub.start(timeout_seconds=5)
    try:
        # The first connection goes quiet and cannot be closed; the hub drops it and reconnects.
        await eventually(
            lambda: asyncio.sleep(0, result=len(fake.connections)),
            until=lambda count: count >= 2,
            timeout_seconds=10,
        )
        await eventually(lambda: _connected(hub), until=bool, timeout_seconds=10)
    finally:
        await hub.stop()

    assert fake.connections[0].terminated


async def test_an_interface_error_while_connecting_is_retried(
    server: Callable[..., _Server],
) -> None:
    server(asyncpg.InterfaceError("the server closed the connection during the handshake"))
    hub = JobEventHub("postgresql://nobody@localhost/none")

    await hub.start(timeout_seconds=5)
    try:
        await eventually(lambda: _connected(hub), until=bool, timeout_seconds=10)
    finally:
        await hub.stop()


async def test_a_connection_outage_is_logged_once_and_its_end_once(
    server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    server(*(OSError("connection refused") for _ in range(3)))
    caplog.set_level(logging.INFO)
    hub = JobEventHub("postgresql://nobody@localhost/none")

    await hub.start(timeout_seconds=5)
    try:
        await eventually(lambda: _connected(hub), until=bool, timeout_seconds=10)
    finally:
        await hub.stop()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "connection refused" in warnings[0].getMessage()
    assert any("recovered after 3 failed tries" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_error_ends_the_listener_and_reaches_its_supervisor(
    server: Callable[..., _Server],
) -> None:
    server(_Connection(add_listener_error=ZeroDivisionError("a bug")))
    supervisor = Supervisor()
    hub = JobEventHub("postgresql://nobody@localhost/none")

    await hub.start(timeout_seconds=0.1, supervisor=supervisor)
    failure = await asyncio.wait_for(supervisor.wait_for_failure(), timeout=10)

    assert failure.name == LISTENER_TASK
    assert isinstance(failure.error, ZeroDivisionError)
    assert not hub.connected
    await hub.stop()  # the drain goes on: stopping does not raise the listener's error
    await supervisor.stop()


async def test_stopping_after_the_listener_died_does_not_raise(
    server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    server(_Connection(add_listener_error=ZeroDivisionError("a bug")))
    hub = JobEventHub("postgresql://nobody@localhost/none")
    await hub.start(timeout_seconds=0.1)
    await eventually(lambda: asyncio.sleep(0, result=_dead(hub)), until=bool, timeout_seconds=10)

    await hub.stop()

    assert any(
        r.levelno == logging.ERROR and isinstance(r.exc_info and r.exc_info[1], ZeroDivisionError)
        for r in caplog.records
    )


def _dead(hub: JobEventHub) -> bool:
    task = hub._task
    return task is not None and task.done()
