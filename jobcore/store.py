"""JobStore: the one owner of every statement the service runs against PostgreSQL.

Each method runs a named query of `jobcore/sql/queries.sql` (read by jobcore.queries) on
the pool of jobcore.database, and turns its rows into domain values with jobcore.rows.
Every state change is one statement that updates the job and appends its numbered event
together; the event's insert trigger notifies listeners when, and only if, it commits.
Creates, claims and finishes made concurrently in one process share statements (see
jobcore.batching): the statements take one array per column.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import asyncpg

from jobcore.batching import Coalescer, Item, Result
from jobcore.database import (
    CONFLICT_MESSAGE,
    DEFAULT_POOL_WAIT,
    Database,
    Transaction,
    create_pool,
)
from jobcore.errors import (
    IdempotencyKeyReusedError,
    JobAlreadyFinishedError,
    JobNotFoundError,
    QuotaExceededError,
    StoreConflictError,
)
from jobcore.identity import Principal
from jobcore.listing import Condition, Field, Operator, PageCursor
from jobcore.models import Claim, Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.queries import QUERIES, QueryName
from jobcore.rows import claim_from_row, event_from_row, job_from_row
from jobcore.tracing import current_traceparent

logger = logging.getLogger(__name__)

# Most changes in one statement, and statements of one kind running at once, per process:
# commits of notifying transactions are serialised, so a few large batches go furthest.
# One at a time keeps calls committing in the order they were made: with two, a later
# batch could take a row's lock first (a duplicate finish overtaking the original one).
_MAX_BATCH = 100
_BATCHES_IN_FLIGHT = 1
# While callers come together, a statement of a kind every 20 ms at most (see
# jobcore.batching): a saturated server then spends a small share of a core on statements
# instead of most of one on statements of one or two jobs. A lone caller never waits.
_MIN_BATCH_INTERVAL_SECONDS = 0.02
# New jobs' numbers per statement at most (one job always goes, whatever its size): asyncpg
# encodes a statement's arguments into one buffer, so concurrent big jobs sharing a
# statement would otherwise hold up to 100 x a job's size at once.
_MAX_BATCH_NUMBER_BYTES = 16 * 1024 * 1024
# Inserts of one submission within its batch: a key whose job is purged between the
# insert and the lookup is free again, so the job is inserted anew; a key freed every
# time means retention races that submit, which is then told to retry.
_CREATE_ROUNDS = 3
# A claim brings the numbers of a job of up to this many (8 KiB); a larger job's are read when
# it is computed (JobStore.numbers), so a job waiting out its delay holds no numbers in memory.
CLAIM_NUMBERS_MAX = 1024
# Errors are stored and sent in notifications; keep them far below pg_notify's 8000 bytes.
MAX_ERROR_CHARS = 1000
CANCELLED_ERROR = "cancelled by request"

# ListJobs' filter: the SQL fragment for each (field, operator) the filter language allows,
# tested against one parameter ($n). Only these fixed texts enter the statement; a value
# from the request only ever travels as a parameter.
_CONDITION_SQL: Final[Mapping[tuple[Field, Operator], str]] = {
    ("status", "="): "status = ${n}::text",
    ("status", "!="): "status <> ${n}::text",
    ("operation", "="): "operation = ${n}::text",
    ("operation", "!="): "operation <> ${n}::text",
    ("create_time", "="): "created_at = ${n}::timestamptz",
    ("create_time", "!="): "created_at <> ${n}::timestamptz",
    ("create_time", "<"): "created_at < ${n}::timestamptz",
    ("create_time", "<="): "created_at <= ${n}::timestamptz",
    ("create_time", ">"): "created_at > ${n}::timestamptz",
    ("create_time", ">="): "created_at >= ${n}::timestamptz",
}
# Jobs after the previous page's last one, in the listing's order (created_at, id) descending.
_AFTER_CURSOR_SQL: Final = "(created_at, id) < (${n}::timestamptz, ${m}::uuid)"
# Where list_jobs takes its conditions, one `AND <fragment>` line each (see queries.sql).
_CONDITIONS_LINE: Final = "   -- conditions\n"
_LIST_HEAD, _marker, _LIST_TAIL = QUERIES["list_jobs"].sql.partition(_CONDITIONS_LINE)
if not _marker:
    raise RuntimeError("the list_jobs query has no `-- conditions` line")
# Filter shapes whose statement text is kept; each text is prepared once per connection.
_LIST_SHAPES_KEPT = 128


@functools.lru_cache(maxsize=_LIST_SHAPES_KEPT)
def _list_jobs_sql(shape: tuple[tuple[Field, Operator], ...], *, after_cursor: bool) -> str:
    """list_jobs with one whitelisted fragment per condition (parameters from $3), and the
    cursor's after them; $1 is the row limit, $2 the tenant. Built once per shape, so the text, and with it
    the prepared statement, is reused."""
    fragments = [_CONDITION_SQL[key].format(n=n) for n, key in enumerate(shape, start=3)]
    if after_cursor:
        fragments.append(_AFTER_CURSOR_SQL.format(n=len(shape) + 3, m=len(shape) + 4))
    return _LIST_HEAD + "".join(f"   AND {fragment}\n" for fragment in fragments) + _LIST_TAIL


def _traceparent() -> str | None:
    """The caller's trace context, recorded with the events of the changes it makes."""
    return current_traceparent()


