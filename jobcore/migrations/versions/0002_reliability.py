"""Cancellation, idempotent submit, and the indexes behind leases and retention.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES_BEFORE = "status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED')"
_STATUSES_AFTER = "status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED', 'CANCELLED')"


def upgrade() -> None:
    """Add CANCELLED, the idempotency key, and indexes for the lease reaper and retention."""
    op.drop_constraint("jobs_status_known", "jobs", type_="check")
    op.create_check_constraint("jobs_status_known", "jobs", _STATUSES_AFTER)
    op.add_column("jobs", sa.Column("request_id", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("request_hash", sa.LargeBinary(), nullable=True))
    # Each event records the attempt count, so a resumed watch can rebuild any past state.
    op.add_column(
        "job_events", sa.Column("attempt", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_index(
        "jobs_request_id",
        "jobs",
        ["request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_index(
        "jobs_running_by_lease",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'IN_PROGRESS'"),
    )
    op.create_index(
        "jobs_finished_by_update",
        "jobs",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('SUCCESS', 'FAILED', 'CANCELLED')"),
    )


def downgrade() -> None:
    """Undo upgrade (cancelled jobs become FAILED)."""
    op.drop_index("jobs_finished_by_update", table_name="jobs")
    op.drop_index("jobs_running_by_lease", table_name="jobs")
    op.drop_index("jobs_request_id", table_name="jobs")
    op.drop_column("job_events", "attempt")
    op.drop_column("jobs", "request_hash")
    op.drop_column("jobs", "request_id")
    op.execute("UPDATE jobs SET status = 'FAILED' WHERE status = 'CANCELLED'")
    op.execute("UPDATE job_events SET status = 'FAILED' WHERE status = 'CANCELLED'")
    op.drop_constraint("jobs_status_known", "jobs", type_="check")
    op.create_check_constraint("jobs_status_known", "jobs", _STATUSES_BEFORE)
