"""Tenants: every job and event belongs to one; API keys; unfinished jobs counted per tenant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tenant of every job stored before tenants existed.
_EXISTING_TENANT = "default"

# Keeps tenant_usage.unfinished_jobs equal to the tenant's PENDING and IN_PROGRESS jobs, once
# per statement (from its transition tables), so a statement that changes many jobs updates
# each tenant's row once. Rows are changed in tenant order, so concurrent statements never
# deadlock on them. A claim (PENDING -> IN_PROGRESS) changes nothing and writes nothing.
_COUNT_UNFINISHED = """
CREATE FUNCTION count_unfinished_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch names only the transition tables its event has.
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM tenant_usage;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM add_unfinished_jobs(array_agg(tenant), array_agg(delta))
           FROM (SELECT tenant, count(*) AS delta
                   FROM new_rows
                  WHERE status IN ('PENDING', 'IN_PROGRESS')
                  GROUP BY tenant) AS added;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM add_unfinished_jobs(array_agg(tenant), array_agg(delta))
           FROM (SELECT tenant, -count(*) AS delta
                   FROM old_rows
                  WHERE status IN ('PENDING', 'IN_PROGRESS')
                  GROUP BY tenant) AS removed;
    ELSE
        PERFORM add_unfinished_jobs(array_agg(tenant), array_agg(delta))
           FROM (SELECT tenant, sum(delta) AS delta
                   FROM (SELECT tenant, 1 AS delta
                           FROM new_rows
                          WHERE status IN ('PENDING', 'IN_PROGRESS')
                         UNION ALL
                         SELECT tenant, -1
                           FROM old_rows
                          WHERE status IN ('PENDING', 'IN_PROGRESS')) AS changes
                  GROUP BY tenant
                 HAVING sum(delta) <> 0) AS changed;
    END IF;
    RETURN NULL;
END;
$$
"""

_ADD_UNFINISHED = """
CREATE FUNCTION add_unfinished_jobs(tenants text[], deltas bigint[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO tenant_usage AS usage (tenant, unfinished_jobs)
    SELECT tenant, delta
      FROM unnest(tenants, deltas) AS changed (tenant, delta)
     WHERE delta <> 0
     ORDER BY tenant
        ON CONFLICT (tenant) DO UPDATE
       SET unfinished_jobs = usage.unfinished_jobs + excluded.unfinished_jobs;
$$
"""


def upgrade() -> None:
    """Add the tenant to jobs and events (existing ones: `default`), its indexes, the API
    keys, and the per-tenant count of unfinished jobs behind the quota."""
    op.add_column(
        "jobs",
        sa.Column("tenant", sa.Text(), nullable=False, server_default=_EXISTING_TENANT),
    )
    op.alter_column("jobs", "tenant", server_default=None)
    op.add_column(
        "job_events",
        sa.Column("tenant", sa.Text(), nullable=False, server_default=_EXISTING_TENANT),
    )
    op.alter_column("job_events", "tenant", server_default=None)
    op.add_column("job_events", sa.Column("actor", sa.Text(), nullable=True))

    # ListJobs reads one tenant's jobs: its indexes lead with the tenant.
    for old in ("jobs_by_creation", "jobs_by_status_creation", "jobs_by_operation_creation"):
        op.drop_index(old, table_name="jobs")
    op.create_index(
        "jobs_by_tenant_creation",
        "jobs",
        ["tenant", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "jobs_by_tenant_status_creation",
        "jobs",
        ["tenant", "status", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "jobs_by_tenant_operation_creation",
        "jobs",
        ["tenant", "operation", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    # Idempotency keys are per tenant.
    op.drop_index("jobs_request_id", table_name="jobs")
    op.create_index(
        "jobs_tenant_request_id",
        "jobs",
        ["tenant", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("prefix", sa.Text(), nullable=False, unique=True),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("name", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )

    op.create_table(
        "tenant_usage",
        sa.Column("tenant", sa.Text(), primary_key=True),
        sa.Column("unfinished_jobs", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute(
        """
        INSERT INTO tenant_usage (tenant, unfinished_jobs)
        SELECT tenant, count(*)
          FROM jobs
         WHERE status IN ('PENDING', 'IN_PROGRESS')
         GROUP BY tenant
        """
    )
    op.execute(_ADD_UNFINISHED)
    op.execute(_COUNT_UNFINISHED)
    op.execute(
        """
        CREATE TRIGGER jobs_count_unfinished_insert AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_unfinished_jobs()
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_count_unfinished_update AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_unfinished_jobs()
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_count_unfinished_delete AFTER DELETE ON jobs
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_unfinished_jobs()
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_count_unfinished_truncate AFTER TRUNCATE ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION count_unfinished_jobs()
        """
    )


def downgrade() -> None:
    """Back to one anonymous tenant."""
    for trigger in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS jobs_count_unfinished_{trigger} ON jobs")
    op.execute("DROP FUNCTION IF EXISTS count_unfinished_jobs()")
    op.execute("DROP FUNCTION IF EXISTS add_unfinished_jobs(text[], bigint[])")
    op.drop_table("tenant_usage")
    op.drop_table("api_keys")
    op.drop_index("jobs_tenant_request_id", table_name="jobs")
    op.create_index(
        "jobs_request_id",
        "jobs",
        ["request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    for index in (
        "jobs_by_tenant_creation",
        "jobs_by_tenant_status_creation",
        "jobs_by_tenant_operation_creation",
    ):
        op.drop_index(index, table_name="jobs")
    op.create_index("jobs_by_creation", "jobs", [sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_index(
        "jobs_by_status_creation",
        "jobs",
        ["status", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "jobs_by_operation_creation",
        "jobs",
        ["operation", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.drop_column("job_events", "actor")
    op.drop_column("job_events", "tenant")
    op.drop_column("jobs", "tenant")