def request_digest(operation: Operation, numbers: bytes | memoryview) -> bytes:
    """What makes two submissions "the same request" for an idempotency key."""
    digest = hashlib.sha256(operation.value.encode() + b"\0")
    digest.update(numbers)  # in place: no copy of a large payload
    return digest.digest()


# Told of a submitted job as soon as it is stored (created=True) or found under its idempotency
# key (created=False), with its tenant's unfinished jobs ahead of it; see JobStore.create.
StoredCallback = Callable[[Job, bool, int], None]


@dataclass(frozen=True, slots=True)
class _NewJob:
    job_id: uuid.UUID
    operation: Operation
    numbers: bytes | memoryview  # pack_numbers' storage form
    request_id: str | None
    request_hash: bytes | None
    traceparent: str | None
    tenant: str
    actor: str
    max_unfinished_jobs: int
    on_stored: StoredCallback | None


@dataclass(frozen=True, slots=True)
class Submission:
    """One job of JobStore.create_batch: what JobStore.create takes for one."""

    job_id: uuid.UUID
    operation: Operation
    numbers: bytes | memoryview  # pack_numbers' storage form
    request_id: str | None = None


# What a submission comes to: the job, whether this call created it, and its tenant's
# unfinished jobs ahead of it when it was stored.
_Stored = tuple[Job, bool, int]


@dataclass(frozen=True, slots=True)
class _ClaimRequest:
    job_id: uuid.UUID
    lease: timedelta
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class _NumbersRequest:
    job_id: uuid.UUID
    number_count: int


def _requested_bytes(request: _NumbersRequest) -> int:
    return 8 * request.number_count


@dataclass(frozen=True, slots=True)
class _Finish:
    claim: Claim
    outcome: Outcome
    traceparent: str | None


def _batched(
    run_batch: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
    *,
    size_of: Callable[[Item], int] | None = None,
) -> Coalescer[Item, Result]:
    """One kind of statement, shared by the concurrent calls of this process."""
    return Coalescer(
        run_batch,
        max_batch=_MAX_BATCH,
        max_in_flight=_BATCHES_IN_FLIGHT,
        min_interval=_MIN_BATCH_INTERVAL_SECONDS,
        size_of=size_of,
        max_batch_size=_MAX_BATCH_NUMBER_BYTES,
    )


def _no_quota(_tenant: str) -> int:
    """No limit (a store that never creates jobs, such as the worker's)."""
    return 2**62


def _number_bytes(new_job: _NewJob) -> int:
    return len(new_job.numbers)


