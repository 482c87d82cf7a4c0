"""Indexes that serve ListJobs: newest first, alone or filtered by status or operation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "jobs_by_creation": "created_at DESC, id DESC",
    "jobs_by_status_creation": "status, created_at DESC, id DESC",
    "jobs_by_operation_creation": "operation, created_at DESC, id DESC",
}


def upgrade() -> None:
    """Each index returns one filter's jobs already in page order, so a page reads page_size rows."""
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON jobs ({columns})")


def downgrade() -> None:
    """Drop the listing indexes."""
    for name in _INDEXES:
        op.drop_index(name, table_name="jobs")
