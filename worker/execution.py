"""Running one job: claim it, wait the simulated delay, compute, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from jobcore.errors import ComputationError, StoreUnavailableError
from jobcore.models import Claim, Outcome
from jobcore.operations import compute, unpack_numbers
from jobcore.store import JobStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_FIRST_DELAY_SECONDS = 0.2
_RETRY_MAX_DELAY_SECONDS = 5.0


async def _retry_while_store_unavailable(
    operation: Callable[[], Awaitable[T]], *, give_up_after: timedelta
) -> T:
    """Retry a store call through a PostgreSQL outage, with backoff, for at most `give_up_after`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after.total_seconds()
    delay = _RETRY_FIRST_DELAY_SECONDS
    while True:
        try:
            return await operation()
        except StoreUnavailableError:
            if loop.time() + delay > deadline:
                raise
            logger.warning("store unavailable; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY_SECONDS)


def _outcome_of(claim: Claim) -> Outcome:
    """Compute the job's result, turning any failure into a readable error."""
    try:
        return Outcome(result=compute(claim.operation, unpack_numbers(claim.numbers)))
    except ComputationError as error:
        return Outcome(error=str(error))
    except Exception:
        # A bug must fail the job visibly rather than leave it running forever.
        logger.exception("job %s: unexpected error while computing", claim.job_id)
        return Outcome(error="internal error while computing the result")


async def execute_job(
    store: JobStore, job_id: uuid.UUID, *, delay: timedelta, lease: timedelta
) -> None:
    """Process one job end to end; a job that is not PENDING (a duplicate delivery) is skipped."""
    claim = await _retry_while_store_unavailable(
        lambda: store.claim(job_id, lease=lease), give_up_after=lease
    )
    if claim is None:
        logger.info("job %s: not pending (finished or claimed elsewhere), skipping", job_id)
        return
    logger.info("job %s: attempt %d started", job_id, claim.attempt)
    await asyncio.sleep(delay.total_seconds())
    # Large jobs take real CPU; keep the loop free for the other jobs in flight.
    outcome = await asyncio.to_thread(_outcome_of, claim)
    recorded = await _retry_while_store_unavailable(
        lambda: store.finish(claim, outcome), give_up_after=lease
    )
    if recorded:
        logger.info("job %s: attempt %d finished (%s)", job_id, claim.attempt, outcome)
    else:
        logger.warning(
            "job %s: attempt %d lost its claim; outcome discarded", job_id, claim.attempt
        )
