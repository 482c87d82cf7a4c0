"""Each event records the trace context of the change that made it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """A W3C traceparent, so a watcher's delivery of the event joins the job's trace."""
    op.add_column("job_events", sa.Column("traceparent", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    op.drop_column("job_events", "traceparent")
