"""Running jobs: claim each, wait the simulated delay, compute, record the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from jobcore.celery_app import Wakeup
from jobcore.errors import ComputationError, TransientError
from jobcore.events import RESYNC, Inbox, InboxItem
from jobcore.logs import current_job_id
from jobcore.models import Claim, JobEvent, JobStatus, Outcome
from jobcore.operations import compute, unpack_numbers
from jobcore.store import JobStore
from jobcore.supervision import Backoff, TransientEpisode
from jobcore.tracing import context_from, tracer
from worker.metrics import JOBS_IN_FLIGHT, JOBS_PROCESSED, PROCESSING_SECONDS
from worker.runtime import WorkerServices

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Jobs up to this payload (8,192 numbers) are computed on the loop itself.
_COMPUTE_INLINE_BYTES = 8 * 8192
_RETRY_FIRST_DELAY_SECONDS = 0.2
_RETRY_MAX_DELAY_SECONDS = 5.0


async def _retry_transient(
    what: str, operation: Callable[[], Awaitable[T]], *, give_up_after: timedelta
) -> T:
    """Retry a store call through a transient failure, with backoff, for at most `give_up_after`.

    Safe because claims are compare-and-set and finishes are fenced by the attempt.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after.total_seconds()
    backoff = Backoff(
        first_seconds=_RETRY_FIRST_DELAY_SECONDS, cap_seconds=_RETRY_MAX_DELAY_SECONDS
    )
    episode = TransientEpisode(what)
    while True:
        try:
            result = await operation()
        except TransientError as error:
            delay = backoff.next_delay()
            if loop.time() + delay > deadline:
                raise
            episode.failed(error)
            await asyncio.sleep(delay)
            continue
        episode.recovered()
        return result


def _outcome_of(claim: Claim, numbers: bytes) -> Outcome:
    """Compute the job's result, turning any failure into a readable error."""
    try:
        return Outcome(result=compute(claim.operation, unpack_numbers(numbers)))
    except ComputationError as error:
        return Outcome(error=str(error))
    except Exception:
        # A bug must fail the job visibly rather than leave it running forever.
        logger.exception("job %s: unexpected error while computing", claim.job_id)
        return Outcome(error="internal error while computing the result")


async def _compute_after_delay(services: WorkerServices, claim: Claim, delay: timedelta) -> Outcome:
    await asyncio.sleep(delay.total_seconds())
    if claim.numbers is not None:
        return await _compute(claim, claim.numbers)
    # A large job's numbers are read only now, within the process's budget for them, so the
    # jobs waiting out their delay hold none.
    async with services.numbers_memory.hold(8 * claim.number_count):
        numbers = await _retry_transient(
            f"job {claim.job_id}: reading its numbers",
            lambda: services.store.numbers(claim.job_id, number_count=claim.number_count),
            give_up_after=services.leases.lease,
        )
        if numbers is None:
            return Outcome(error="the job's numbers are no longer stored")
        return await _compute(claim, numbers)


async def _compute(claim: Claim, numbers: bytes) -> Outcome:
    if len(numbers) <= _COMPUTE_INLINE_BYTES:
        # A small job: a thread hop would cost more than computing it.
        return _outcome_of(claim, numbers)
    # Large jobs take real CPU; keep the loop free for the other jobs in flight.
    return await asyncio.to_thread(_outcome_of, claim, numbers)


async def _until_taken_away(inbox: asyncio.Queue[InboxItem], store: JobStore, claim: Claim) -> str:
    """Return (with the new status) once the job changes under this attempt (e.g. cancelled)."""
    while True:
        item = await inbox.get()
        if isinstance(item, JobEvent):
            if item.sequence > claim.sequence:
                return item.status.value
        elif item is RESYNC:
            try:
                job = await store.get(claim.job_id, tenant=None)
            except TransientError as error:
                # The listener reconnects and sends RESYNC again.
                logger.warning("job %s: re-reading after RESYNC failed (%s)", claim.job_id, error)
                continue
            if job.status != JobStatus.IN_PROGRESS or job.attempts != claim.attempt:
                return job.status.value


