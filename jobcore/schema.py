"""The PostgreSQL schema, as SQLAlchemy Core tables; Alembic migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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
from sqlalchemy.dialects.postgresql import ARRAY

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
    # Whose job it is: the tenant of the credential that submitted it. Every read is by tenant.
    Column("tenant", Text, nullable=False),
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
# ListJobs: one tenant's jobs newest first, alone or within one status or operation.
Index("jobs_by_tenant_creation", jobs.c.tenant, jobs.c.created_at.desc(), jobs.c.id.desc())
Index(
    "jobs_by_tenant_status_creation",
    jobs.c.tenant,
    jobs.c.status,
    jobs.c.created_at.desc(),
    jobs.c.id.desc(),
)
Index(
    "jobs_by_tenant_operation_creation",
    jobs.c.tenant,
    jobs.c.operation,
    jobs.c.created_at.desc(),
    jobs.c.id.desc(),
)
# Idempotency keys are per tenant: two tenants may use the same key independently.
Index(
    "jobs_tenant_request_id",
    jobs.c.tenant,
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
    # The job's tenant, so every notification says whose it is and no stream delivers it to
    # another tenant.
    Column("tenant", Text, nullable=False),
    # Who caused the change: `key:<prefix>` or `jwt:<subject>` for a caller, `worker` or
    # `maintenance` for the service itself.
    Column("actor", Text, nullable=True),
    # Where the change stands in its tenant's history: positions follow commit order
    # (take_event_positions, migration 0006), so "every change after position N" is exact.
    Column("position", BigInteger, nullable=False),
    # What a watcher of many jobs shows with each change, without reading the job.
    Column("operation", Text, nullable=False),
    Column("job_created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("job_id", "sequence"),
)
# WatchJobs: a tenant's changes after a position.
Index("job_events_by_tenant_position", job_events.c.tenant, job_events.c.position, unique=True)

# Credentials the service issues. Only a SHA-256 of each key's 256-bit secret is kept; the
# prefix is the key's public start, shown in listings and in job histories.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("prefix", Text, nullable=False, unique=True),
    Column("secret_hash", LargeBinary, nullable=False, unique=True),
    Column("tenant", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Each tenant's PENDING and IN_PROGRESS jobs, kept by statement triggers on jobs (migration
# 0005), so the quota is checked without counting jobs.
tenant_usage = Table(
    "tenant_usage",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("unfinished_jobs", BigInteger, nullable=False, server_default="0"),
    # The position of the tenant's latest event (see job_events.position).
    Column("last_event_position", BigInteger, nullable=False, server_default="0"),
)