def _create_arguments(new_jobs: Sequence[_NewJob]) -> list[list[object]]:
    """The create_jobs statement's arguments: one array per column."""
    return [
        [new.job_id for new in new_jobs],
        [new.operation.value for new in new_jobs],
        [new.numbers for new in new_jobs],
        [len(new.numbers) // 8 for new in new_jobs],
        [new.request_id for new in new_jobs],
        [new.request_hash for new in new_jobs],
        [new.traceparent for new in new_jobs],
        [new.tenant for new in new_jobs],
        [new.actor for new in new_jobs],
        [new.max_unfinished_jobs for new in new_jobs],
    ]


def _by_number_bytes(
    waiting: list[tuple[int, _NewJob]],
) -> Iterator[list[tuple[int, _NewJob]]]:
    """The jobs in runs of at most _MAX_BATCH_NUMBER_BYTES of numbers (a larger job alone)."""
    run: list[tuple[int, _NewJob]] = []
    size = 0
    for item in waiting:
        if run and size + len(item[1].numbers) > _MAX_BATCH_NUMBER_BYTES:
            yield run
            run, size = [], 0
        run.append(item)
        size += len(item[1].numbers)
    if run:
        yield run


def _tell_stored(new: _NewJob, stored: _Stored) -> None:
    """Run the job's on_stored callback; its failure is logged, never raised."""
    if new.on_stored is None:
        return
    try:
        new.on_stored(*stored)
    except Exception:
        # The job is stored either way; its callers still get their answers.
        logger.exception("job %s: on_stored failed", stored[0].id)


class JobStore:
    """Jobs and their history in PostgreSQL, the single source of truth.

    Creates, claims and finishes made concurrently in one process share statements
    (see jobcore.batching); each caller still gets its own answer.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        pool_wait: timedelta = DEFAULT_POOL_WAIT,
        max_unfinished_jobs: Callable[[str], int] = _no_quota,
    ) -> None:
        """`max_unfinished_jobs(tenant)` is the tenant's quota (the server's settings)."""
        self._database = Database(pool, pool_wait=pool_wait)
        self._max_unfinished_jobs = max_unfinished_jobs
        self._creates = _batched(self._create_batch, size_of=_number_bytes)
        self._claims = _batched(self._claim_batch)
        self._numbers = _batched(self._numbers_batch, size_of=_requested_bytes)
        self._finishes = _batched(self._finish_batch)
        # create_batch's transactions, which run on after their callers went away.
        self._batches: set[asyncio.Task[list[_Stored]]] = set()

    @classmethod
    async def connect(
        cls,
        database_url: str,
        *,
        pool_size: int,
        pool_wait: timedelta = DEFAULT_POOL_WAIT,
        max_unfinished_jobs: Callable[[str], int] = _no_quota,
    ) -> JobStore:
        """A store on a new pool of up to `pool_size` connections (opened as needed).

        Connections broken by a database restart fail their call (StoreUnavailableError,
        which callers retry) and are replaced by the pool. A call that finds no connection
        free within `pool_wait` fails with StoreOverloadedError.
        """
        return cls(
            await create_pool(database_url, pool_size=pool_size),
            pool_wait=pool_wait,
            max_unfinished_jobs=max_unfinished_jobs,
        )

    @property
    def database(self) -> Database:
        """The pool this store runs on, for the other owners of statements (jobcore.keys)."""
        return self._database

    async def close(self) -> None:
        """Close the pool's connections (waiting briefly for calls in progress)."""
        await self._database.close()

    async def _fetch(self, query: QueryName, *arguments: object) -> list[asyncpg.Record]:
        """Run the named query with its $1, $2 ... arguments (a TransientError if that fails in
        a way that passes)."""
        return await self._database.fetch(QUERIES[query].sql, *arguments)

    async def ping(self) -> None:
        """Raise a TransientError (StoreUnavailableError, say) unless PostgreSQL answers a trivial query."""
        await self._fetch("ping")

    async def create(
        self,
        *,
        job_id: uuid.UUID,
        operation: Operation,
        numbers: bytes | memoryview,
        owner: Principal,
        request_id: str | None = None,
        on_stored: StoredCallback | None = None,
    ) -> tuple[Job, bool]:
        """Store a new PENDING job of the owner's tenant and its first event; (job, created).

        With a `request_id` the tenant already used for the same request, the original job is
        returned with created=False; for a different request it is an error. A tenant that
        already has its maximum of unfinished jobs gets QuotaExceededError.
        `on_stored(job, created, backlog)` runs as soon as the answer is known, in the
        statement's own task: even if the caller was cancelled meanwhile (a deadline, a
        hang-up), so what must follow a stored job (its wake-up) cannot be lost with the caller.
        """
        job, created, _ = await self._creates(
            _NewJob(
                job_id=job_id,
                operation=operation,
                numbers=numbers,
                request_id=request_id or None,
                request_hash=request_digest(operation, numbers) if request_id else None,
                traceparent=_traceparent(),
                tenant=owner.tenant,
                actor=owner.actor,
                max_unfinished_jobs=self._max_unfinished_jobs(owner.tenant),
                on_stored=on_stored,
            )
        )
        return job, created

    async def create_batch(
        self,
        submissions: Sequence[Submission],
        *,
        owner: Principal,
        on_stored: StoredCallback | None = None,
    ) -> list[tuple[Job, bool]]:
        """Store new PENDING jobs of the owner's tenant in one transaction, all or none;
        (job, created) for each, in order.

        Each job as `create` stores one, except that every refusal is the whole batch's: a
        `request_id` the tenant used for a different request (IdempotencyKeyReusedError), or
        a batch that does not fit within the tenant's maximum of unfinished jobs as a whole
        (QuotaExceededError). A key may appear only once in a batch (else ValueError).
        A batch is a batch already, so it does not go through the coalescer; its create
        statements keep the same cap on number bytes, several in the transaction if need be.
        `on_stored(job, created, backlog)` runs for each job once the transaction committed,
        in a task of its own that a cancelled caller does not take along (as in `create`).
        """
        keys = [submission.request_id for submission in submissions if submission.request_id]
        if len(set(keys)) != len(keys):
            raise ValueError("a request_id appears more than once in the batch")
        traceparent = _traceparent()
        limit = self._max_unfinished_jobs(owner.tenant)
        new_jobs = [
            _NewJob(
                job_id=submission.job_id,
                operation=submission.operation,
                numbers=submission.numbers,
                request_id=submission.request_id or None,
                request_hash=(
                    request_digest(submission.operation, submission.numbers)
                    if submission.request_id
                    else None
                ),
                traceparent=traceparent,
                tenant=owner.tenant,
                actor=owner.actor,
                max_unfinished_jobs=limit,
                on_stored=on_stored,
            )
            for submission in submissions
        ]
        task = asyncio.create_task(self._store_batch(new_jobs))
        self._batches.add(task)
        task.add_done_callback(self._batch_done)
        stored = await asyncio.shield(task)
        return [(job, created) for job, created, _ in stored]

    def _batch_done(self, task: asyncio.Task[list[_Stored]]) -> None:
        self._batches.discard(task)
        if not task.cancelled():
            # Marks the error as seen: a caller that went away cannot (the database logged
            # its own errors, and the jobs are stored either way or not at all).
            task.exception()

    async def _store_batch(self, new_jobs: list[_NewJob]) -> list[_Stored]:
        answers: dict[int, _Stored] = {}
        async with self._database.transaction() as transaction:
            waiting = list(enumerate(new_jobs))
            for _ in range(_CREATE_ROUNDS):
                missing: list[tuple[int, _NewJob]] = []
                for run in _by_number_bytes(waiting):
                    missing += await self._insert_batch_run(transaction, run, answers)
                if not missing:
                    break
                await self._check_room(transaction, new_jobs[0], len(missing))
                # They fit: their keys' jobs were purged since the insert, or keys found
                # taken held places in the quota's count. Insert them again.
                waiting = missing
            else:
                logger.warning(
                    "a batch's idempotency keys were freed again after each of %d inserts",
                    _CREATE_ROUNDS,
                )
                raise StoreConflictError(CONFLICT_MESSAGE)
        for index, new in enumerate(new_jobs):
            _tell_stored(new, answers[index])
        return [answers[index] for index in range(len(new_jobs))]

    async def _insert_batch_run(
        self,
        transaction: Transaction,
        run: list[tuple[int, _NewJob]],
        answers: dict[int, _Stored],
    ) -> list[tuple[int, _NewJob]]:
        """Insert these jobs of a batch, answering each by its index; those neither inserted
        nor found under their key (over the quota, or their key's job purged meanwhile)."""
        rows = await transaction.fetch(
            QUERIES["create_jobs"].sql, *_create_arguments([new for _, new in run])
        )
        created = {row["id"]: row for row in rows}
        missing: list[tuple[int, _NewJob]] = []
        taken: list[tuple[int, _NewJob]] = []
        for index, new in run:
            row = created.get(new.job_id)
            if row is not None:
                answers[index] = (job_from_row(row), True, row["backlog"])
            elif new.request_id is not None:
                taken.append((index, new))
            else:
                missing.append((index, new))
        if not taken:
            return missing
        found = {
            row["request_id"]: row
            for row in await transaction.fetch(
                QUERIES["get_jobs_by_request_ids"].sql,
                taken[0][1].tenant,
                [new.request_id for _, new in taken],
            )
        }
        for index, new in taken:
            row = found.get(new.request_id)
            if row is None:
                missing.append((index, new))
            elif row["request_hash"] != new.request_hash:
                raise IdempotencyKeyReusedError(new.request_id or "")
            else:
                answers[index] = (job_from_row(row), False, 0)
        return missing

    async def _check_room(self, transaction: Transaction, new: _NewJob, count: int) -> None:
        """QuotaExceededError unless `count` more unfinished jobs fit within new's tenant's
        limit, counting those this transaction stored."""
        rows = await transaction.fetch(QUERIES["tenant_unfinished_jobs"].sql, new.tenant)
        if rows[0]["unfinished_jobs"] + count > new.max_unfinished_jobs:
            raise QuotaExceededError(new.tenant, new.max_unfinished_jobs)

    async def finish_writes(self, *, timeout_seconds: float) -> None:
        """Wait (at most `timeout_seconds`) until the statements queued or running have run.

        At shutdown: their callers may be gone, and their `on_stored` callbacks still run.
        """
        waiting: list[Awaitable[object]] = [
            batches.idle() for batches in (self._creates, self._claims, self._finishes)
        ]
        if self._batches:
            waiting.append(asyncio.wait(set(self._batches)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), timeout_seconds)

    async def _create_batch(self, new_jobs: list[_NewJob]) -> list[_Stored | BaseException]:
        answers: dict[int, _Stored | BaseException] = {}
        waiting = list(enumerate(new_jobs))
        for _ in range(_CREATE_ROUNDS):
            waiting = await self._insert_or_find(waiting, answers)
            if not waiting:
                break
        for index, new in waiting:
            logger.warning(
                "idempotency key %r was freed again after each of %d inserts",
                new.request_id,
                _CREATE_ROUNDS,
            )
            answers[index] = StoreConflictError(CONFLICT_MESSAGE)
        for index, new in enumerate(new_jobs):
            answer = answers[index]
            if isinstance(answer, tuple):
                _tell_stored(new, answer)
        return [answers[index] for index in range(len(new_jobs))]

    async def _insert_or_find(
        self,
        waiting: list[tuple[int, _NewJob]],
        answers: dict[int, _Stored | BaseException],
    ) -> list[tuple[int, _NewJob]]:
        """Insert these jobs, answering each by its index; those whose key was freed meanwhile."""
        rows = await self._fetch("create_jobs", *_create_arguments([new for _, new in waiting]))
        created = {row["id"]: row for row in rows}
        freed: list[tuple[int, _NewJob]] = []
        for index, new in waiting:
            row = created.get(new.job_id)
            if row is not None:
                answers[index] = (job_from_row(row), True, row["backlog"])
                continue
            # The key was used before (perhaps earlier in this batch): same request, same job.
            existing = (
                await self._fetch("get_job_by_request_id", new.tenant, new.request_id)
                if new.request_id is not None
                else []
            )
            if existing:
                if existing[0]["request_hash"] != new.request_hash:
                    answers[index] = IdempotencyKeyReusedError(new.request_id or "")
                else:
                    answers[index] = (job_from_row(existing[0]), False, 0)
            elif await self._over_quota(new):
                answers[index] = QuotaExceededError(new.tenant, new.max_unfinished_jobs)
            else:
                freed.append((index, new))  # its key's job was purged since the insert
        return freed

    async def _over_quota(self, new: _NewJob) -> bool:
        """Whether the job's tenant has no room for another unfinished job."""
        rows = await self._fetch("tenant_unfinished_jobs", new.tenant)
        return bool(rows[0]["unfinished_jobs"] >= new.max_unfinished_jobs)

    async def unfinished_jobs(self, tenant: str) -> int:
        """How many PENDING or IN_PROGRESS jobs the tenant has."""
        rows = await self._fetch("tenant_unfinished_jobs", tenant)
        return int(rows[0]["unfinished_jobs"])

    async def get(self, job_id: uuid.UUID, *, tenant: str | None) -> Job:
        """The job's current state; JobNotFoundError if the tenant has no such job.

        Another tenant's job is not found, exactly as one that never existed. With
        tenant=None (the service itself: workers, maintenance) any tenant's job is found.
        """
        rows = await self._fetch("get_job", job_id, tenant)
        if not rows:
            raise JobNotFoundError(str(job_id))
        return job_from_row(rows[0])

    async def list_jobs(
        self,
        conditions: Sequence[Condition],
        *,
        tenant: str,
        page_size: int,
        after: PageCursor | None,
    ) -> tuple[list[Job], PageCursor | None]:
        """One page of the tenant's jobs, newest first, and the cursor of the next page (None
        on the last)."""
        sql = _list_jobs_sql(
            tuple((condition.field, condition.operator) for condition in conditions),
            after_cursor=after is not None,
        )
        arguments: list[object] = [
            page_size + 1,
            tenant,
            *(condition.value for condition in conditions),
        ]
        if after is not None:
            arguments += [after.created_at, after.job_id]
        rows = await self._database.fetch(sql, *arguments)
        page = [job_from_row(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return page, (PageCursor(page[-1].created_at, page[-1].id) if more else None)

    async def events_after(
        self, job_id: uuid.UUID, sequence: int, *, tenant: str
    ) -> list[JobEvent]:
        """The tenant's job's events with a sequence number above `sequence`, oldest first."""
        rows = await self._fetch("events_after", job_id, sequence, tenant)
        return [event_from_row(row) for row in rows]

    async def tenant_events_after(
        self, tenant: str, position: int, *, limit: int
    ) -> list[JobEvent]:
        """The tenant's events after `position`, in commit order, at most `limit`."""
        rows = await self._fetch("tenant_events_after", tenant, position, limit)
        return [event_from_row(row) for row in rows]

    async def last_event_position(self, tenant: str) -> int:
        """The position of the tenant's latest committed event (0 before its first)."""
        rows = await self._fetch("tenant_last_event_position", tenant)
        return int(rows[0]["last_event_position"])

    async def claim(self, job_id: uuid.UUID, *, lease: timedelta) -> Claim | None:
        """Move a PENDING job to IN_PROGRESS for a new attempt; None if it is not PENDING.

        The compare-and-set makes duplicate deliveries harmless: only one gets the
        claim, and it holds the job until `lease` runs out unless renewed.
        """
        return await self._claims(_ClaimRequest(job_id, lease, _traceparent()))

    async def _claim_batch(self, requests: list[_ClaimRequest]) -> list[Claim | None]:
        # A job asked for twice in one batch is claimed for the first asker only.
        unique = list({request.job_id: request for request in reversed(requests)}.values())
        rows = await self._fetch(
            "claim_jobs",
            [request.job_id for request in unique],
            [request.lease for request in unique],
            [request.traceparent for request in unique],
            CLAIM_NUMBERS_MAX,
        )
        claimed = {row["id"]: row for row in rows}
        answers: list[Claim | None] = []
        for request in requests:
            row = claimed.pop(request.job_id, None)
            answers.append(None if row is None else claim_from_row(row))
        return answers

    async def numbers(self, job_id: uuid.UUID, *, number_count: int) -> bytes | None:
        """The stored numbers of a job (of `number_count` numbers); None if it is gone.

        For a claimed job whose numbers did not come with the claim (Claim.numbers is None).
        """
        return await self._numbers(_NumbersRequest(job_id, number_count))

    async def _numbers_batch(self, requests: list[_NumbersRequest]) -> list[bytes | None]:
        rows = await self._fetch("job_numbers", list({request.job_id for request in requests}))
        found = {row["id"]: row["numbers"] for row in rows}
        return [found.get(request.job_id) for request in requests]

    async def renew(
        self, claims: Sequence[Claim], *, lease: timedelta
    ) -> set[tuple[uuid.UUID, int]]:
        """Extend the leases of these claims in one statement; the (job id, attempt) still held."""
        if not claims:
            return set()
        rows = await self._fetch(
            "renew_leases",
            [claim.job_id for claim in claims],
            [claim.attempt for claim in claims],
            lease,
        )
        return {(row["id"], row["attempt"]) for row in rows}

    async def finish(self, claim: Claim, outcome: Outcome) -> bool:
        """Record the outcome of the claimed attempt; False if that attempt no longer holds the job.

        Fencing on the attempt number means a stale or duplicate worker can never
        overwrite a result, nor finish a job that was cancelled or handed to another.
        """
        return await self._finishes(_Finish(claim, outcome, _traceparent()))

    async def _finish_batch(self, finishes: list[_Finish]) -> list[bool]:
        # The same attempt finished twice in one batch: the first outcome is the one written.
        unique = list({(f.claim.job_id, f.claim.attempt): f for f in reversed(finishes)}.values())
        rows = await self._fetch(
            "finish_jobs",
            [finish.claim.job_id for finish in unique],
            [finish.claim.attempt for finish in unique],
            [
                (JobStatus.SUCCESS if finish.outcome.error is None else JobStatus.FAILED).value
                for finish in unique
            ],
            [finish.outcome.result for finish in unique],
            [
                None if finish.outcome.error is None else finish.outcome.error[:MAX_ERROR_CHARS]
                for finish in unique
            ],
            [finish.traceparent for finish in unique],
        )
        # By attempt too: a stale and a current attempt of one job may share the batch.
        recorded = {(row["id"], row["attempt"]): True for row in rows}
        return [recorded.pop((f.claim.job_id, f.claim.attempt), False) for f in finishes]

    async def cancel(self, job_id: uuid.UUID, *, by: Principal) -> Job:
        """Move a PENDING or IN_PROGRESS job of `by`'s tenant to CANCELLED; a cancelled job is
        returned as is.

        JobAlreadyFinishedError if it ended otherwise; JobNotFoundError if the tenant has no
        such job.
        """
        rows = await self._fetch(
            "cancel_job", job_id, CANCELLED_ERROR, _traceparent(), by.tenant, by.actor
        )
        if rows:
            return job_from_row(rows[0])
        job = await self.get(job_id, tenant=by.tenant)
        if job.status != JobStatus.CANCELLED:
            raise JobAlreadyFinishedError(str(job_id), job.status.value)
        return job

    async def requeue_expired(self, *, max_attempts: int, limit: int) -> list[Job]:
        """Take back jobs whose worker's lease ran out: PENDING again, or FAILED after `max_attempts`.

        SKIP LOCKED lets every server run this at once without doing a job twice.
        """
        rows = await self._fetch("requeue_expired", max_attempts, limit, _traceparent())
        return [job_from_row(row) for row in rows]

    async def mark_undispatched(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Record that publishing these jobs' broker messages failed, so the sweep sends them soon."""
        await self._fetch("mark_undispatched", list(job_ids))

    async def take_undispatched(
        self, *, older_than: timedelta | None, limit: int
    ) -> list[tuple[uuid.UUID, int]]:
        """Claim PENDING jobs whose message failed or may be lost, marking them dispatched now;
        each with its tenant's unfinished jobs (its backlog).

        Published jobs count as lost once `older_than` has passed; with None, never.
        SKIP LOCKED lets several servers sweep at once without sending a job twice.
        """
        rows = await self._fetch("take_undispatched", older_than, limit)
        return [(row["id"], row["backlog"]) for row in rows]

    async def purge_finished(self, *, older_than: timedelta, limit: int) -> int:
        """Delete finished jobs (and, by cascade, their events) last changed before `older_than` ago."""
        return len(await self._fetch("purge_finished", older_than, limit))
