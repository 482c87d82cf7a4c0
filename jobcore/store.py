"""PostgreSQL access: the only place that reads or writes jobs and their events.

Every state change is one SQL statement that updates the job and appends its
numbered event together; the event's insert trigger notifies listeners when,
and only if, it commits.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobcore.errors import (
    IdempotencyKeyReusedError,
    JobAlreadyFinishedError,
    JobNotFoundError,
    StoreUnavailableError,
)
from jobcore.listing import Condition, PageCursor
from jobcore.models import Claim, Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.schema import job_events, jobs
from jobcore.tracing import trace_headers

logger = logging.getLogger(__name__)

# Errors are stored and sent in notifications; keep them far below pg_notify's 8000 bytes.
MAX_ERROR_CHARS = 1000
CANCELLED_ERROR = "cancelled by request"

_JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.status,
    jobs.c.operation,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.last_sequence,
    jobs.c.result,
    jobs.c.error,
    jobs.c.attempt,
)
_UNFINISHED = (JobStatus.PENDING.value, JobStatus.IN_PROGRESS.value)
_FINISHED = tuple(status.value for status in JobStatus if status.is_final)
# SQLSTATE classes that mean "the server went away": 08 connection exception,
# 57 operator intervention (shutdown, restart, cannot connect now).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "57")


def create_engine(database_url: str, *, pool_size: int) -> AsyncEngine:
    """An asyncpg-backed engine; pre-ping so connections broken by a database restart are replaced."""
    return create_async_engine(
        database_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def is_unavailable_error(error: BaseException) -> bool:
    """Whether `error` means PostgreSQL is unreachable or restarting (so: retry later)."""
    if isinstance(error, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # asyncpg's own errors can escape SQLAlchemy while it (re)connects, e.g. "the database
    # system is shutting down"; SQLAlchemy's wrappers carry the same code on .orig.
    original = error.orig if isinstance(error, DBAPIError) else error
    if isinstance(original, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError):
        return True
    sqlstate = str(getattr(original, "sqlstate", "") or "")
    return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


def request_digest(operation: Operation, numbers: bytes) -> bytes:
    """What makes two submissions "the same request" for an idempotency key."""
    return hashlib.sha256(operation.value.encode() + b"\0" + numbers).digest()


def _job_from_row(row: Mapping[Any, Any]) -> Job:
    status = JobStatus(row["status"])
    outcome = Outcome(result=row["result"], error=row["error"]) if status.is_final else None
    return Job(
        id=row["id"],
        status=status,
        operation=Operation(row["operation"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sequence=row["last_sequence"],
        outcome=outcome,
        attempts=row["attempt"],
    )


def event_from_row(row: Mapping[Any, Any]) -> JobEvent:
    """A JobEvent from a job_events row (or the same row as JSON, already parsed)."""
    status = JobStatus(row["status"])
    outcome = Outcome(result=row["result"], error=row["error"]) if status.is_final else None
    return JobEvent(
        job_id=row["job_id"],
        sequence=row["sequence"],
        status=status,
        occurred_at=row["occurred_at"],
        outcome=outcome,
        attempts=row.get("attempt", 0),
        traceparent=row.get("traceparent"),
    )


def _changes_with_event(changed: sa.CTE) -> sa.CTE:
    """Append one job_events row per job row that the `changed` CTE updated or inserted.

    Both CTEs run in one statement, so a state change and its event commit together. The
    event records the current trace context, so whoever delivers it can join the trace.
    """
    traceparent = trace_headers().get("traceparent")
    return (
        job_events.insert()
        .from_select(
            [
                "job_id",
                "sequence",
                "status",
                "occurred_at",
                "result",
                "error",
                "attempt",
                "traceparent",
            ],
            sa.select(
                changed.c.id,
                changed.c.last_sequence,
                changed.c.status,
                changed.c.updated_at,
                changed.c.result,
                changed.c.error,
                changed.c.attempt,
                sa.literal(traceparent, sa.Text),
            ),
        )
        .cte("recorded")
    )


_COLUMNS_BY_FIELD = {
    "status": jobs.c.status,
    "operation": jobs.c.operation,
    "create_time": jobs.c.created_at,
}


def _condition(condition: Condition) -> sa.ColumnElement[bool]:
    column = _COLUMNS_BY_FIELD[condition.field]
    compare = {
        "=": column.__eq__,
        "!=": column.__ne__,
        "<": column.__lt__,
        "<=": column.__le__,
        ">": column.__gt__,
        ">=": column.__ge__,
    }[condition.operator]
    result: sa.ColumnElement[bool] = compare(condition.value)
    return result


def _next_state(**values: Any) -> dict[str, Any]:
    """The column values of a state change: the given ones plus a new event number and time."""
    return {**values, "last_sequence": jobs.c.last_sequence + 1, "updated_at": sa.func.now()}


class JobStore:
    """Jobs and their history in PostgreSQL, the single source of truth."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as connection:
                yield connection
        except Exception as error:
            if is_unavailable_error(error):
                logger.warning("PostgreSQL unavailable: %s", error)
                raise StoreUnavailableError("the job store (PostgreSQL) is unavailable") from error
            raise

    async def _change(self, changed: sa.CTE) -> list[Mapping[Any, Any]]:
        """Run a state change (a CTE returning job rows) together with its events."""
        statement = sa.select(changed).add_cte(_changes_with_event(changed))
        async with self._transaction() as connection:
            return list((await connection.execute(statement)).mappings())

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless PostgreSQL answers a trivial query."""
        async with self._transaction() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def create(
        self,
        *,
        job_id: uuid.UUID,
        operation: Operation,
        numbers: bytes,
        request_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Store a new PENDING job and its first event; (job, created).

        With a `request_id` already used for the same request, the original job is
        returned with created=False; for a different request it is an error.
        """
        digest = request_digest(operation, numbers) if request_id else None
        now = sa.func.now()
        insert = (
            pg_insert(jobs)
            .values(
                id=job_id,
                operation=operation.value,
                status=JobStatus.PENDING.value,
                numbers=numbers,
                number_count=len(numbers) // 8,
                last_sequence=1,
                # Optimistic: the caller publishes right after commit and clears this if that fails.
                dispatched_at=now,
                created_at=now,
                updated_at=now,
                request_id=request_id or None,
                request_hash=digest,
            )
            .on_conflict_do_nothing(
                index_elements=[jobs.c.request_id], index_where=jobs.c.request_id.is_not(None)
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        rows = await self._change(insert)
        if rows:
            return _job_from_row(rows[0]), True
        # The key was used before: the same request gets the same job back.
        statement = sa.select(*_JOB_COLUMNS, jobs.c.request_hash).where(
            jobs.c.request_id == request_id
        )
        async with self._transaction() as connection:
            existing = (await connection.execute(statement)).mappings().one()
        if existing["request_hash"] != digest:
            raise IdempotencyKeyReusedError(request_id or "")
        return _job_from_row(existing), False

    async def get(self, job_id: uuid.UUID) -> Job:
        """The job's current state; JobNotFoundError if there is no such job."""
        statement = sa.select(*_JOB_COLUMNS).where(jobs.c.id == job_id)
        async with self._transaction() as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        if row is None:
            raise JobNotFoundError(str(job_id))
        return _job_from_row(row)

    async def list_jobs(
        self, conditions: Sequence[Condition], *, page_size: int, after: PageCursor | None
    ) -> tuple[list[Job], PageCursor | None]:
        """One page of jobs, newest first, and the cursor of the next page (None on the last)."""
        statement = sa.select(*_JOB_COLUMNS).where(*(_condition(c) for c in conditions))
        if after is not None:
            statement = statement.where(
                sa.tuple_(jobs.c.created_at, jobs.c.id) < (after.created_at, after.job_id)
            )
        statement = statement.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(
            page_size + 1
        )
        async with self._transaction() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        page = [_job_from_row(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return page, (PageCursor(page[-1].created_at, page[-1].id) if more else None)

    async def events_after(self, job_id: uuid.UUID, sequence: int) -> list[JobEvent]:
        """The job's events with a sequence number above `sequence`, oldest first."""
        statement = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.sequence > sequence)
            .order_by(job_events.c.sequence)
        )
        async with self._transaction() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [event_from_row(row) for row in rows]

    async def claim(self, job_id: uuid.UUID, *, lease: timedelta) -> Claim | None:
        """Move a PENDING job to IN_PROGRESS for a new attempt; None if it is not PENDING.

        The compare-and-set makes duplicate deliveries harmless: only one gets the
        claim, and it holds the job until `lease` runs out unless renewed.
        """
        changed = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PENDING.value)
            .values(
                _next_state(
                    status=JobStatus.IN_PROGRESS.value,
                    attempt=jobs.c.attempt + 1,
                    lease_expires_at=sa.func.now() + lease,
                )
            )
            .returning(*_JOB_COLUMNS, jobs.c.numbers)
            .cte("changed")
        )
        rows = await self._change(changed)
        if not rows:
            return None
        row = rows[0]
        return Claim(
            job_id=row["id"],
            attempt=row["attempt"],
            operation=Operation(row["operation"]),
            numbers=row["numbers"],
            sequence=row["last_sequence"],
        )

    async def renew(self, claims: Sequence[Claim], *, lease: timedelta) -> set[uuid.UUID]:
        """Extend the leases of these claims in one statement; returns the jobs still held."""
        if not claims:
            return set()
        statement = (
            jobs.update()
            .where(
                sa.tuple_(jobs.c.id, jobs.c.attempt).in_([(c.job_id, c.attempt) for c in claims]),
                jobs.c.status == JobStatus.IN_PROGRESS.value,
            )
            .values(lease_expires_at=sa.func.now() + lease)
            .returning(jobs.c.id)
        )
        async with self._transaction() as connection:
            return set((await connection.execute(statement)).scalars())

    async def finish(self, claim: Claim, outcome: Outcome) -> bool:
        """Record the outcome of the claimed attempt; False if that attempt no longer holds the job.

        Fencing on the attempt number means a stale or duplicate worker can never
        overwrite a result, nor finish a job that was cancelled or handed to another.
        """
        status = JobStatus.SUCCESS if outcome.error is None else JobStatus.FAILED
        error = None if outcome.error is None else outcome.error[:MAX_ERROR_CHARS]
        changed = (
            jobs.update()
            .where(
                jobs.c.id == claim.job_id,
                jobs.c.status == JobStatus.IN_PROGRESS.value,
                jobs.c.attempt == claim.attempt,
            )
            .values(
                _next_state(
                    status=status.value, result=outcome.result, error=error, lease_expires_at=None
                )
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        return bool(await self._change(changed))

    async def cancel(self, job_id: uuid.UUID) -> Job:
        """Move a PENDING or IN_PROGRESS job to CANCELLED; a cancelled job is returned as is.

        JobAlreadyFinishedError if it ended otherwise; JobNotFoundError if there is no such job.
        """
        changed = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status.in_(_UNFINISHED))
            .values(
                _next_state(
                    status=JobStatus.CANCELLED.value,
                    error=CANCELLED_ERROR,
                    lease_expires_at=None,
                )
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        rows = await self._change(changed)
        if rows:
            return _job_from_row(rows[0])
        job = await self.get(job_id)
        if job.status != JobStatus.CANCELLED:
            raise JobAlreadyFinishedError(str(job_id), job.status.value)
        return job

    async def requeue_expired(self, *, max_attempts: int, limit: int) -> list[Job]:
        """Take back jobs whose worker's lease ran out: PENDING again, or FAILED after `max_attempts`.

        SKIP LOCKED lets every server run this at once without doing a job twice.
        """
        expired = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.status == JobStatus.IN_PROGRESS.value,
                jobs.c.lease_expires_at < sa.func.now(),
            )
            .order_by(jobs.c.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("expired")
        )
        gave_up = jobs.c.attempt >= max_attempts
        changed = (
            jobs.update()
            .where(jobs.c.id == expired.c.id)
            .values(
                _next_state(
                    status=sa.case(
                        (gave_up, JobStatus.FAILED.value), else_=JobStatus.PENDING.value
                    ),
                    error=sa.case(
                        (
                            gave_up,
                            sa.func.format(
                                "abandoned: the worker running it was lost %s times in a row",
                                jobs.c.attempt,
                            ),
                        ),
                        else_=None,
                    ),
                    lease_expires_at=None,
                    # NULL: the sweep publishes it again at once.
                    dispatched_at=None,
                )
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        return [_job_from_row(row) for row in await self._change(changed)]

    async def mark_undispatched(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Record that publishing these jobs' broker messages failed, so the sweep sends them soon."""
        statement = jobs.update().where(jobs.c.id.in_(job_ids)).values(dispatched_at=None)
        async with self._transaction() as connection:
            await connection.execute(statement)

    async def take_undispatched(self, *, older_than: timedelta, limit: int) -> list[uuid.UUID]:
        """Claim PENDING jobs whose message failed or may be lost, marking them dispatched now.

        SKIP LOCKED lets several servers sweep at once without sending a job twice.
        """
        stale = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.status == JobStatus.PENDING.value,
                sa.or_(
                    jobs.c.dispatched_at.is_(None),
                    jobs.c.dispatched_at < sa.func.now() - older_than,
                ),
            )
            .order_by(jobs.c.dispatched_at.nulls_first())
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            jobs.update()
            .where(jobs.c.id.in_(stale))
            .values(dispatched_at=sa.func.now())
            .returning(jobs.c.id)
        )
        async with self._transaction() as connection:
            return list((await connection.execute(statement)).scalars())

    async def purge_finished(self, *, older_than: timedelta, limit: int) -> int:
        """Delete finished jobs (and, by cascade, their events) last changed before `older_than` ago."""
        old = (
            sa.select(jobs.c.id)
            .where(jobs.c.status.in_(_FINISHED), jobs.c.updated_at < sa.func.now() - older_than)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = jobs.delete().where(jobs.c.id.in_(old))
        async with self._transaction() as connection:
            return (await connection.execute(statement)).rowcount
