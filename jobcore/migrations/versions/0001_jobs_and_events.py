"""Jobs, their event history, and the trigger that notifies watchers on commit.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create jobs and job_events; every inserted event is announced with pg_notify."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("numbers", sa.LargeBinary(), nullable=False),
        sa.Column("number_count", sa.Integer(), nullable=False),
        sa.Column("result", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("operation IN ('square_sum', 'cube_sum')", name="jobs_operation_known"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED')", name="jobs_status_known"
        ),
    )
    # Serves the re-dispatch sweep, which only ever looks at PENDING jobs.
    op.create_index(
        "jobs_pending_by_dispatch",
        "jobs",
        ["dispatched_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_table(
        "job_events",
        sa.Column(
            "job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "sequence"),
    )
    # The notification is sent when (and only if) the inserting transaction commits,
    # so watchers never see a change that did not happen. The payload is the event row;
    # errors are truncated in the domain well below pg_notify's 8000-byte limit.
    op.execute(
        """
        CREATE FUNCTION notify_job_event() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('job_events', row_to_json(NEW)::text);
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER job_events_notify AFTER INSERT ON job_events
        FOR EACH ROW EXECUTE FUNCTION notify_job_event()
        """
    )


def downgrade() -> None:
    """Drop everything upgrade created."""
    op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
    op.execute("DROP FUNCTION IF EXISTS notify_job_event()")
    op.drop_table("job_events")
    op.drop_table("jobs")
