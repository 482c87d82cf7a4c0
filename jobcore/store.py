"""PostgreSQL access: the only place that reads or writes jobs and their events.

Every state change is one SQL statement that updates the job and appends its
numbered event together; the event's insert trigger notifies listeners when,
and only if, it commits.

Statements are written once with SQLAlchemy Core (so the schema has one home),
compiled once for asyncpg, and run on an asyncpg pool outside explicit
transactions: one statement is one implicit transaction and one round trip,
and asyncpg keeps each connection's prepared statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import SQLCompiler

from jobcore.batching import Coalescer, Item, Result
from jobcore.errors import (
    IdempotencyKeyReusedError,
    JobAlreadyFinishedError,
    JobNotFoundError,
    StoreConflictError,
    StoreOverloadedError,
    StoreTimeoutError,
    StoreUnavailableError,
    TransientError,
)
from jobcore.listing import Condition, PageCursor
from jobcore.models import Claim, Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.schema import job_events, jobs
from jobcore.tracing import trace_headers

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
# Errors are stored and sent in notifications; keep them far below pg_notify's 8000 bytes.
MAX_ERROR_CHARS = 1000
CANCELLED_ERROR = "cancelled by request"

_JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.status,
    jobs.c.operation,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.last_sequence,
    jobs.c.result,
    jobs.c.error,
    jobs.c.attempt,
)
_UNFINISHED = (JobStatus.PENDING.value, JobStatus.IN_PROGRESS.value)
_FINISHED = tuple(status.value for status in JobStatus if status.is_final)
# How long a call waits for a free pooled connection before the store counts as
# overloaded: long enough to ride out a burst, short enough that callers hear about a
# saturated pool (and can back off) instead of queueing without end.
DEFAULT_POOL_WAIT = timedelta(seconds=5)
# What callers are told; the driver's own text (which may quote SQL) only goes to the log.
_UNAVAILABLE_MESSAGE = "the job store (PostgreSQL) is unavailable"
_OVERLOADED_MESSAGE = "the job store (PostgreSQL) has no connection to spare"
_CONFLICT_MESSAGE = "the job store (PostgreSQL) aborted the change in a conflict; retry it"
_TIMEOUT_MESSAGE = "the job store (PostgreSQL) did not finish the statement in time"
# SQLSTATEs of a server that went away: 57P01 admin_shutdown, 57P02 crash_shutdown,
# 57P03 cannot_connect_now (and the whole class 08, connection exception).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# 40001 serialization_failure, 40P01 deadlock_detected: the transaction was rolled back.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# 57014 query_canceled: statement_timeout (nothing in the store cancels otherwise).
_TIMEOUT_SQLSTATE = "57014"


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq URL asyncpg expects, from SQLAlchemy's `postgresql+asyncpg://` form."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def translate_driver_error(error: BaseException) -> TransientError | None:
    """The domain error a driver or network failure stands for; None for anything else (a bug).

    Every error returned is transient: the same call may succeed if retried later. Its
    message carries no driver text or SQL.
    """
    sqlstate = str(getattr(error, "sqlstate", "") or "")
    if sqlstate in _CONFLICT_SQLSTATES:
        return StoreConflictError(_CONFLICT_MESSAGE)
    if sqlstate == _TIMEOUT_SQLSTATE:
        return StoreTimeoutError(_TIMEOUT_MESSAGE)
    if sqlstate.startswith("53"):  # insufficient resources: 53300 too_many_connections, ...
        return StoreOverloadedError(_OVERLOADED_MESSAGE)
    if (
        sqlstate.startswith("08")
        or sqlstate in _UNAVAILABLE_SQLSTATES
        # Refused or timed-out connects, connections that died under a call, and
        # asyncpg's protocol state when the server dropped a connection mid-call.
        or isinstance(
            error, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
        )
    ):
        return StoreUnavailableError(_UNAVAILABLE_MESSAGE)
    return None


def _traceparent() -> str | None:
    """The caller's trace context, recorded with the events of the changes it makes."""
    return trace_headers().get("traceparent")


def _claim_from_row(row: Row | None) -> Claim | None:
    if row is None:
        return None
    return Claim(
        job_id=row["id"],
        attempt=row["attempt"],
        operation=Operation(row["operation"]),
        numbers=row["numbers"],
        sequence=row["last_sequence"],
    )


