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
    CheckConstraint("operation IN ('square_sum', 'cube_sum')", name="jobs_operation_known"),
    CheckConstraint(
        "status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED')", name="jobs_status_known"
    ),
)

# Serves the re-dispatch sweep, which only ever looks at PENDING jobs.
Index("jobs_pending_by_dispatch", jobs.c.dispatched_at, postgresql_where=jobs.c.status == "PENDING")

job_events = Table(
    "job_events",
    metadata,
    Column("job_id", Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("result", Double, nullable=True),
    Column("error", Text, nullable=True),
    PrimaryKeyConstraint("job_id", "sequence"),
)
