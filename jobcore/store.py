"""PostgreSQL access: the only place that reads or writes jobs and their events.

Every state change is one SQL statement that updates the job and appends its
event together; the event's insert trigger notifies watchers when it commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobcore.errors import JobNotFoundError, StoreUnavailableError
from jobcore.models import Claim, Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.schema import job_events, jobs

logger = logging.getLogger(__name__)

# Errors are stored and sent in notifications; keep them far below pg_notify's 8000 bytes.
MAX_ERROR_CHARS = 1000

_JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.status,
    jobs.c.operation,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.last_sequence,
    jobs.c.result,
    jobs.c.error,
)


def create_engine(database_url: str, *, pool_size: int) -> AsyncEngine:
    """An asyncpg-backed engine; pre-ping so connections broken by a database restart are replaced."""
    return create_async_engine(
        database_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _is_connection_problem(error: BaseException) -> bool:
    if isinstance(error, OSError | OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


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
    )


def _changes_with_event(changed: sa.CTE) -> sa.CTE:
    """Append one job_events row per job row that the `changed` CTE updated or inserted.

    Both CTEs run in one statement, so a state change and its event commit together.
    """
    return (
        job_events.insert()
        .from_select(
            ["job_id", "sequence", "status", "occurred_at", "result", "error"],
            sa.select(
                changed.c.id,
                changed.c.last_sequence,
                changed.c.status,
                changed.c.updated_at,
                changed.c.result,
                changed.c.error,
            ),
        )
        .cte("recorded")
    )


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
            if _is_connection_problem(error):
                logger.warning("PostgreSQL unavailable: %s", error)
                raise StoreUnavailableError("the job store (PostgreSQL) is unavailable") from error
            raise

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless PostgreSQL answers a trivial query."""
        async with self._transaction() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def create(self, *, job_id: uuid.UUID, operation: Operation, numbers: bytes) -> Job:
        """Store a new PENDING job and its first event in one statement."""
        now = sa.func.now()
        inserted = (
            jobs.insert()
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
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        statement = sa.select(inserted).add_cte(_changes_with_event(inserted))
        async with self._transaction() as connection:
            row = (await connection.execute(statement)).mappings().one()
        return _job_from_row(row)

    async def get(self, job_id: uuid.UUID) -> Job:
        """The job's current state; JobNotFoundError if there is no such job."""
        statement = sa.select(*_JOB_COLUMNS).where(jobs.c.id == job_id)
        async with self._transaction() as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        if row is None:
            raise JobNotFoundError(str(job_id))
        return _job_from_row(row)

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

        The compare-and-set makes duplicate deliveries of the same job harmless:
        only one of them gets the claim.
        """
        changed = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PENDING.value)
            .values(
                status=JobStatus.IN_PROGRESS.value,
                attempt=jobs.c.attempt + 1,
                lease_expires_at=sa.func.now() + lease,
                last_sequence=jobs.c.last_sequence + 1,
                updated_at=sa.func.now(),
            )
            .returning(*_JOB_COLUMNS, jobs.c.attempt, jobs.c.numbers)
            .cte("changed")
        )
        statement = sa.select(
            changed.c.id, changed.c.attempt, changed.c.operation, changed.c.numbers
        ).add_cte(_changes_with_event(changed))
        async with self._transaction() as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        if row is None:
            return None
        return Claim(
            job_id=row["id"],
            attempt=row["attempt"],
            operation=Operation(row["operation"]),
            numbers=row["numbers"],
        )

    async def finish(self, claim: Claim, outcome: Outcome) -> bool:
        """Record the outcome of the claimed attempt; False if that attempt no longer holds the job.

        Fencing on the attempt number means a stale worker can never overwrite a
        result recorded by a newer attempt.
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
                status=status.value,
                result=outcome.result,
                error=error,
                lease_expires_at=None,
                last_sequence=jobs.c.last_sequence + 1,
                updated_at=sa.func.now(),
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        statement = sa.select(changed.c.id).add_cte(_changes_with_event(changed))
        async with self._transaction() as connection:
            row = (await connection.execute(statement)).one_or_none()
        return row is not None

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
