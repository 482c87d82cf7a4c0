"""Re-dispatches PENDING jobs whose broker message failed to publish or may have been lost.

PostgreSQL is the source of truth, so a job that Redis never saw is sent again;
a duplicate delivery is harmless because claiming a job is a compare-and-set.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from celery import Celery

from jobcore.errors import StoreUnavailableError
from jobcore.queue import dispatch
from jobcore.store import JobStore

logger = logging.getLogger(__name__)

_BATCH = 500


async def sweep_once(store: JobStore, celery_app: Celery, *, older_than: timedelta) -> int:
    """Send one batch of stale PENDING jobs again; returns how many were sent."""
    job_ids = await store.take_undispatched(older_than=older_than, limit=_BATCH)
    sent = 0
    for job_id in job_ids:
        try:
            await asyncio.to_thread(dispatch, celery_app, job_id)
        except Exception as error:  # the broker is down: leave the rest for the next sweep
            logger.warning(
                "re-dispatch failed (%s); %d jobs wait for the next sweep",
                error,
                len(job_ids) - sent,
            )
            await store.mark_undispatched(job_ids[sent:])
            break
        sent += 1
    if sent:
        logger.info("re-dispatched %d pending jobs", sent)
    return sent


async def run_sweeper(
    store: JobStore, celery_app: Celery, *, interval: timedelta, older_than: timedelta
) -> None:
    """Sweep every interval until cancelled."""
    while True:
        try:
            await sweep_once(store, celery_app, older_than=older_than)
        except StoreUnavailableError:
            logger.warning("re-dispatch sweep skipped: PostgreSQL unavailable")
        await asyncio.sleep(interval.total_seconds())
