"""Supervised background work: a process does all of its work or ends, loudly, to be restarted.

Every long-lived task of the server and the worker is started by a `Supervisor`
(as procrastinate's worker starts and monitors its side tasks). A `TransientError`
inside a task is expected: `run_periodically` retries it with capped exponential
backoff and jitter and logs one warning when the trouble starts and one info line
when it passes. Anything else is a bug or a state nobody planned for: the task
ends, the supervisor logs the traceback and reports the failure, and the process
exits non-zero so that its own supervisor (devstack, Compose, Kubernetes) starts a
fresh one. PostgreSQL is the source of truth, so nothing is lost by that restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from jobcore.errors import TransientError
from jobcore.settings import Settings

logger = logging.getLogger(__name__)

# The exit status of a process that ended because one of its background tasks failed.
FAILED_TASK_EXIT_STATUS = 1

# Tests only: a directory where a file named after a task makes that task fail once.
FAULT_DIR_ENV = "JOBS_FAULT_DIR"

Sleep = Callable[[float], Awaitable[object]]


class Backoff:
    """Capped exponential delays with jitter: first, 2 x first, ... up to the cap, each randomised.

    Each delay is drawn between half and all of its step ("equal jitter"): never near zero,
    so a long outage is not hammered, and spread, so processes that failed together do not
    retry together.
    """

    def __init__(
        self,
        *,
        first_seconds: float,
        cap_seconds: float,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._first = first_seconds
        self._cap = max(cap_seconds, first_seconds)
        self._random = random_fraction
        self._step = first_seconds

    def next_delay(self) -> float:
        """The delay before the next try; each call doubles the step, up to the cap."""
        step = self._step
        self._step = min(step * 2, self._cap)
        return step / 2 + step / 2 * self._random()

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self._step = self._first


class TransientEpisode:
    """Logs a run of transient failures once: a warning when it starts, an info when it ends."""

    def __init__(
        self, what: str, *, meanwhile: str = "retrying with backoff until it passes"
    ) -> None:
        self.what = what
        self.meanwhile = meanwhile
        self.failures = 0

    def failed(self, error: BaseException) -> None:
        """Count a failure; only the first of an episode is logged."""
        self.failures += 1
        if self.failures == 1:
            logger.warning("%s: %s: %s; %s", self.what, type(error).__name__, error, self.meanwhile)

    def recovered(self) -> bool:
        """End the episode, if one is running; True (and one info line) if one was."""
        if not self.failures:
            return False
        logger.info("%s: recovered after %d failed tries", self.what, self.failures)
        self.failures = 0
        return True


async def run_periodically(
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    interval: timedelta,
    backoff: Backoff | None = None,
    sleep: Sleep = asyncio.sleep,
) -> NoReturn:
    """Run `step` every `interval` forever; retry a TransientError with backoff; raise anything else.

    A failing step is tried again sooner than the interval at first, and never later than it
    (the default backoff's cap): a lease renewal or a recovery sweep must not wait longer
    after an outage than it would have without one.
    """
    seconds = interval.total_seconds()
    retry = backoff or Backoff(first_seconds=min(seconds, 0.2), cap_seconds=seconds)
    episode = TransientEpisode(name)
    while True:
        inject_fault(name)
        try:
            await step()
        except TransientError as error:
            episode.failed(error)
            await sleep(retry.next_delay())
            continue
        episode.recovered()
        retry.reset()
        await sleep(seconds)


@dataclass(frozen=True)
class TaskFailure:
    """A supervised task that ended on its own: with `error`, or (error None) by returning."""

    name: str
    error: BaseException | None


class Supervisor:
    """Starts a process's long-lived tasks and watches them; the first that ends fails the process.

    A task that raises, or returns (a long-lived task never should), is logged with its
    traceback at once and reported to `on_failure` and to `wait_for_failure()`. A task
    that is cancelled (at shutdown) is not a failure.
    """

    def __init__(self, *, on_failure: Callable[[TaskFailure], None] | None = None) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._on_failure = on_failure
        self._failed = asyncio.Event()
        self._stopping = False
        self.failure: TaskFailure | None = None

    def start(self, name: str, coroutine: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Run `coroutine` as the task `name` (unique in this supervisor) and watch it."""
        if name in self._tasks:
            coroutine.close()
            raise ValueError(f"a task named {name!r} is already supervised")
        task = asyncio.create_task(coroutine, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._ended)
        return task

    def is_running(self, name: str) -> bool:
        """Whether the task `name` was started and has not ended."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def wait_for_failure(self) -> TaskFailure:
        """Return the first failure, as soon as there is one."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def stop(self) -> None:
        """Cancel every task and wait for them; an error raised while stopping is logged, not lost."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            failed_before = self.failure is not None and self.failure.name == task.get_name()
            if not task.cancelled() and task.exception() is not None and not failed_before:
                logger.error(
                    "background task %s failed while stopping",
                    task.get_name(),
                    exc_info=task.exception(),
                )

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None:
            logger.critical("background task %s ended on its own", task.get_name())
        else:
            logger.critical("background task %s failed", task.get_name(), exc_info=error)
        if self.failure is not None:
            return  # the process is already ending for the first failure
        self.failure = TaskFailure(task.get_name(), error)
        self._failed.set()
        if self._on_failure is not None:
            self._on_failure(self.failure)


_fault_dir: Path | None = None


def enable_fault_injection(settings: Settings, *, process: str) -> None:
    """Honour JOBS_FAULT_DIR (a test hook) for this process; refuse to start with it in production.

    The process's tasks then look for `$JOBS_FAULT_DIR/<process>/<task name>`.
    """
    global _fault_dir  # noqa: PLW0603 - one switch per process, read by every supervised loop
    directory = os.environ.get(FAULT_DIR_ENV, "")
    if not directory:
        _fault_dir = None
        return
    if settings.environment == "production":
        raise RuntimeError(f"{FAULT_DIR_ENV} is a test hook; it must not be set in production")
    _fault_dir = Path(directory) / process
    logger.warning("fault injection enabled: files in %s make background tasks fail", _fault_dir)


def inject_fault(name: str) -> None:
    """Raise an unexpected error if a test asked this task to fail (once per file)."""
    if _fault_dir is None:
        return
    try:
        # Deleting is the claim: of several processes that see the file, one fails.
        (_fault_dir / name).unlink()
    except FileNotFoundError:
        return
    raise RuntimeError("injected fault")
