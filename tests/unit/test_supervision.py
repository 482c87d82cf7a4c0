"""Supervision without I/O: backoff, one log line per episode, and the crash path of a failed task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobcore import supervision
from jobcore.errors import StoreConflictError, StoreUnavailableError
from jobcore.settings import Settings
from jobcore.supervision import (
    Backoff,
    Supervisor,
    TaskFailure,
    enable_fault_injection,
    inject_fault,
    run_periodically,
)


class _Stop(Exception):
    """Raised by the fake sleep to end a loop after the steps a test is about."""


class _FakeSleep:
    """Records each delay instead of waiting; stops the loop after `limit` sleeps."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self.limit:
            raise _Stop


def _steps(*outcomes: BaseException | None) -> tuple[list[int], object]:
    """A step that raises (or not) as listed, one outcome per call, then succeeds."""
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        if len(calls) <= len(outcomes):
            outcome = outcomes[len(calls) - 1]
            if outcome is not None:
                raise outcome

    return calls, step


def test_backoff_doubles_up_to_its_cap_with_jitter_within_each_step() -> None:
    lowest = Backoff(first_seconds=0.2, cap_seconds=1.0, random_fraction=lambda: 0.0)
    highest = Backoff(first_seconds=0.2, cap_seconds=1.0, random_fraction=lambda: 1.0)

    assert [round(lowest.next_delay(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(highest.next_delay(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    highest.reset()
    assert highest.next_delay() == pytest.approx(0.2)


async def test_transient_errors_are_retried_with_backoff_and_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls, step = _steps(
        StoreUnavailableError("down"),
        StoreUnavailableError("down"),
        StoreConflictError("deadlock"),
        None,
        StoreUnavailableError("down again"),
        None,
    )
    sleep = _FakeSleep(limit=6)
    caplog.set_level(logging.INFO, logger="jobcore.supervision")

    with pytest.raises(_Stop):
        await run_periodically(
            "maintenance",
            step,  # type: ignore[arg-type]
            interval=timedelta(seconds=2),
            backoff=Backoff(first_seconds=0.2, cap_seconds=2, random_fraction=lambda: 1.0),
            sleep=sleep,
        )

    assert len(calls) == 6
    # Three quick retries growing, the interval, a retry starting over from the first delay.
    assert sleep.delays == pytest.approx([0.2, 0.4, 0.8, 2.0, 0.2, 2.0])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
    assert "StoreUnavailableError: down" in lines[0][1]
    assert "recovered after 3 failed tries" in lines[1][1]
    assert "down again" in lines[2][1]
    assert "recovered after 1 failed tries" in lines[3][1]


async def test_the_default_backoff_never_waits_longer_than_the_interval() -> None:
    _, step = _steps(*(StoreUnavailableError("down") for _ in range(10)))
    sleep = _FakeSleep(limit=10)

    with pytest.raises(_Stop):
        await run_periodically(
            "lease-keeper",
            step,  # type: ignore[arg-type]
            interval=timedelta(seconds=1),
            sleep=sleep,
        )

    assert max(sleep.delays) <= 1.0
    assert sleep.delays[0] <= 0.2


async def test_an_unexpected_error_is_not_retried() -> None:
    calls, step = _steps(KeyError("bug"))
    sleep = _FakeSleep(limit=100)

    with pytest.raises(KeyError):
        await run_periodically(
            "maintenance",
            step,  # type: ignore[arg-type]
            interval=timedelta(seconds=1),
            sleep=sleep,
        )

    assert len(calls) == 1
    assert sleep.delays == []


async def test_a_failed_task_is_logged_with_its_traceback_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: list[TaskFailure] = []
    supervisor = Supervisor(on_failure=reported.append)
    quiet = asyncio.Event()

    async def broken() -> None:
        raise ValueError("a bug")

    supervisor.start("quiet", quiet.wait())
    supervisor.start("broken", broken())

    failure = await asyncio.wait_for(supervisor.wait_for_failure(), timeout=5)

    assert failure.name == "broken"
    assert isinstance(failure.error, ValueError)
    assert reported == [failure]
    assert supervisor.is_running("quiet")
    assert not supervisor.is_running("broken")
    record = next(r for r in caplog.records if r.levelno == logging.CRITICAL)
    assert "broken" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[1] is failure.error
    await supervisor.stop()
    assert not supervisor.is_running("quiet")


async def test_a_task_that_returns_is_a_failure_too() -> None:
    supervisor = Supervisor()

    async def returns() -> None:
        return

    supervisor.start("returns", returns())

    failure = await asyncio.wait_for(supervisor.wait_for_failure(), timeout=5)

    assert failure == TaskFailure("returns", None)


async def test_stopping_cancels_tasks_without_calling_it_a_failure_and_logs_errors_while_stopping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: list[TaskFailure] = []
    supervisor = Supervisor(on_failure=reported.append)

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("cleanup failed")

    supervisor.start("idle", asyncio.Event().wait())
    supervisor.start("messy", fails_when_cancelled())
    await asyncio.sleep(0)

    await supervisor.stop()

    assert reported == []
    assert supervisor.failure is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "messy" in errors[0].getMessage()


def test_a_task_name_is_supervised_once() -> None:
    async def main() -> None:
        supervisor = Supervisor()
        supervisor.start("one", asyncio.Event().wait())
        with pytest.raises(ValueError, match="already supervised"):
            supervisor.start("one", asyncio.Event().wait())
        await supervisor.stop()

    asyncio.run(main())


@pytest.fixture
def fault_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(supervision.FAULT_DIR_ENV, str(tmp_path))
    yield tmp_path
    monkeypatch.delenv(supervision.FAULT_DIR_ENV)
    enable_fault_injection(Settings(environment="test"), process="server")


def test_a_fault_file_fails_its_task_once(fault_dir: Path) -> None:
    enable_fault_injection(Settings(environment="test"), process="server")
    (fault_dir / "server").mkdir()
    (fault_dir / "server" / "dispatcher").touch()

    inject_fault("maintenance")  # another task's file: nothing happens
    with pytest.raises(RuntimeError, match="injected fault"):
        inject_fault("dispatcher")
    inject_fault("dispatcher")  # the file was consumed

    assert not (fault_dir / "server" / "dispatcher").exists()


async def test_an_injected_fault_is_an_unexpected_error_for_a_periodic_task(
    fault_dir: Path,
) -> None:
    enable_fault_injection(Settings(environment="test"), process="worker")
    (fault_dir / "worker").mkdir()
    (fault_dir / "worker" / "lease-keeper").touch()
    calls, step = _steps()

    with pytest.raises(RuntimeError, match="injected fault"):
        await run_periodically(
            "lease-keeper",
            step,  # type: ignore[arg-type]
            interval=timedelta(seconds=1),
            sleep=_FakeSleep(limit=100),
        )

    assert calls == []


def test_the_fault_hook_is_refused_in_production(fault_dir: Path) -> None:
    production = Settings(
        environment="production",
        database_url="postgresql+asyncpg://jobs:secret@db/jobs",
        flower_basic_auth="admin:a-real-secret",
        page_token_secret="a-real-secret",
    )

    with pytest.raises(RuntimeError, match="must not be set in production"):
        enable_fault_injection(production, process="server")
