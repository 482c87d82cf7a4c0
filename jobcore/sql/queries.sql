-- Every statement the job service runs against PostgreSQL (jobcore.store.JobStore runs the
-- jobs' statements, jobcore.keys.store.KeyStore the API keys').
--
-- Format: a block starts with `-- name: <name>`; the comment lines right under it say what
-- the statement does and the rule it keeps; the statement follows, up to the next block.
-- jobcore.queries reads this file once at import. Each block can be pasted into psql
-- (with values in place of $1, $2 ...).
--
-- Rules every statement keeps:
-- * One statement is one implicit transaction and one round trip; asyncpg prepares it once
--   per connection and reuses it, so parameters are $n with the casts asyncpg needs to know
--   their types (arrays of values for the batch statements, zipped back into rows by unnest).
-- * Statuses are written into the SQL as literals, never passed as parameters: the generic
--   plan of a prepared statement can then still use the partial indexes the sweeps rely on
--   (WHERE status = 'PENDING', 'IN_PROGRESS', or one of the final statuses).
-- * A state change updates the job row and appends its numbered job_events row in the same
--   statement (the `changed` and `recorded` CTEs), so the two commit together; the event's
--   insert trigger notifies listeners when, and only if, it commits. Each event also takes
--   the next position of its tenant's history (the `positions` CTE: take_event_positions,
--   one call per tenant, in tenant order), which follows commit order. The event records the
--   trace context of the change, so whoever delivers it can join the trace.
-- * Every job and event has a tenant. What a caller asks for is looked up within its tenant
--   ($n::text parameters named tenant below): another tenant's job is not there for it.
--   Statements the service runs for itself (workers, maintenance) take any tenant's jobs.
--   Each event records its actor: the caller's `key:<prefix>` or `jwt:<subject>`, or
--   'worker' / 'maintenance'.
-- * A statement that changes several jobs first locks their rows in id order (the `locked`
--   CTE, FOR NO KEY UPDATE: the lock UPDATE itself takes, so foreign-key checks of new
--   events are not held up). Concurrent statements may then wait for each other but never
--   deadlock; a row that changed while it was waited for is checked against its status again.


-- name: ping
-- Answers if PostgreSQL answers: the store's health check.
SELECT 1;


-- name: get_job
-- A job's current state by id ($1), within the tenant $2 (NULL: any tenant, for the service
-- itself).
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt
  FROM jobs
 WHERE id = $1::uuid
   AND ($2::text IS NULL OR tenant = $2::text);


-- name: get_job_by_request_id
-- The job the tenant $1 first used a SubmitJob idempotency key ($2) for, with the digest of
-- that request, so a retry of the same request gets the same job and a different one is
-- refused. Keys are per tenant: another tenant's key is never found.
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt,
       request_hash
  FROM jobs
 WHERE tenant = $1::text
   AND request_id = $2::text;


-- name: get_jobs_by_request_ids
-- The jobs the tenant $1 first used any of these idempotency keys ($2) for, each with its key
-- and the digest of its request: what BatchSubmitJobs looks up in one round trip for the jobs
-- of a batch whose keys were taken (a retried batch). Per tenant, as get_job_by_request_id.
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt,
       request_id, request_hash
  FROM jobs
 WHERE tenant = $1::text
   AND request_id = ANY ($2::text[]);


-- name: tenant_unfinished_jobs
-- How many PENDING or IN_PROGRESS jobs the tenant $1 has (kept by triggers on jobs).
SELECT coalesce(max(unfinished_jobs), 0) AS unfinished_jobs
  FROM tenant_usage
 WHERE tenant = $1::text;


-- name: list_jobs
-- One page of ListJobs: the tenant $2's jobs newest first, at most $1 rows (the page size
-- plus one, to learn whether another page follows). As written it lists all of them. The
-- store inserts the filter's conditions and the cursor of the previous page at the
-- `-- conditions` line, each as `AND <fragment>` from a fixed set (jobcore.store), with
-- parameters numbered from $3; no text of the request ever enters the SQL. The order
-- (created_at, id), both descending, after the tenant, is that of the jobs_by_tenant_*
-- indexes, so a page reads about page-size rows.
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt
  FROM jobs
 WHERE tenant = $2::text
   -- conditions
 ORDER BY created_at DESC, id DESC
 LIMIT $1::integer;


