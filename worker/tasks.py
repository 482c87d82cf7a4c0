"""Celery tasks: thin and idempotent; the work itself is in worker.execution."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis.exceptions
from kombu.exceptions import KombuError

from jobcore.celery_app import PROCESS_JOBS_TASK, Wakeup
from jobcore.wakeup_publisher import message_priority, wakeup_argsrepr
from worker.app import app, settings
from worker.execution import start_jobs
from worker.runtime import get_runtime

logger = logging.getLogger(__name__)


def _wakeups(messages: list[Any]) -> list[Wakeup]:
    """The well-formed entries of a message; a bad entry is logged, not retried forever."""
    wakeups = []
    for message in messages:
        try:
            wakeups.append(Wakeup.from_message(message))
        except (TypeError, ValueError, KeyError, AttributeError):
            logger.error("ignoring a malformed wake-up: %.200r", message)
    return wakeups


def _hand_back(wakeups: Sequence[Wakeup]) -> bool:
    """Queue these wake-ups again, in a message of their own at their priority; False if the
    broker would not take it (the error is logged)."""
    try:
        app.send_task(
            PROCESS_JOBS_TASK,
            args=[[wakeup.to_message() for wakeup in wakeups]],
            priority=message_priority(wakeups),
            argsrepr=wakeup_argsrepr(wakeups),
            ignore_result=True,
        )
    except (KombuError, redis.exceptions.RedisError, OSError) as error:
        logger.warning(
            "could not hand %d wake-ups back to the broker (%s); starting them here",
            len(wakeups),
            error,
        )
        return False
    return True


@app.task(name=PROCESS_JOBS_TASK)  # type: ignore[untyped-decorator]
def process_jobs(messages: list[Any]) -> None:
    """Claim these jobs and start them; return (so the message is acked) once each is claimed.

    From its claim on, a job is guarded by its lease in PostgreSQL, not by this message.
    Safe to deliver more than once: a job that is not PENDING is skipped.

    A message waits here for at most as many slots as the process has: the jobs beyond
    those go back to the broker as a new message (before this one is acked, so the broker
    holds every job not yet claimed). Messages get slots in the order they came, so the
    oldest one held is fully started within about one job's run whatever WORKER_CONCURRENCY
    is, and its thread may then take a more urgent message: the fair-dispatch bound
    (server.dispatcher) rests on this.
    """
    runtime = get_runtime(settings)
    wakeups = _wakeups(messages)
    slots = runtime.services.capacity.size
    if len(wakeups) > slots and _hand_back(wakeups[slots:]):
        wakeups = wakeups[:slots]
    runtime.run(
        start_jobs(
            runtime.services,
            wakeups,
            delay=timedelta(seconds=settings.simulated_delay_seconds),
            deadline=timedelta(seconds=settings.job_timeout_seconds),
        )
    )
