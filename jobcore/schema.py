"""The PostgreSQL schema, as SQLAlchemy Core tables; Alembic migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
)

# Notified (with the event row as JSON) every time a job_events row is inserted,
# i.e. exactly when a state change commits. Servers LISTEN on it to push WatchJob updates.
JOB_EVENTS_CHANNEL = "job_events"

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("operation", Text, nullable=False),
    Column("status", Text, nullable=False),
    # Little-endian float64s, 8 bytes a number: compact, and read back in one piece.
    Column("numbers", LargeBinary, nullable=False),
    Column("number_count", Integer, nullable=False),
    Column("result", Double, nullable=True),
    Column("error", Text, nullable=True),
    # Incremented by every claim; a worker may only finish the attempt it claimed.
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    # When the job's broker message was last published (NULL: publishing failed).
    Column("dispatched_at", DateTime(timezone=True), nullable=True),
    # Sequence number of the job's latest event.
    Column("last_sequence", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Idempotency key of SubmitJob and a digest of the request it was first used with.
    Column("request_id", Text, nullable=True),
    Column("request_hash", LargeBinary, nullable=True),
    CheckConstraint("operation IN ('square_sum', 'cube_sum')", name="jobs_operation_known"),
    CheckConstraint(
        "status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED', 'CANCELLED')",
        name="jobs_status_known",
    ),
)

# Serves the re-dispatch sweep, which only ever looks at PENDING jobs.
Index("jobs_pending_by_dispatch", jobs.c.dispatched_at, postgresql_where=jobs.c.status == "PENDING")
# Serves the lease reaper, which only looks at running jobs.
Index(
    "jobs_running_by_lease",
    jobs.c.lease_expires_at,
    postgresql_where=jobs.c.status == "IN_PROGRESS",
)
# Serves retention, which deletes finished jobs by age.
Index(
    "jobs_finished_by_update",
    jobs.c.updated_at,
    postgresql_where=jobs.c.status.in_(["SUCCESS", "FAILED", "CANCELLED"]),
)
# ListJobs: newest first, alone or within one status or operation.
Index("jobs_by_creation", jobs.c.created_at.desc(), jobs.c.id.desc())
Index("jobs_by_status_creation", jobs.c.status, jobs.c.created_at.desc(), jobs.c.id.desc())
Index("jobs_by_operation_creation", jobs.c.operation, jobs.c.created_at.desc(), jobs.c.id.desc())
Index(
    "jobs_request_id",
    jobs.c.request_id,
    unique=True,
    postgresql_where=jobs.c.request_id.is_not(None),
)

job_events = Table(
    "job_events",
    metadata,
    Column("job_id", Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("result", Double, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="0"),
    # The W3C trace context of the change (when tracing is on), so watchers join the trace.
    Column("traceparent", Text, nullable=True),
    PrimaryKeyConstraint("job_id", "sequence"),
)
