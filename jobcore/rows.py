"""Rows to domain values: jobs, job events and claims from the columns the store's queries
return, and job events from NOTIFY payloads (the same row as JSON)."""

from __future__ import annotations

from typing import Any, Protocol

from jobcore.models import Claim, Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation


class Row(Protocol):
    """A result row by column name: an asyncpg Record, or a notification's parsed JSON."""

    def __getitem__(self, key: str, /) -> Any: ...


def _outcome(row: Row, status: JobStatus) -> Outcome | None:
    """A final status's result or error; nothing for a job still under way."""
    return Outcome(result=row["result"], error=row["error"]) if status.is_final else None


def job_from_row(row: Row) -> Job:
    """A Job from a jobs row (id, status, operation, created_at, updated_at, last_sequence,
    result, error, attempt)."""
    status = JobStatus(row["status"])
    return Job(
        id=row["id"],
        status=status,
        operation=Operation(row["operation"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sequence=row["last_sequence"],
        outcome=_outcome(row, status),
        attempts=row["attempt"],
    )


def event_from_row(row: Row) -> JobEvent:
    """A JobEvent from a job_events row (or the same row as JSON, already parsed)."""
    status = JobStatus(row["status"])
    return JobEvent(
        job_id=row["job_id"],
        sequence=row["sequence"],
        status=status,
        occurred_at=row["occurred_at"],
        outcome=_outcome(row, status),
        attempts=row["attempt"],
        traceparent=row["traceparent"],
        tenant=row["tenant"],
        actor=row["actor"],
        position=row["position"],
        operation=Operation(row["operation"]),
        job_created_at=row["job_created_at"],
    )


def claim_from_row(row: Row) -> Claim:
    """A Claim from a claimed jobs row (id, operation, numbers, number_count, attempt,
    last_sequence)."""
    return Claim(
        job_id=row["id"],
        attempt=row["attempt"],
        operation=Operation(row["operation"]),
        numbers=row["numbers"],
        sequence=row["last_sequence"],
        number_count=row["number_count"],
    )