async def start_jobs(
    services: WorkerServices, wakeups: Sequence[Wakeup], *, delay: timedelta, deadline: timedelta
) -> None:
    """Queue each job for a slot at its priority and start it there; return once every claim
    was tried.

    The jobs keep running after this returns; `services.running` holds them. Every job of
    the message queues at once, so the messages held by this process get their slots in the
    order they came (within a priority) and the oldest frees its claiming thread first.
    Logs one line for the message at INFO: a line per started job would cost a busy worker
    a sizeable share of its CPU (those are at DEBUG).
    """
    loop = asyncio.get_running_loop()
    claims: list[asyncio.Future[bool]] = []
    for wakeup in wakeups:
        claimed = loop.create_future()
        task = asyncio.create_task(
            _run_in_slot(services, wakeup, delay=delay, deadline=deadline, claimed=claimed)
        )
        services.running.add(task)
        task.add_done_callback(functools.partial(_job_ended, services))
        claims.append(claimed)
    started = sum(await asyncio.gather(*claims))
    if started < len(wakeups):
        logger.info(
            "started %d of %d jobs; the others were not pending (finished or claimed elsewhere)",
            started,
            len(wakeups),
        )
    else:
        logger.info("started %d jobs", started)


async def _run_in_slot(
    services: WorkerServices,
    wakeup: Wakeup,
    *,
    delay: timedelta,
    deadline: timedelta,
    claimed: asyncio.Future[bool],
) -> None:
    """Wait for a slot at the wake-up's priority, then run the job in it."""
    try:
        await services.capacity.acquire(wakeup.priority)
    except BaseException:
        # Never claimed: start_jobs must not report it as tried.
        claimed.cancel()
        raise
    try:
        await execute_job(
            services,
            wakeup.job_id,
            delay=delay,
            deadline=deadline,
            trace_context=context_from({"traceparent": wakeup.traceparent or ""}),
            claimed=claimed,
        )
    finally:
        services.capacity.release()


def _job_ended(services: WorkerServices, task: asyncio.Task[None]) -> None:
    services.running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("a job ended with an unexpected error", exc_info=task.exception())


async def execute_job(
    services: WorkerServices,
    job_id: uuid.UUID,
    *,
    delay: timedelta,
    deadline: timedelta,
    trace_context: Context | None = None,
    claimed: asyncio.Future[bool] | None = None,
) -> None:
    """Process one job end to end; a job that is not PENDING (a duplicate delivery) is skipped.

    `claimed` is resolved once the claim was tried, with whether this attempt got the job.
    The attempt stops early if the job is cancelled or its claim is lost, and fails the job
    if it runs longer than `deadline`.
    """
    current_job_id.set(str(job_id))
    # A child of the SubmitJob span that dispatched the job, when the message carried one.
    with tracer().start_as_current_span(
        "process_job", context=trace_context, kind=SpanKind.CONSUMER
    ) as span:
        span.set_attribute("job.id", str(job_id))
        try:
            await _execute(services, job_id, delay=delay, deadline=deadline, claimed=claimed)
        except TransientError as error:
            # The store stayed unreachable for a whole lease (a partition, an outage): this
            # process gives the job up. PostgreSQL still has it: an unclaimed job is woken
            # again by maintenance, a claimed one is taken back when its lease runs out, and
            # an outcome this attempt may yet record is fenced by its attempt number.
            span.record_exception(error)
            logger.warning(
                "job %s: gave it up, the job store stayed unavailable for a lease (%s); "
                "it runs again once its lease or its wake-up expires",
                job_id,
                error,
            )
        finally:
            if claimed is not None and not claimed.done():
                claimed.set_result(False)


