"""Domain values passed between the store, the server and the worker."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from jobcore.operations import Operation


class JobStatus(enum.StrEnum):
    """Where a job is in its life cycle; the values are what PostgreSQL and the API use."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """Final states never change again."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a finished job ended: a result or an error, never both."""

    result: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as clients see it (its numbers are not carried around)."""

    id: uuid.UUID
    status: JobStatus
    operation: Operation
    created_at: datetime
    updated_at: datetime
    sequence: int
    outcome: Outcome | None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One state change of one job; `sequence` counts a job's changes from 1."""

    job_id: uuid.UUID
    sequence: int
    status: JobStatus
    occurred_at: datetime
    outcome: Outcome | None
    attempts: int = 0  # the job's attempt count right after this change
    traceparent: str | None = None  # trace context of the change, when tracing is on
    tenant: str | None = None  # whose job it is (always set on events read from PostgreSQL)
    actor: str | None = None  # who caused the change (see jobcore.identity.Principal.actor)
    # Set on events read from PostgreSQL: the change's place in its tenant's history (commit
    # order), and the job's operation and creation time, so the event alone describes the job.
    position: int | None = None
    operation: Operation | None = None
    job_created_at: datetime | None = None

    def job(self) -> Job:
        """The job as it is right after this event (an event read from PostgreSQL has all of it)."""
        if self.operation is None or self.job_created_at is None:
            raise ValueError(f"event {self.job_id}/{self.sequence} does not describe its job")
        return Job(
            id=self.job_id,
            status=self.status,
            operation=self.operation,
            created_at=self.job_created_at,
            updated_at=self.occurred_at,
            sequence=self.sequence,
            outcome=self.outcome,
            attempts=self.attempts,
        )

    def apply_to(self, job: Job) -> Job:
        """The job as it is right after this event."""
        return Job(
            id=job.id,
            status=self.status,
            operation=job.operation,
            created_at=job.created_at,
            updated_at=self.occurred_at,
            sequence=self.sequence,
            outcome=self.outcome,
            attempts=self.attempts,
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on one attempt of a job: only this attempt may record the outcome."""

    job_id: uuid.UUID
    attempt: int
    operation: Operation
    # pack_numbers' storage form; None for a job too large to come with its claim (its numbers
    # are read when it is computed, JobStore.numbers).
    numbers: bytes | None
    sequence: int  # the claim's own event; later events mean the job changed under us
    number_count: int
