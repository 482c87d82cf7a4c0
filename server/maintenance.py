"""Background upkeep every server runs: recover jobs, re-publish lost messages, purge old jobs.

All of it is idempotent and uses SKIP LOCKED, so any number of servers can run it
at once. PostgreSQL is the source of truth: a job the broker lost is sent again,
and a duplicate delivery is harmless because claiming a job is a compare-and-set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import redis

from jobcore.store import JobStore
from jobcore.supervision import run_periodically
from server.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

_BATCH = 500
# The supervised task (and the name of its fault file).
MAINTENANCE_TASK = "maintenance"


@dataclass(frozen=True)
class MaintenancePolicy:
    """How often and how eagerly to act."""

    interval: timedelta
    redispatch_after: timedelta
    max_attempts: int
    retention: timedelta


async def requeue_expired_leases(store: JobStore, *, max_attempts: int) -> int:
    """Take back jobs whose worker stopped renewing its lease; returns how many."""
    jobs = await store.requeue_expired(max_attempts=max_attempts, limit=_BATCH)
    for job in jobs:
        logger.warning(
            "job %s: worker lost during attempt %d; now %s", job.id, job.attempts, job.status
        )
    return len(jobs)


async def redispatch(store: JobStore, dispatcher: Dispatcher, *, older_than: timedelta) -> int:
    """Wake workers for never-published PENDING jobs, and for stale ones the broker lost; returns how many.

    A job whose publish failed (dispatched_at NULL) always goes. A job published more
    than `older_than` ago goes again only when the broker's queue is empty: while wake-ups
    wait there, workers have not caught up with the backlog yet, and re-sending its jobs
    at every sweep would multiply its messages. An empty queue with stale PENDING jobs
    means their messages were lost (Redis restarted empty) or sit with a busy worker,
    where a duplicate is harmless.
    """
    stale_after = older_than if await _broker_queue_empty(dispatcher) else None
    taken = await store.take_undispatched(older_than=stale_after, limit=_BATCH)
    for job_id, backlog in taken:
        dispatcher.dispatch(job_id, backlog=backlog)
    if taken:
        logger.info("re-dispatching %d pending jobs", len(taken))
    return len(taken)


async def _broker_queue_empty(dispatcher: Dispatcher) -> bool:
    """Whether no wake-up waits in the broker; False (resend nothing stale) if Redis cannot tell."""
    try:
        waiting = await dispatcher.waiting_in_broker()
    except (redis.RedisError, OSError, TimeoutError) as error:
        logger.warning(
            "reading the broker's queue length failed (%s); re-sending only unpublished jobs",
            error,
        )
        return False
    return waiting == 0


async def run_maintenance(
    store: JobStore, dispatcher: Dispatcher, policy: MaintenancePolicy
) -> None:
    """One round every interval until cancelled; a transient store error is retried with backoff."""

    async def one_round() -> None:
        await requeue_expired_leases(store, max_attempts=policy.max_attempts)
        await redispatch(store, dispatcher, older_than=policy.redispatch_after)
        purged = await store.purge_finished(older_than=policy.retention, limit=_BATCH)
        if purged:
            logger.info("retention: deleted %d finished jobs", purged)

    await run_periodically(MAINTENANCE_TASK, one_round, interval=policy.interval)