async def _execute(
    services: WorkerServices,
    job_id: uuid.UUID,
    *,
    delay: timedelta,
    deadline: timedelta,
    claimed: asyncio.Future[bool] | None,
) -> None:
    store, lease = services.store, services.leases.lease
    with contextlib.ExitStack() as subscription:
        inbox: Inbox | None = None
        if delay > timedelta(0):
            # Subscribe first: a cancellation right after the claim must not be missed.
            inbox = subscription.enter_context(services.hub.subscribe(job_id))
        claim = await _retry_transient(
            f"job {job_id}: claim", lambda: store.claim(job_id, lease=lease), give_up_after=lease
        )
        if claimed is not None:
            claimed.set_result(claim is not None)
        if claim is None:
            logger.debug("job %s: not pending (finished or claimed elsewhere), skipping", job_id)
            return
        logger.debug("job %s: attempt %d started", job_id, claim.attempt)
        started = time.perf_counter()
        JOBS_IN_FLIGHT.inc()
        label = "stopped"
        try:
            numbers = claim.numbers
            if inbox is None and numbers is not None and len(numbers) <= _COMPUTE_INLINE_BYTES:
                # No delay and a small job: computed right here, with no wait that a
                # cancellation could cut short, so there is nothing to listen for. The finish
                # is fenced: it records nothing if the job changed since the claim.
                outcome: Outcome | None = _outcome_of(claim, numbers)
            else:
                if inbox is None:
                    inbox = subscription.enter_context(services.hub.subscribe(job_id))
                    # Subscribed after the claim: the attempt re-reads the job once, so a
                    # change made in between is not missed.
                    inbox.put_nowait(RESYNC)
                outcome = await _attempt(services, claim, inbox, delay=delay, deadline=deadline)
            if outcome is not None:
                label = await _record(store, claim, outcome, lease=lease)
        finally:
            JOBS_IN_FLIGHT.dec()
            JOBS_PROCESSED.labels(claim.operation.value, label).inc()
            PROCESSING_SECONDS.labels(claim.operation.value).observe(time.perf_counter() - started)


async def _attempt(
    services: WorkerServices,
    claim: Claim,
    inbox: asyncio.Queue[InboxItem],
    *,
    delay: timedelta,
    deadline: timedelta,
) -> Outcome | None:
    """The outcome of the attempt, or None if it stopped early (cancelled, claim lost)."""
    work = asyncio.create_task(_compute_after_delay(services, claim, delay))
    taken_away = asyncio.create_task(_until_taken_away(inbox, services.store, claim))
    with services.leases.hold(claim, work):
        done, _ = await asyncio.wait(
            {work, taken_away}, timeout=deadline.total_seconds(), return_when=FIRST_COMPLETED
        )
    for task in (work, taken_away):
        task.cancel()
    if work in done and not work.cancelled():
        return work.result()
    if done:
        status = taken_away.result() if taken_away in done else "lost"
        logger.info(
            "job %s: attempt %d stopped early (job is now %s)", claim.job_id, claim.attempt, status
        )
        return None
    return Outcome(error=f"timed out: ran longer than {deadline.total_seconds():g} s")


async def _record(store: JobStore, claim: Claim, outcome: Outcome, *, lease: timedelta) -> str:
    """Store the outcome (fenced by the attempt); the metrics label of how the attempt ended."""
    recorded = await _retry_transient(
        f"job {claim.job_id}: recording attempt {claim.attempt}",
        lambda: store.finish(claim, outcome),
        give_up_after=lease,
    )
    if not recorded:
        logger.warning(
            "job %s: attempt %d lost its claim; outcome discarded", claim.job_id, claim.attempt
        )
        return "stopped"
    if outcome.error is None:
        logger.debug("job %s: attempt %d finished (%s)", claim.job_id, claim.attempt, outcome)
        return "success"
    # A failure is worth a line of its own: an operator looks for it by the job's id.
    logger.info("job %s: attempt %d finished (%s)", claim.job_id, claim.attempt, outcome)
    return "timed_out" if outcome.error.startswith("timed out") else "failed"
