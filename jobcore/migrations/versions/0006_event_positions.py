"""Each event has a position in its tenant's history, in commit order, and carries what a
watcher of many jobs shows: the job's operation and creation time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The next `count` positions of the tenant's events; the first is returned. The row stays
# locked until the transaction ends, so the positions of a tenant's events follow the order
# in which their transactions commit: once position N is visible, every position below it is
# too, and a transaction that rolls back gives its positions back.
_TAKE_EVENT_POSITIONS = """
CREATE FUNCTION take_event_positions(tenant_name text, count bigint) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO tenant_usage AS usage (tenant, last_event_position)
    VALUES (tenant_name, count)
        ON CONFLICT (tenant) DO UPDATE
       SET last_event_position = usage.last_event_position + excluded.last_event_position
    RETURNING usage.last_event_position - count + 1;
$$
"""


def upgrade() -> None:
    """Add and fill the columns, the per-tenant counter and the index WatchJobs reads by."""
    op.add_column("job_events", sa.Column("position", sa.BigInteger(), nullable=True))
    op.add_column("job_events", sa.Column("operation", sa.Text(), nullable=True))
    op.add_column(
        "job_events", sa.Column("job_created_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "tenant_usage",
        sa.Column("last_event_position", sa.BigInteger(), nullable=False, server_default="0"),
    )
    # Existing events: their order of occurrence stands in for their commit order.
    op.execute(
        """
        UPDATE job_events
           SET operation = jobs.operation,
               job_created_at = jobs.created_at,
               position = numbered.position
          FROM jobs,
               (SELECT job_id, sequence,
                       row_number() OVER (PARTITION BY tenant
                                          ORDER BY occurred_at, job_id, sequence) AS position
                  FROM job_events) AS numbered
         WHERE jobs.id = job_events.job_id
           AND numbered.job_id = job_events.job_id
           AND numbered.sequence = job_events.sequence
        """
    )
    op.execute(
        """
        INSERT INTO tenant_usage AS usage (tenant, last_event_position)
        SELECT tenant, max(position)
          FROM job_events
         GROUP BY tenant
            ON CONFLICT (tenant) DO UPDATE
           SET last_event_position = excluded.last_event_position
        """
    )
    for column in ("position", "operation", "job_created_at"):
        op.alter_column("job_events", column, nullable=False)
    op.create_index(
        "job_events_by_tenant_position", "job_events", ["tenant", "position"], unique=True
    )
    op.execute(_TAKE_EVENT_POSITIONS)


def downgrade() -> None:
    """Drop them."""
    op.execute("DROP FUNCTION IF EXISTS take_event_positions(text, bigint)")
    op.drop_index("job_events_by_tenant_position", table_name="job_events")
    op.drop_column("tenant_usage", "last_event_position")
    for column in ("job_created_at", "operation", "position"):
        op.drop_column("job_events", column)