-- name: events_after
-- A job's ($1) events numbered above $2, oldest first, within the tenant $3: what a watcher
-- may have missed.
SELECT job_id, sequence, tenant, position, status, occurred_at, result, error, attempt,
       traceparent, actor, operation, job_created_at
  FROM job_events
 WHERE job_id = $1::uuid
   AND sequence > $2::integer
   AND tenant = $3::text
 ORDER BY sequence;


-- name: tenant_events_after
-- The tenant $1's events after position $2, in position (commit) order, at most $3: what a
-- watcher of many jobs missed. Positions of a tenant have no gaps, so a reader that saw N
-- and reads "after N" misses nothing.
SELECT job_id, sequence, tenant, position, status, occurred_at, result, error, attempt,
       traceparent, actor, operation, job_created_at
  FROM job_events
 WHERE tenant = $1::text
   AND position > $2::bigint
 ORDER BY position
 LIMIT $3::integer;


-- name: tenant_last_event_position
-- The position of the tenant $1's latest committed event (0 before its first).
SELECT coalesce(max(last_event_position), 0) AS last_event_position
  FROM tenant_usage
 WHERE tenant = $1::text;


-- name: create_jobs
-- Store new PENDING jobs and their first events. One row per job, zipped from one array per
-- column: ids $1, operations $2, numbers $3 (little-endian float64s), number counts $4,
-- idempotency keys $5 and request digests $6 (NULL without a key), trace contexts $7,
-- tenants $8, actors $9, and each tenant's limit on unfinished jobs $10.
-- Quota: a job is stored only while its tenant's unfinished jobs (tenant_usage, as committed
-- when the statement starts), with those ahead of it in this statement, stay within its
-- limit; each stored job comes back with that count ahead of it (its backlog). Concurrent
-- statements do not wait for each other's counts, so a tenant may pass its limit by the jobs
-- of statements running at the same moment, never by more.
-- A job whose key the tenant already used is not inserted and not returned, nor is one over
-- the quota; the store then looks the key up, or reports the quota. Keys are inserted in one
-- order (the unique index makes a second insert of a key wait for the first), so concurrent
-- batches never deadlock. dispatched_at is set optimistically: the server publishes right
-- after commit, and clears it if that fails.
WITH new_jobs AS (
    SELECT *,
           row_number() OVER (PARTITION BY tenant ORDER BY position) AS rank_in_tenant
      FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::integer[], $5::text[],
                  $6::bytea[], $7::text[], $8::text[], $9::text[], $10::bigint[])
           WITH ORDINALITY
           AS new_jobs (id, operation, numbers, number_count, request_id, request_hash,
                        traceparent, tenant, actor, max_unfinished_jobs, position)
),
admitted AS (
    SELECT new_jobs.*,
           coalesce(usage.unfinished_jobs, 0) + new_jobs.rank_in_tenant - 1 AS backlog
      FROM new_jobs
      LEFT JOIN tenant_usage AS usage ON usage.tenant = new_jobs.tenant
     WHERE coalesce(usage.unfinished_jobs, 0) + new_jobs.rank_in_tenant
           <= new_jobs.max_unfinished_jobs
),
changed AS (
    INSERT INTO jobs (id, tenant, operation, status, numbers, number_count, last_sequence,
                      dispatched_at, created_at, updated_at, request_id, request_hash)
    SELECT id, tenant, operation, 'PENDING', numbers, number_count, 1,
           now(), now(), now(), request_id, request_hash
      FROM admitted
     ORDER BY tenant, request_id
        ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING
    RETURNING jobs.id, jobs.tenant, jobs.status, jobs.operation, jobs.created_at,
              jobs.updated_at, jobs.last_sequence, jobs.result, jobs.error, jobs.attempt
),
positions AS (
    SELECT tenant, take_event_positions(tenant, events) AS first_position
      FROM (SELECT tenant, count(*) AS events
              FROM changed
             GROUP BY tenant
             ORDER BY tenant) AS per_tenant
),
recorded AS (
    INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at, result,
                            error, attempt, traceparent, actor, operation, job_created_at)
    SELECT changed.id, changed.last_sequence, changed.tenant, positions.first_position - 1
           + row_number() OVER (PARTITION BY changed.tenant ORDER BY changed.id),
           changed.status, changed.updated_at, changed.result, changed.error, changed.attempt,
           admitted.traceparent, admitted.actor, changed.operation, changed.created_at
      FROM changed
      JOIN admitted ON admitted.id = changed.id
      JOIN positions ON positions.tenant = changed.tenant
)
SELECT changed.id, changed.status, changed.operation, changed.created_at, changed.updated_at,
       changed.last_sequence, changed.result, changed.error, changed.attempt, admitted.backlog
  FROM changed
  JOIN admitted ON admitted.id = changed.id;


