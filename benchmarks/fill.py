"""Fills the job tables straight through SQL: a million jobs in seconds instead of an hour of API calls.

Rows look like the service's own: UUIDv7 ids, packed numbers, one event per state
change. The session runs with session_replication_role = replica, which skips the
notify trigger (nobody should receive a million notifications), the foreign-key
check (every event's job is inserted by the same statement) and the triggers that count
each tenant's unfinished jobs (so the fill adds its unfinished jobs to the count itself).
Every job is the tenant `default`'s, whose key the bench's load generators present.
"""

from __future__ import annotations

import struct

import asyncpg

from jobcore.database import asyncpg_dsn
from jobcore.identity import DEFAULT_TENANT

# Matches the load generator's job: square_sum of [1, 2, 3, 4, 5] = 55.
NUMBERS = (1.0, 2.0, 3.0, 4.0, 5.0)
PACKED_NUMBERS = struct.pack(f"<{len(NUMBERS)}d", *NUMBERS)
RESULT = sum(number * number for number in NUMBERS)
_BATCH_ROWS = 200_000

_FINISHED_JOBS = """
WITH inserted AS (
    INSERT INTO jobs (id, tenant, operation, status, numbers, number_count, result, attempt,
                      dispatched_at, last_sequence, created_at, updated_at)
    SELECT uuidv7(), $5::text, 'square_sum', 'SUCCESS', $2::bytea, $3::int, $4::float8, 1,
           now(), 3, now(), now()
    FROM generate_series(1, $1::int)
    RETURNING id, created_at, updated_at
), first AS (
    SELECT take_event_positions($5::text, 3 * $1::bigint) AS position
)
INSERT INTO job_events (job_id, tenant, sequence, position, status, occurred_at, result, attempt,
                        operation, job_created_at)
SELECT inserted.id, $5::text, step.sequence,
       first.position - 1 + row_number() OVER (ORDER BY inserted.id, step.sequence),
       step.status, inserted.updated_at,
       CASE WHEN step.status = 'SUCCESS' THEN $4::float8 END, step.attempt, 'square_sum',
       inserted.created_at
FROM inserted
CROSS JOIN first
CROSS JOIN (VALUES (1, 'PENDING', 0), (2, 'IN_PROGRESS', 1), (3, 'SUCCESS', 1))
    AS step(sequence, status, attempt)
"""

# Jobs a worker holds for a day: their watchers stay open and idle, as behind a long job.
_RUNNING_JOBS = """
WITH inserted AS (
    INSERT INTO jobs (id, tenant, operation, status, numbers, number_count, attempt,
                      lease_expires_at, dispatched_at, last_sequence, created_at, updated_at)
    SELECT uuidv7(), $4::text, 'square_sum', 'IN_PROGRESS', $2::bytea, $3::int, 1,
           now() + interval '1 day', now(), 2, now(), now()
    FROM generate_series(1, $1::int)
    RETURNING id, created_at, updated_at
), first AS (
    SELECT take_event_positions($4::text, 2 * $1::bigint) AS position
), events AS (
    INSERT INTO job_events (job_id, tenant, sequence, position, status, occurred_at, attempt,
                            operation, job_created_at)
    SELECT inserted.id, $4::text, step.sequence,
           first.position - 1 + row_number() OVER (ORDER BY inserted.id, step.sequence),
           step.status, inserted.updated_at, step.attempt, 'square_sum', inserted.created_at
    FROM inserted
    CROSS JOIN first
    CROSS JOIN (VALUES (1, 'PENDING', 0), (2, 'IN_PROGRESS', 1)) AS step(sequence, status, attempt)
)
SELECT id::text FROM inserted
"""


async def _connect(database_url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    await connection.execute("SET session_replication_role = replica")
    return connection


async def fill_finished_jobs(database_url: str, *, until_total: int) -> int:
    """Insert finished jobs (3 events each) until the table holds `until_total`; how many were added."""
    connection = await _connect(database_url)
    try:
        existing = int(await connection.fetchval("SELECT count(*) FROM jobs"))
        missing = max(0, until_total - existing)
        left = missing
        while left > 0:
            batch = min(left, _BATCH_ROWS)
            await connection.execute(
                _FINISHED_JOBS,
                batch,
                PACKED_NUMBERS,
                len(NUMBERS),
                RESULT,
                DEFAULT_TENANT,
                timeout=600,
            )
            left -= batch
        # Fresh statistics, as autovacuum would eventually give a real table.
        await connection.execute("ANALYZE jobs; ANALYZE job_events", timeout=600)
        return missing
    finally:
        await connection.close()


async def insert_running_jobs(database_url: str, *, count: int) -> list[str]:
    """Insert `count` IN_PROGRESS jobs leased for a day; their ids."""
    connection = await _connect(database_url)
    try:
        async with connection.transaction():
            rows = await connection.fetch(
                _RUNNING_JOBS, count, PACKED_NUMBERS, len(NUMBERS), DEFAULT_TENANT, timeout=600
            )
            await connection.execute(
                "SELECT add_unfinished_jobs($1::text[], $2::bigint[])",
                [DEFAULT_TENANT],
                [len(rows)],
            )
        return [str(row[0]) for row in rows]
    finally:
        await connection.close()


async def sample_job_ids(database_url: str, *, count: int) -> list[str]:
    """Up to `count` random ids of stored jobs, for lookups spread over the whole table."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT id::text FROM jobs ORDER BY random() LIMIT $1", count, timeout=600
        )
        return [str(row[0]) for row in rows]
    finally:
        await connection.close()