class _Compiled:
    """A Core statement compiled once for asyncpg: its SQL and the order of its parameters.

    Bound values given when the statement was built (statuses, say) are kept as defaults;
    the named `sa.bindparam`s are supplied per call.
    """

    def __init__(self, statement: sa.ClauseElement) -> None:
        self._compiled: SQLCompiler = statement.compile(dialect=_DIALECT)  # type: ignore[assignment]
        self.sql = str(self._compiled)
        self._order = tuple(self._compiled.positiontup or ())

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for asyncpg, in the order the SQL numbers them."""
        parameters = self._compiled.construct_params(dict(values))
        return [parameters[name] for name in self._order]


_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


class Row(Protocol):
    """A result row by column name: an asyncpg Record, or a notification's parsed JSON."""

    def __getitem__(self, key: str, /) -> Any: ...


def request_digest(operation: Operation, numbers: bytes | memoryview) -> bytes:
    """What makes two submissions "the same request" for an idempotency key."""
    digest = hashlib.sha256(operation.value.encode() + b"\0")
    digest.update(numbers)  # in place: no copy of a large payload
    return digest.digest()


def _job_from_row(row: Row) -> Job:
    status = JobStatus(row["status"])
    outcome = Outcome(result=row["result"], error=row["error"]) if status.is_final else None
    return Job(
        id=row["id"],
        status=status,
        operation=Operation(row["operation"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sequence=row["last_sequence"],
        outcome=outcome,
        attempts=row["attempt"],
    )


def event_from_row(row: Row) -> JobEvent:
    """A JobEvent from a job_events row (or the same row as JSON, already parsed)."""
    status = JobStatus(row["status"])
    outcome = Outcome(result=row["result"], error=row["error"]) if status.is_final else None
    return JobEvent(
        job_id=row["job_id"],
        sequence=row["sequence"],
        status=status,
        occurred_at=row["occurred_at"],
        outcome=outcome,
        attempts=row["attempt"],
        traceparent=row["traceparent"],
    )


def _with_event(changed: sa.CTE, *, source: sa.CTE | None = None) -> sa.Select[Any]:
    """The job rows of the `changed` CTE, with one job_events row appended for each.

    Both run in one statement, so a state change and its event commit together. The
    event records the trace context of the change, so whoever delivers it can join the
    trace: each row's `traceparent` from `changed`, or from `source` joined on the id,
    else the bound parameter `traceparent`.
    """
    events = sa.select(
        changed.c.id,
        changed.c.last_sequence,
        changed.c.status,
        changed.c.updated_at,
        changed.c.result,
        changed.c.error,
        changed.c.attempt,
    )
    if "traceparent" in changed.c:
        events = events.add_columns(changed.c.traceparent)
    elif source is not None:
        events = events.add_columns(source.c.traceparent).join_from(
            changed, source, source.c.id == changed.c.id
        )
    else:
        events = events.add_columns(sa.bindparam("traceparent", type_=sa.Text, required=False))
    recorded = (
        job_events.insert()
        .from_select(
            [
                "job_id",
                "sequence",
                "status",
                "occurred_at",
                "result",
                "error",
                "attempt",
                "traceparent",
            ],
            events,
        )
        .cte("recorded")
    )
    return sa.select(*(column for column in changed.c if column.name != "traceparent")).add_cte(
        recorded
    )


def _unnest(name: str, **columns: sa.types.TypeEngine[Any]) -> sa.CTE:
    """A CTE of rows zipped from one array parameter per column (one statement, any count)."""
    arrays = [
        sa.bindparam(f"{name}_{column}", type_=ARRAY(kind)) for column, kind in columns.items()
    ]
    rows = sa.func.unnest(*arrays).table_valued(*columns).render_derived(name=f"{name}_rows")
    return sa.select(rows).cte(name)


_COLUMNS_BY_FIELD = {
    "status": jobs.c.status,
    "operation": jobs.c.operation,
    "create_time": jobs.c.created_at,
}


def _condition(condition: Condition) -> sa.ColumnElement[bool]:
    column = _COLUMNS_BY_FIELD[condition.field]
    compare = {
        "=": column.__eq__,
        "!=": column.__ne__,
        "<": column.__lt__,
        "<=": column.__le__,
        ">": column.__gt__,
        ">=": column.__ge__,
    }[condition.operator]
    result: sa.ColumnElement[bool] = compare(condition.value)
    return result


def _next_state(**values: Any) -> dict[str, Any]:
    """The column values of a state change: the given ones plus a new event number and time."""
    return {**values, "last_sequence": jobs.c.last_sequence + 1, "updated_at": sa.func.now()}


def _is(*statuses: JobStatus) -> sa.ColumnElement[bool]:
    """status IN (...), with the statuses written into the SQL.

    Literals, not parameters: a prepared statement's generic plan can then still use
    the partial indexes (WHERE status = 'PENDING', ...) that the sweeps depend on.
    """
    return jobs.c.status.in_([sa.literal_column(f"'{status.value}'") for status in statuses])


def _lease_from_now() -> sa.ColumnElement[Any]:
    return sa.func.now() + sa.bindparam("lease", type_=sa.Interval)


def _locked_in_order(job_ids: str, *statuses: JobStatus) -> sa.CTE:
    """The ids of these jobs (in one of `statuses`, if given), their rows locked in id order.

    Every statement that changes several jobs joins this CTE: its rows are then locked
    in one order (not the order of the input, nor a join's), so concurrent statements
    may wait for each other but never deadlock. A row that changed while it was waited
    for is checked against `statuses` again. FOR NO KEY UPDATE is the lock the UPDATE
    itself takes, so foreign-key checks of new events are not held up.
    """
    locked = sa.select(jobs.c.id).where(
        jobs.c.id == sa.any_(sa.bindparam(job_ids, type_=ARRAY(sa.Uuid)))
    )
    if statuses:
        locked = locked.where(_is(*statuses))
    return locked.order_by(jobs.c.id).with_for_update(key_share=True).cte("locked")


_JOB_ID = sa.bindparam("job_id", type_=sa.Uuid)
_JOB_IDS = sa.bindparam("job_ids", type_=ARRAY(sa.Uuid))
_NOW = sa.func.now()

_NEW_JOBS = _unnest(
    "new_jobs",
    id=sa.Uuid(),
    operation=sa.Text(),
    numbers=sa.LargeBinary(),
    number_count=sa.Integer(),
    request_id=sa.Text(),
    request_hash=sa.LargeBinary(),
    traceparent=sa.Text(),
)
_CREATE = _Compiled(
    _with_event(
        pg_insert(jobs)
        .from_select(
            [
                "id",
                "operation",
                "status",
                "numbers",
                "number_count",
                "last_sequence",
                # Optimistic: the server publishes right after commit, and clears this if that fails.
                "dispatched_at",
                "created_at",
                "updated_at",
                "request_id",
                "request_hash",
            ],
            sa.select(
                _NEW_JOBS.c.id,
                _NEW_JOBS.c.operation,
                sa.literal_column(f"'{JobStatus.PENDING.value}'"),
                _NEW_JOBS.c.numbers,
                _NEW_JOBS.c.number_count,
                sa.literal_column("1"),
                _NOW,
                _NOW,
                _NOW,
                _NEW_JOBS.c.request_id,
                _NEW_JOBS.c.request_hash,
            )
            # Idempotency keys are taken in one order (the unique index makes a second
            # insert of a key wait for the first), so concurrent batches never deadlock.
            .order_by(_NEW_JOBS.c.request_id),
        )
        .on_conflict_do_nothing(
            index_elements=[jobs.c.request_id], index_where=jobs.c.request_id.is_not(None)
        )
        .returning(*_JOB_COLUMNS)
        .cte("changed"),
        source=_NEW_JOBS,
    )
)
_GET = _Compiled(sa.select(*_JOB_COLUMNS).where(jobs.c.id == _JOB_ID))
_GET_BY_REQUEST_ID = _Compiled(
    sa.select(*_JOB_COLUMNS, jobs.c.request_hash).where(
        jobs.c.request_id == sa.bindparam("request_id", type_=sa.Text)
    )
)
_EVENTS_AFTER = _Compiled(
    sa.select(job_events)
    .where(
        job_events.c.job_id == _JOB_ID,
        job_events.c.sequence > sa.bindparam("sequence", type_=sa.Integer),
    )
    .order_by(job_events.c.sequence)
)
_WANTED = _unnest("wanted", id=sa.Uuid(), lease=sa.Interval(), traceparent=sa.Text())
_CLAIMABLE = _locked_in_order("wanted_id", JobStatus.PENDING)
_CLAIM = _Compiled(
    _with_event(
        jobs.update()
        .where(
            jobs.c.id == _CLAIMABLE.c.id,
            jobs.c.id == _WANTED.c.id,
            _is(JobStatus.PENDING),
        )
        .values(
            _next_state(
                status=JobStatus.IN_PROGRESS.value,
                attempt=jobs.c.attempt + 1,
                lease_expires_at=_NOW + _WANTED.c.lease,
            )
        )
        .returning(*_JOB_COLUMNS, jobs.c.numbers, _WANTED.c.traceparent)
        .cte("changed")
    )
)
_HELD = (
    sa.func.unnest(_JOB_IDS, sa.bindparam("attempts", type_=ARRAY(sa.Integer)))
    .table_valued("id", "attempt")
    .render_derived(name="held")
)
_RENEWABLE = _locked_in_order("job_ids", JobStatus.IN_PROGRESS)
_RENEW = _Compiled(
    jobs.update()
    .where(
        jobs.c.id == _RENEWABLE.c.id,
        jobs.c.id == _HELD.c.id,
        jobs.c.attempt == _HELD.c.attempt,
        _is(JobStatus.IN_PROGRESS),
    )
    .values(lease_expires_at=_lease_from_now())
    .returning(jobs.c.id)
)
_OUTCOMES = _unnest(
    "outcomes",
    id=sa.Uuid(),
    attempt=sa.Integer(),
    status=sa.Text(),
    result=sa.Double(),
    error=sa.Text(),
    traceparent=sa.Text(),
)
_FINISHABLE = _locked_in_order("outcomes_id", JobStatus.IN_PROGRESS)
_FINISH = _Compiled(
    _with_event(
        jobs.update()
        .where(
            jobs.c.id == _FINISHABLE.c.id,
            jobs.c.id == _OUTCOMES.c.id,
            jobs.c.attempt == _OUTCOMES.c.attempt,
            _is(JobStatus.IN_PROGRESS),
        )
        .values(
            _next_state(
                status=_OUTCOMES.c.status,
                result=_OUTCOMES.c.result,
                error=_OUTCOMES.c.error,
                lease_expires_at=None,
            )
        )
        .returning(*_JOB_COLUMNS, _OUTCOMES.c.traceparent)
        .cte("changed")
    )
)
_CANCEL = _Compiled(
    _with_event(
        jobs.update()
        .where(jobs.c.id == _JOB_ID, _is(JobStatus.PENDING, JobStatus.IN_PROGRESS))
        .values(
            _next_state(
                status=JobStatus.CANCELLED.value, error=CANCELLED_ERROR, lease_expires_at=None
            )
        )
        .returning(*_JOB_COLUMNS)
        .cte("changed")
    )
)
_EXPIRED = (
    sa.select(jobs.c.id)
    .where(_is(JobStatus.IN_PROGRESS), jobs.c.lease_expires_at < _NOW)
    .order_by(jobs.c.lease_expires_at)
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .with_for_update(skip_locked=True)
    .cte("expired")
)
_GAVE_UP = jobs.c.attempt >= sa.bindparam("max_attempts", type_=sa.Integer)
_REQUEUE_EXPIRED = _Compiled(
    _with_event(
        jobs.update()
        .where(jobs.c.id == _EXPIRED.c.id)
        .values(
            _next_state(
                status=sa.case((_GAVE_UP, JobStatus.FAILED.value), else_=JobStatus.PENDING.value),
                error=sa.case(
                    (
                        _GAVE_UP,
                        sa.func.format(
                            "abandoned: the worker running it was lost %s times in a row",
                            jobs.c.attempt,
                        ),
                    ),
                    else_=None,
                ),
                lease_expires_at=None,
                # NULL: the sweep publishes it again at once.
                dispatched_at=None,
            )
        )
        .returning(*_JOB_COLUMNS)
        .cte("changed")
    )
)
_UNDISPATCHED = _locked_in_order("job_ids")
_MARK_UNDISPATCHED = _Compiled(
    jobs.update().where(jobs.c.id == _UNDISPATCHED.c.id).values(dispatched_at=None)
)
_TAKE_UNDISPATCHED = _Compiled(
    jobs.update()
    .where(
        jobs.c.id.in_(
            sa.select(jobs.c.id)
            .where(
                _is(JobStatus.PENDING),
                sa.or_(
                    jobs.c.dispatched_at.is_(None),
                    jobs.c.dispatched_at < _NOW - sa.bindparam("older_than", type_=sa.Interval),
                ),
            )
            .order_by(jobs.c.dispatched_at.nulls_first())
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )
    )
    .values(dispatched_at=_NOW)
    .returning(jobs.c.id)
)
_PING = _Compiled(sa.select(sa.literal_column("1")))
_PURGE_FINISHED = _Compiled(
    jobs.delete()
    .where(
        jobs.c.id.in_(
            sa.select(jobs.c.id)
            .where(
                _is(*(status for status in JobStatus if status.is_final)),
                jobs.c.updated_at < _NOW - sa.bindparam("older_than", type_=sa.Interval),
            )
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )
    )
    .returning(jobs.c.id)
)


@dataclass(frozen=True, slots=True)
class _NewJob:
    job_id: uuid.UUID
    operation: Operation
    numbers: bytes | memoryview  # pack_numbers' storage form
    request_id: str | None
    request_hash: bytes | None
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class _ClaimRequest:
    job_id: uuid.UUID
    lease: timedelta
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class _Finish:
    claim: Claim
    outcome: Outcome
    traceparent: str | None


class _StatelessConnection(asyncpg.Connection):
    """A pool connection that needs no reset query when it is given back.

    The store only runs single statements on its connections (no LISTEN, SET, cursors
    or advisory locks), so asyncpg's default reset would be a wasted round trip per call.
    """

    def get_reset_query(self) -> str:
        return ""


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


def _number_bytes(new_job: _NewJob) -> int:
    return len(new_job.numbers)


class JobStore:
    """Jobs and their history in PostgreSQL, the single source of truth.

    Creates, claims and finishes made concurrently in one process share statements
    (see jobcore.batching); each caller still gets its own answer.
    """

    def __init__(self, pool: asyncpg.Pool, *, pool_wait: timedelta = DEFAULT_POOL_WAIT) -> None:
        self._pool = pool
        # One permit per pooled connection, so a call knows that waiting for one timed out
        # (overloaded) apart from opening one timing out (unavailable). The store is the
        # pool's only user.
        self._free_connections = asyncio.Semaphore(pool.get_max_size())
        self._pool_wait_seconds = pool_wait.total_seconds()
        self._creates = _batched(self._create_batch, size_of=_number_bytes)
        self._claims = _batched(self._claim_batch)
        self._finishes = _batched(self._finish_batch)

    @classmethod
    async def connect(
        cls, database_url: str, *, pool_size: int, pool_wait: timedelta = DEFAULT_POOL_WAIT
    ) -> JobStore:
        """A store on a new pool of up to `pool_size` connections (opened as needed).

        Connections broken by a database restart fail their call (StoreUnavailableError,
        which callers retry) and are replaced by the pool. A call that finds no connection
        free within `pool_wait` fails with StoreOverloadedError.
        """
        pool = await asyncpg.create_pool(
            asyncpg_dsn(database_url),
            min_size=0,
            max_size=pool_size,
            timeout=10,
            connection_class=_StatelessConnection,
        )
        return cls(pool, pool_wait=pool_wait)

    async def close(self) -> None:
        """Close the pool's connections (waiting briefly for calls in progress)."""
        await asyncio.wait_for(self._pool.close(), timeout=10)

    @contextlib.asynccontextmanager
    async def _free_connection(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections for a call; StoreOverloadedError if none frees up in time."""
        try:
            async with asyncio.timeout(self._pool_wait_seconds):
                await self._free_connections.acquire()
        except TimeoutError:
            logger.warning(
                "no pooled PostgreSQL connection became free within %s s", self._pool_wait_seconds
            )
            raise StoreOverloadedError(_OVERLOADED_MESSAGE) from None
        try:
            yield
        finally:
            self._free_connections.release()

    async def _fetch(self, statement: _Compiled, **values: Any) -> list[asyncpg.Record]:
        """Run one statement; a TransientError if PostgreSQL failed in a way that passes.

        The one place driver errors are mapped (see translate_driver_error); anything
        else propagates unchanged.
        """
        async with self._free_connection():
            try:
                async with self._pool.acquire() as connection:
                    rows: list[asyncpg.Record] = await connection.fetch(
                        statement.sql, *statement.arguments(values)
                    )
                    return rows
            except Exception as error:
                translated = translate_driver_error(error)
                if translated is None:
                    raise
                logger.warning(
                    "PostgreSQL call failed (%s): %s: %s",
                    type(translated).__name__,
                    type(error).__name__,
                    error,
                )
                raise translated from error

    async def _change(self, statement: _Compiled, **values: Any) -> list[asyncpg.Record]:
        """Run a state change (and its events), recording the caller's trace context."""
        return await self._fetch(statement, traceparent=_traceparent(), **values)

    async def ping(self) -> None:
        """Raise a TransientError (StoreUnavailableError, say) unless PostgreSQL answers a trivial query."""
        await self._fetch(_PING)

    async def create(
        self,
        *,
        job_id: uuid.UUID,
        operation: Operation,
        numbers: bytes | memoryview,
        request_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Store a new PENDING job and its first event; (job, created).

        With a `request_id` already used for the same request, the original job is
        returned with created=False; for a different request it is an error.
        """
        return await self._creates(
            _NewJob(
                job_id=job_id,
                operation=operation,
                numbers=numbers,
                request_id=request_id or None,
                request_hash=request_digest(operation, numbers) if request_id else None,
                traceparent=_traceparent(),
            )
        )

    async def _create_batch(
        self, new_jobs: list[_NewJob]
    ) -> list[tuple[Job, bool] | BaseException]:
        answers: dict[int, tuple[Job, bool] | BaseException] = {}
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
            answers[index] = StoreConflictError(_CONFLICT_MESSAGE)
        return [answers[index] for index in range(len(new_jobs))]

    async def _insert_or_find(
        self,
        waiting: list[tuple[int, _NewJob]],
        answers: dict[int, tuple[Job, bool] | BaseException],
    ) -> list[tuple[int, _NewJob]]:
        """Insert these jobs, answering each by its index; those whose key was freed meanwhile."""
        rows = await self._fetch(
            _CREATE,
            new_jobs_id=[new.job_id for _, new in waiting],
            new_jobs_operation=[new.operation.value for _, new in waiting],
            new_jobs_numbers=[new.numbers for _, new in waiting],
            new_jobs_number_count=[len(new.numbers) // 8 for _, new in waiting],
            new_jobs_request_id=[new.request_id for _, new in waiting],
            new_jobs_request_hash=[new.request_hash for _, new in waiting],
            new_jobs_traceparent=[new.traceparent for _, new in waiting],
        )
        created = {row["id"]: row for row in rows}
        freed: list[tuple[int, _NewJob]] = []
        for index, new in waiting:
            row = created.get(new.job_id)
            if row is not None:
                answers[index] = (_job_from_row(row), True)
                continue
            # The key was used before (perhaps earlier in this batch): same request, same job.
            existing = await self._fetch(_GET_BY_REQUEST_ID, request_id=new.request_id)
            if not existing:
                freed.append((index, new))  # its job was purged since the insert
            elif existing[0]["request_hash"] != new.request_hash:
                answers[index] = IdempotencyKeyReusedError(new.request_id or "")
            else:
                answers[index] = (_job_from_row(existing[0]), False)
        return freed

    async def get(self, job_id: uuid.UUID) -> Job:
        """The job's current state; JobNotFoundError if there is no such job."""
        rows = await self._fetch(_GET, job_id=job_id)
        if not rows:
            raise JobNotFoundError(str(job_id))
        return _job_from_row(rows[0])

    async def list_jobs(
        self, conditions: Sequence[Condition], *, page_size: int, after: PageCursor | None
    ) -> tuple[list[Job], PageCursor | None]:
        """One page of jobs, newest first, and the cursor of the next page (None on the last)."""
        statement = sa.select(*_JOB_COLUMNS).where(*(_condition(c) for c in conditions))
        if after is not None:
            statement = statement.where(
                sa.tuple_(jobs.c.created_at, jobs.c.id) < (after.created_at, after.job_id)
            )
        statement = statement.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(
            page_size + 1
        )
        # Filters vary per call; compiling one costs far less than the query.
        rows = await self._fetch(_Compiled(statement))
        page = [_job_from_row(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return page, (PageCursor(page[-1].created_at, page[-1].id) if more else None)

    async def events_after(self, job_id: uuid.UUID, sequence: int) -> list[JobEvent]:
        """The job's events with a sequence number above `sequence`, oldest first."""
        rows = await self._fetch(_EVENTS_AFTER, job_id=job_id, sequence=sequence)
        return [event_from_row(row) for row in rows]

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
            _CLAIM,
            wanted_id=[request.job_id for request in unique],
            wanted_lease=[request.lease for request in unique],
            wanted_traceparent=[request.traceparent for request in unique],
        )
        claimed = {row["id"]: row for row in rows}
        return [_claim_from_row(claimed.pop(request.job_id, None)) for request in requests]

    async def renew(self, claims: Sequence[Claim], *, lease: timedelta) -> set[uuid.UUID]:
        """Extend the leases of these claims in one statement; returns the jobs still held."""
        if not claims:
            return set()
        rows = await self._fetch(
            _RENEW,
            job_ids=[claim.job_id for claim in claims],
            attempts=[claim.attempt for claim in claims],
            lease=lease,
        )
        return {row["id"] for row in rows}

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
            _FINISH,
            outcomes_id=[finish.claim.job_id for finish in unique],
            outcomes_attempt=[finish.claim.attempt for finish in unique],
            outcomes_status=[
                (JobStatus.SUCCESS if finish.outcome.error is None else JobStatus.FAILED).value
                for finish in unique
            ],
            outcomes_result=[finish.outcome.result for finish in unique],
            outcomes_error=[
                None if finish.outcome.error is None else finish.outcome.error[:MAX_ERROR_CHARS]
                for finish in unique
            ],
            outcomes_traceparent=[finish.traceparent for finish in unique],
        )
        # By attempt too: a stale and a current attempt of one job may share the batch.
        recorded = {(row["id"], row["attempt"]): True for row in rows}
        return [recorded.pop((f.claim.job_id, f.claim.attempt), False) for f in finishes]

    async def cancel(self, job_id: uuid.UUID) -> Job:
        """Move a PENDING or IN_PROGRESS job to CANCELLED; a cancelled job is returned as is.

        JobAlreadyFinishedError if it ended otherwise; JobNotFoundError if there is no such job.
        """
        rows = await self._change(_CANCEL, job_id=job_id)
        if rows:
            return _job_from_row(rows[0])
        job = await self.get(job_id)
        if job.status != JobStatus.CANCELLED:
            raise JobAlreadyFinishedError(str(job_id), job.status.value)
        return job

    async def requeue_expired(self, *, max_attempts: int, limit: int) -> list[Job]:
        """Take back jobs whose worker's lease ran out: PENDING again, or FAILED after `max_attempts`.

        SKIP LOCKED lets every server run this at once without doing a job twice.
        """
        rows = await self._change(_REQUEUE_EXPIRED, max_attempts=max_attempts, limit=limit)
        return [_job_from_row(row) for row in rows]

    async def mark_undispatched(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Record that publishing these jobs' broker messages failed, so the sweep sends them soon."""
        await self._fetch(_MARK_UNDISPATCHED, job_ids=list(job_ids))

    async def take_undispatched(self, *, older_than: timedelta, limit: int) -> list[uuid.UUID]:
        """Claim PENDING jobs whose message failed or may be lost, marking them dispatched now.

        SKIP LOCKED lets several servers sweep at once without sending a job twice.
        """
        rows = await self._fetch(_TAKE_UNDISPATCHED, older_than=older_than, limit=limit)
        return [row["id"] for row in rows]

    async def purge_finished(self, *, older_than: timedelta, limit: int) -> int:
        """Delete finished jobs (and, by cascade, their events) last changed before `older_than` ago."""
        return len(await self._fetch(_PURGE_FINISHED, older_than=older_than, limit=limit))