-- name: claim_jobs
-- Move PENDING jobs to IN_PROGRESS for a new attempt, each with its own lease: ids $1,
-- leases $2, trace contexts $3 (one row per job; each id once). The compare-and-set on
-- PENDING makes duplicate deliveries harmless: a job not PENDING any more is not returned.
-- A small job's numbers (at most $4 of them) come back with the claim, so the worker needs no
-- second read; a larger job's come back NULL and are read when it is computed (job_numbers),
-- so a sleeping job holds none in the worker's memory.
WITH locked AS (
    SELECT id
      FROM jobs
     WHERE id = ANY ($1::uuid[])
       AND status = 'PENDING'
     ORDER BY id
       FOR NO KEY UPDATE
),
wanted AS (
    SELECT *
      FROM unnest($1::uuid[], $2::interval[], $3::text[]) AS wanted (id, lease, traceparent)
),
changed AS (
    UPDATE jobs
       SET status = 'IN_PROGRESS',
           attempt = jobs.attempt + 1,
           lease_expires_at = now() + wanted.lease,
           last_sequence = jobs.last_sequence + 1,
           updated_at = now()
      FROM locked, wanted
     WHERE jobs.id = locked.id
       AND jobs.id = wanted.id
       AND jobs.status = 'PENDING'
    RETURNING jobs.id, jobs.tenant, jobs.status, jobs.operation, jobs.created_at,
              jobs.updated_at, jobs.last_sequence, jobs.result, jobs.error, jobs.attempt,
              jobs.number_count,
              CASE WHEN jobs.number_count <= $4::integer THEN jobs.numbers END AS numbers,
              wanted.traceparent
),
positions AS (
    SELECT tenant, take_event_positions(tenant, events) AS first_position
      FROM (SELECT tenant, count(*) AS events
              FROM changed
             GROUP BY tenant
             ORDER BY tenant) AS per_tenant
),
recorded AS (
    INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at, result,
                            error, attempt, traceparent, actor, operation, job_created_at)
    SELECT changed.id, changed.last_sequence, changed.tenant, positions.first_position - 1
           + row_number() OVER (PARTITION BY changed.tenant ORDER BY changed.id),
           changed.status, changed.updated_at, changed.result, changed.error, changed.attempt,
           changed.traceparent, 'worker', changed.operation, changed.created_at
      FROM changed
      JOIN positions ON positions.tenant = changed.tenant
)
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt,
       number_count, numbers
  FROM changed;


-- name: job_numbers
-- The numbers of jobs $1 (ids), read by a worker just before it computes a job whose
-- numbers did not come with its claim.
SELECT id, numbers
  FROM jobs
 WHERE id = ANY ($1::uuid[]);


-- name: renew_leases
-- Extend the leases of running attempts to $3 from now: job ids $1 with the attempt numbers
-- $2 that hold them. Fenced on the attempt, so a lost attempt cannot keep alive the attempt
-- that replaced it; returns the claims still held (job id and attempt).
WITH locked AS (
    SELECT id
      FROM jobs
     WHERE id = ANY ($1::uuid[])
       AND status = 'IN_PROGRESS'
     ORDER BY id
       FOR NO KEY UPDATE
)
UPDATE jobs
   SET lease_expires_at = now() + $3::interval
  FROM locked, unnest($1::uuid[], $2::integer[]) AS held (id, attempt)
 WHERE jobs.id = locked.id
   AND jobs.id = held.id
   AND jobs.attempt = held.attempt
   AND jobs.status = 'IN_PROGRESS'
RETURNING jobs.id, jobs.attempt;


-- name: finish_jobs
-- Record the outcomes of running attempts: job ids $1, attempt numbers $2, final statuses $3
-- (SUCCESS or FAILED), results $4, errors $5, trace contexts $6 (one row per attempt).
-- Fenced on the attempt number, so a stale or duplicate worker can never overwrite a result,
-- nor finish a job that was cancelled or handed to another attempt.
WITH locked AS (
    SELECT id
      FROM jobs
     WHERE id = ANY ($1::uuid[])
       AND status = 'IN_PROGRESS'
     ORDER BY id
       FOR NO KEY UPDATE
),
outcomes AS (
    SELECT *
      FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::double precision[], $5::text[],
                  $6::text[])
           AS outcomes (id, attempt, status, result, error, traceparent)
),
changed AS (
    UPDATE jobs
       SET status = outcomes.status,
           result = outcomes.result,
           error = outcomes.error,
           lease_expires_at = NULL,
           last_sequence = jobs.last_sequence + 1,
           updated_at = now()
      FROM locked, outcomes
     WHERE jobs.id = locked.id
       AND jobs.id = outcomes.id
       AND jobs.attempt = outcomes.attempt
       AND jobs.status = 'IN_PROGRESS'
    RETURNING jobs.id, jobs.tenant, jobs.status, jobs.operation, jobs.created_at,
              jobs.updated_at, jobs.last_sequence, jobs.result, jobs.error, jobs.attempt,
              outcomes.traceparent
),
positions AS (
    SELECT tenant, take_event_positions(tenant, events) AS first_position
      FROM (SELECT tenant, count(*) AS events
              FROM changed
             GROUP BY tenant
             ORDER BY tenant) AS per_tenant
),
recorded AS (
    INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at, result,
                            error, attempt, traceparent, actor, operation, job_created_at)
    SELECT changed.id, changed.last_sequence, changed.tenant, positions.first_position - 1
           + row_number() OVER (PARTITION BY changed.tenant ORDER BY changed.id),
           changed.status, changed.updated_at, changed.result, changed.error, changed.attempt,
           changed.traceparent, 'worker', changed.operation, changed.created_at
      FROM changed
      JOIN positions ON positions.tenant = changed.tenant
)
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt
  FROM changed;


-- name: cancel_job
-- Move the tenant $4's PENDING or IN_PROGRESS job ($1) to CANCELLED with the error $2,
-- recording the trace context $3 and the actor $5 with its event. Returns nothing if the job
-- is not there or already final (the store then reads it to tell which).
WITH changed AS (
    UPDATE jobs
       SET status = 'CANCELLED',
           error = $2::text,
           lease_expires_at = NULL,
           last_sequence = last_sequence + 1,
           updated_at = now()
     WHERE id = $1::uuid
       AND tenant = $4::text
       AND status IN ('PENDING', 'IN_PROGRESS')
    RETURNING id, tenant, status, operation, created_at, updated_at, last_sequence, result,
              error, attempt
),
positions AS (
    SELECT tenant, take_event_positions(tenant, events) AS first_position
      FROM (SELECT tenant, count(*) AS events
              FROM changed
             GROUP BY tenant
             ORDER BY tenant) AS per_tenant
),
recorded AS (
    INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at, result,
                            error, attempt, traceparent, actor, operation, job_created_at)
    SELECT changed.id, changed.last_sequence, changed.tenant, positions.first_position - 1
           + row_number() OVER (PARTITION BY changed.tenant ORDER BY changed.id),
           changed.status, changed.updated_at, changed.result, changed.error, changed.attempt,
           $3::text, $5::text, changed.operation, changed.created_at
      FROM changed
      JOIN positions ON positions.tenant = changed.tenant
)
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt
  FROM changed;


-- name: requeue_expired
-- Take back up to $2 running jobs whose lease ran out (their worker was lost): PENDING again,
-- or FAILED once they reached $1 attempts; the trace context $3 goes with their events.
-- dispatched_at becomes NULL, so the re-dispatch sweep publishes them again at once.
-- SKIP LOCKED lets every server run this at once without taking a job twice.
WITH expired AS (
    SELECT id
      FROM jobs
     WHERE status = 'IN_PROGRESS'
       AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT $2::integer
       FOR UPDATE SKIP LOCKED
),
changed AS (
    UPDATE jobs
       SET status = CASE WHEN jobs.attempt >= $1::integer THEN 'FAILED' ELSE 'PENDING' END,
           error = CASE WHEN jobs.attempt >= $1::integer
                        THEN format('abandoned: the worker running it was lost %s times in a row',
                                    jobs.attempt)
                   END,
           lease_expires_at = NULL,
           dispatched_at = NULL,
           last_sequence = jobs.last_sequence + 1,
           updated_at = now()
      FROM expired
     WHERE jobs.id = expired.id
    RETURNING jobs.id, jobs.tenant, jobs.status, jobs.operation, jobs.created_at,
              jobs.updated_at, jobs.last_sequence, jobs.result, jobs.error, jobs.attempt
),
positions AS (
    SELECT tenant, take_event_positions(tenant, events) AS first_position
      FROM (SELECT tenant, count(*) AS events
              FROM changed
             GROUP BY tenant
             ORDER BY tenant) AS per_tenant
),
recorded AS (
    INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at, result,
                            error, attempt, traceparent, actor, operation, job_created_at)
    SELECT changed.id, changed.last_sequence, changed.tenant, positions.first_position - 1
           + row_number() OVER (PARTITION BY changed.tenant ORDER BY changed.id),
           changed.status, changed.updated_at, changed.result, changed.error, changed.attempt,
           $3::text, 'maintenance', changed.operation, changed.created_at
      FROM changed
      JOIN positions ON positions.tenant = changed.tenant
)
SELECT id, status, operation, created_at, updated_at, last_sequence, result, error, attempt
  FROM changed;


-- name: mark_undispatched
-- Record that publishing these jobs' ($1) broker messages failed (dispatched_at NULL), so
-- the re-dispatch sweep sends them soon.
WITH locked AS (
    SELECT id
      FROM jobs
     WHERE id = ANY ($1::uuid[])
     ORDER BY id
       FOR NO KEY UPDATE
)
UPDATE jobs
   SET dispatched_at = NULL
  FROM locked
 WHERE jobs.id = locked.id;


-- name: take_undispatched
-- Take up to $2 PENDING jobs whose message failed (dispatched_at NULL, those first) or was
-- published more than $1 ago and may be lost (with $1 NULL, only the former), marking them
-- dispatched now; their ids, and their tenants' unfinished jobs (the backlog the wake-up's
-- priority is chosen by).
-- SKIP LOCKED lets several servers sweep at once without sending a job twice.
UPDATE jobs
   SET dispatched_at = now()
 WHERE id IN (
        SELECT id
          FROM jobs
         WHERE status = 'PENDING'
           AND (dispatched_at IS NULL OR dispatched_at < now() - $1::interval)
         ORDER BY dispatched_at NULLS FIRST
         LIMIT $2::integer
           FOR UPDATE SKIP LOCKED
       )
RETURNING id,
          (SELECT coalesce(max(unfinished_jobs), 0)
             FROM tenant_usage
            WHERE tenant_usage.tenant = jobs.tenant) AS backlog;


-- name: purge_finished
-- Retention: delete up to $2 finished jobs last changed more than $1 ago (their events go by
-- cascade); their ids. SKIP LOCKED lets every server run this at once.
DELETE FROM jobs
 WHERE id IN (
        SELECT id
          FROM jobs
         WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
           AND updated_at < now() - $1::interval
         LIMIT $2::integer
           FOR UPDATE SKIP LOCKED
       )
RETURNING id;


-- name: insert_api_key
-- Store a new API key: id $1, public prefix $2, SHA-256 of the whole key $3 (never the key
-- itself), tenant $4, scopes $5, name $6, expiry $7 (NULL: never). A prefix or hash already
-- taken (the random prefix drawn twice) inserts nothing and returns no row, and the caller
-- draws a new key. jobcore.keys.store runs this block and the three after it.
INSERT INTO api_keys (id, prefix, secret_hash, tenant, scopes, name, created_at, expires_at)
VALUES ($1::uuid, $2::text, $3::bytea, $4::text, $5::text[], $6::text, now(),
        $7::timestamptz)
    ON CONFLICT DO NOTHING
RETURNING id, prefix, tenant, scopes, name, created_at, expires_at, revoked_at;


-- name: list_api_keys
-- Every key, newest first, without its hash; with $1 false only those that work now (not
-- revoked, not expired).
SELECT id, prefix, tenant, scopes, name, created_at, expires_at, revoked_at
  FROM api_keys
 WHERE $1::boolean
    OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))
 ORDER BY created_at DESC, id DESC;


-- name: revoke_api_key
-- Revoke the key $1 now, or keep the time it was first revoked: revoking twice changes
-- nothing. No row: no such key.
UPDATE api_keys
   SET revoked_at = coalesce(revoked_at, now())
 WHERE id = $1::uuid
RETURNING id, prefix, tenant, scopes, name, created_at, expires_at, revoked_at;


-- name: api_key_ring
-- Every key with its hash, revoked and expired ones too (so a caller is told why its key
-- stopped working): what each server's key ring holds in memory and re-reads every
-- API_KEY_REFRESH_SECONDS.
SELECT id, prefix, secret_hash, tenant, scopes, name, created_at, expires_at, revoked_at
  FROM api_keys;
