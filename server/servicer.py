"""JobService: thin adapters from protobuf to the job domain (server.interceptor wraps each call)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

import grpc
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.events import JobEventHub
from jobcore.identity import current_principal
from jobcore.ids import new_job_id
from jobcore.listing import (
    MAX_WATCH_JOB_IDS,
    JobSelection,
    PageTokenSigner,
    WatchCursors,
    page_size_of,
    parse_filter,
)
from jobcore.models import Job, JobStatus
from jobcore.operations import Operation, pack_numbers, validate_numbers
from jobcore.store import JobStore, Submission
from jobcore.tracing import context_from, current_traceparent, tracer
from server.auth import metadata_value
from server.conversions import (
    job_id_from_proto,
    job_ids_from_proto,
    job_to_proto,
    operation_from_proto,
    reject_unknown_fields,
)
from server.dispatcher import Dispatcher
from server.metrics import jobs_submitted
from server.submit_wire import MAX_BATCH_REQUESTS, ReceivedBatch, ReceivedSubmitJob
from server.watch import follow_job, follow_tenant

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


T = TypeVar("T")

_MAX_REQUEST_ID_CHARS = 128
# Sequence numbers are int32 in the API and `integer` in PostgreSQL.
_MAX_SEQUENCE = 2**31 - 1
_SEQUENCE_DIGITS = re.compile(r"[0-9]{1,10}")
# A batch's violations listed at most (then one that counts the rest): they travel in the
# call's trailers, and gRPC clients refuse trailers past 8 KiB (some of them at once, all past
# 16 KiB), which a few dozen would reach.
_MAX_BATCH_VIOLATIONS = 20


def _request_id(field: str, header: str | None) -> str | None:
    """The idempotency key: the request_id field, or the Idempotency-Key header."""
    if field and header and header != field:
        raise InvalidJobError(
            [FieldViolation("request_id", "differs from the Idempotency-Key header; send one")]
        )
    key = field or header
    if key is not None and not (0 < len(key) <= _MAX_REQUEST_ID_CHARS and key.isprintable()):
        raise InvalidJobError(
            [
                FieldViolation(
                    "request_id",
                    f"must be 1 to {_MAX_REQUEST_ID_CHARS} printable characters (a UUID is ideal)",
                )
            ]
        )
    return key or None


def _collect(violations: list[FieldViolation], validate: Callable[[], T]) -> T | None:
    """Run one validation, adding its violations to `violations`, so all are reported at once."""
    try:
        return validate()
    except InvalidJobError as error:
        violations += error.violations
        return None


@dataclass(frozen=True, slots=True)
class _ValidSubmit:
    """A SubmitJob request that passed validation, in the store's terms."""

    operation: Operation
    numbers: bytes | memoryview  # pack_numbers' storage form
    request_id: str | None


def _validate_submit(
    received: ReceivedSubmitJob, *, max_numbers: int, header_key: str | None
) -> _ValidSubmit:
    """SubmitJob's validation of one request (alone or in a batch): InvalidJobError with all
    its violations at once."""
    violations: list[FieldViolation] = []
    numbers = _collect(violations, lambda: validate_numbers(received.data, max_count=max_numbers))
    operation = _collect(violations, lambda: operation_from_proto(received.message.operation))
    request_id = _collect(violations, lambda: _request_id(received.message.request_id, header_key))
    if violations or numbers is None or operation is None:
        raise InvalidJobError(violations)
    return _ValidSubmit(operation, pack_numbers(numbers), request_id)


def _in_batch(violation: FieldViolation, index: int) -> FieldViolation:
    """A request's violation named by its path in the batch: `data[2]` -> `requests[7].data[2]`."""
    # "request" stands for the whole request (its unknown fields, say).
    suffix = "" if violation.field == "request" else f".{violation.field}"
    return FieldViolation(f"requests[{index}]{suffix}", violation.description)


def _validate_batch(
    received: ReceivedBatch, *, max_numbers: int, header_key: str | None
) -> tuple[list[_ValidSubmit], list[int]]:
    """BatchSubmitJobs' validation: the distinct submissions and, for each request in order,
    the index of its submission; InvalidJobError naming every violation of every request.

    A request_id given twice in one batch for the same request is one job (the second is
    answered with the first's); for different requests it is a violation naming both.
    """
    count = len(received.requests)
    if not 1 <= count <= MAX_BATCH_REQUESTS:
        raise InvalidJobError(
            [FieldViolation("requests", f"must hold 1 to {MAX_BATCH_REQUESTS} requests")]
        )
    violations: list[FieldViolation] = []
    if header_key is not None:
        violations.append(
            FieldViolation(
                "Idempotency-Key",
                "a batch has no key of its own: set request_id in each of its requests",
            )
        )
    submissions: list[_ValidSubmit] = []
    positions: list[int] = []
    by_key: dict[str, tuple[int, int]] = {}  # request_id -> (request index, submission index)
    for index, one in enumerate(received.requests):
        mine: list[FieldViolation] = []
        _collect(mine, functools.partial(reject_unknown_fields, one.message))
        valid = _collect(
            mine, functools.partial(_validate_submit, one, max_numbers=max_numbers, header_key=None)
        )
        violations += [_in_batch(violation, index) for violation in mine]
        if valid is None or mine:
            continue
        first = by_key.get(valid.request_id) if valid.request_id else None
        if first is None:
            if valid.request_id:
                by_key[valid.request_id] = (index, len(submissions))
            positions.append(len(submissions))
            submissions.append(valid)
            continue
        earlier = submissions[first[1]]
        if earlier.operation == valid.operation and earlier.numbers == valid.numbers:
            positions.append(first[1])
        else:
            violations.append(
                FieldViolation(
                    f"requests[{index}].request_id",
                    f"is also the request_id of requests[{first[0]}], a different request: "
                    "each job needs a key of its own",
                )
            )
    if violations:
        raise InvalidJobError(_listed(violations))
    return submissions, positions


def _listed(violations: list[FieldViolation]) -> list[FieldViolation]:
    """The first _MAX_BATCH_VIOLATIONS violations, and one that counts the others."""
    if len(violations) <= _MAX_BATCH_VIOLATIONS:
        return violations
    more = len(violations) - _MAX_BATCH_VIOLATIONS
    return [
        *violations[:_MAX_BATCH_VIOLATIONS],
        FieldViolation("requests", f"{more} more violations are not listed"),
    ]


def _after_sequence(request: pb.WatchJobRequest, context: Context) -> int:
    """Where to resume: after_sequence, or the SSE Last-Event-ID header."""
    if request.after_sequence < 0:
        raise InvalidJobError([FieldViolation("after_sequence", "must not be negative")])
    if request.after_sequence:
        return request.after_sequence
    header = metadata_value(context, "last-event-id")
    if header is None or header == "":
        return 0
    # ASCII digits only: str.isdigit() and int() also take "²" or "٣", and int() signs and spaces.
    if _SEQUENCE_DIGITS.fullmatch(header) is None or int(header) > _MAX_SEQUENCE:
        raise InvalidJobError(
            [
                FieldViolation(
                    "Last-Event-ID",
                    f"must be a sequence number from 0 to {_MAX_SEQUENCE}, got {header[:32]!r}",
                )
            ]
        )
    return int(header)


def _after_cursor(request: pb.WatchJobsRequest, context: Context) -> tuple[str, str]:
    """Where to resume and the field it came in: after_cursor, or the SSE Last-Event-ID header."""
    if request.after_cursor:
        return request.after_cursor, "after_cursor"
    return metadata_value(context, "last-event-id") or "", "Last-Event-ID"


def _trace_delivery(job: Job, traceparent: str, *, method: str = "WatchJob") -> None:
    """A span in the trace of the change (SubmitJob, the worker, CancelJob) for its delivery."""
    with tracer().start_as_current_span(
        f"jobs.v1.JobService/{method} deliver",
        context=context_from({"traceparent": traceparent}),
        kind=SpanKind.PRODUCER,
        attributes={
            "job.id": str(job.id),
            "job.sequence": job.sequence,
            "job.status": job.status.value,
        },
    ):
        pass


def _watch_response(job: Job, *, heartbeat: bool) -> pb.WatchJobResponse:
    return pb.WatchJobResponse(
        job=job_to_proto(job, with_result=True), sequence=job.sequence, heartbeat=heartbeat
    )


class JobServicer(pb_grpc.JobServiceServicer):
    """Stores jobs in PostgreSQL, has workers woken for them, and reads them back."""

    def __init__(
        self,
        *,
        store: JobStore,
        dispatcher: Dispatcher,
        hub: JobEventHub,
        max_job_numbers: int,
        page_tokens: PageTokenSigner,
        watch_heartbeat: timedelta,
        job_retention: timedelta,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._hub = hub
        self._max_job_numbers = max_job_numbers
        self._page_tokens = page_tokens
        self._watch_heartbeat = watch_heartbeat
        self._job_retention = job_retention

    async def SubmitJob(
        self, request: pb.SubmitJobRequest | ReceivedSubmitJob, context: Context
    ) -> pb.Job:
        # The server's deserializer (server.submit_wire) splits requests; direct calls need not.
        received = (
            ReceivedSubmitJob.from_message(request)
            if isinstance(request, pb.SubmitJobRequest)
            else request
        )
        valid = _validate_submit(
            received,
            max_numbers=self._max_job_numbers,
            header_key=metadata_value(context, "idempotency-key"),
        )
        # The wake-up is queued by the store's callback, not after the await: a caller that
        # goes away (a deadline, a hang-up) once its job is stored must not take it along.
        job, _ = await self._store.create(
            job_id=new_job_id(),
            operation=valid.operation,
            numbers=valid.numbers,
            owner=current_principal(),
            request_id=valid.request_id,
            on_stored=functools.partial(self._wake_a_worker, traceparent=current_traceparent()),
        )
        trace.get_current_span().set_attribute("job.id", str(job.id))
        return job_to_proto(job, with_result=False)

    async def BatchSubmitJobs(
        self, request: pb.BatchSubmitJobsRequest | ReceivedBatch, context: Context
    ) -> pb.BatchSubmitJobsResponse:
        # The server's deserializer (server.submit_wire) splits requests; direct calls need not.
        received = (
            ReceivedBatch.from_message(request)
            if isinstance(request, pb.BatchSubmitJobsRequest)
            else request
        )
        submissions, positions = _validate_batch(
            received,
            max_numbers=self._max_job_numbers,
            header_key=metadata_value(context, "idempotency-key"),
        )
        # Woken as SubmitJob's jobs are, by the store's callback once the batch is committed.
        stored = await self._store.create_batch(
            [
                Submission(
                    job_id=new_job_id(),
                    operation=valid.operation,
                    numbers=valid.numbers,
                    request_id=valid.request_id,
                )
                for valid in submissions
            ],
            owner=current_principal(),
            on_stored=functools.partial(self._wake_a_worker, traceparent=current_traceparent()),
        )
        trace.get_current_span().set_attribute("jobs.count", len(stored))
        jobs = [job_to_proto(job, with_result=False) for job, _ in stored]
        return pb.BatchSubmitJobsResponse(jobs=[jobs[position] for position in positions])

    def _wake_a_worker(
        self, job: Job, created: bool, backlog: int, *, traceparent: str | None
    ) -> None:
        """Queue the wake-up of a stored job (JobStore.create calls this as soon as it is stored)."""
        if created:
            jobs_submitted(job.operation.value).inc()
        # A retry of a job still PENDING may be all that is left of a submit whose wake-up
        # was lost, so it wakes a worker again: a duplicate wake-up is harmless, because
        # claiming a job is a compare-and-set.
        if created or job.status is JobStatus.PENDING:
            self._dispatcher.dispatch(job.id, traceparent=traceparent, backlog=backlog)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.Job:
        job = await self._store.get(
            job_id_from_proto(request.job_id), tenant=current_principal().tenant
        )
        return job_to_proto(job, with_result=False)

    async def GetResult(self, request: pb.GetResultRequest, context: Context) -> pb.Job:
        job = await self._store.get(
            job_id_from_proto(request.job_id), tenant=current_principal().tenant
        )
        return job_to_proto(job, with_result=True)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        tenant = current_principal().tenant
        violations: list[FieldViolation] = []
        page_size = _collect(violations, lambda: page_size_of(request.page_size))
        conditions = _collect(violations, lambda: parse_filter(request.filter))
        # A token is bound to its filter and tenant, so it is checked against a valid filter
        # only (which also keeps an oversized filter from being hashed).
        after = (
            _collect(
                violations,
                lambda: self._page_tokens.decode(
                    request.page_token, tenant=tenant, filter_text=request.filter
                ),
            )
            if conditions is not None
            else None
        )
        if violations or page_size is None or conditions is None:
            raise InvalidJobError(violations)
        page, next_cursor = await self._store.list_jobs(
            conditions, tenant=tenant, page_size=page_size, after=after
        )
        return pb.ListJobsResponse(
            jobs=[job_to_proto(job, with_result=False) for job in page],
            next_page_token=(
                self._page_tokens.encode(next_cursor, tenant=tenant, filter_text=request.filter)
                if next_cursor
                else ""
            ),
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        job = await self._store.cancel(job_id_from_proto(request.job_id), by=current_principal())
        return job_to_proto(job, with_result=True)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        job_id = job_id_from_proto(request.job_id)
        # aclosing: a dropped stream releases its subscription now, not when collected.
        async with contextlib.aclosing(
            follow_job(
                self._hub,
                self._store,
                job_id,
                tenant=current_principal().tenant,
                after_sequence=_after_sequence(request, context),
                heartbeat=self._watch_heartbeat,
            )
        ) as updates:
            # Heartbeats repeat the same state: the same message is sent again, built once.
            beat: tuple[Job, pb.WatchJobResponse] | None = None
            async for update in updates:
                if update.heartbeat:
                    if beat is None or beat[0] is not update.job:
                        beat = (update.job, _watch_response(update.job, heartbeat=True))
                    yield beat[1]
                    continue
                if update.traceparent:
                    _trace_delivery(update.job, update.traceparent)
                yield _watch_response(update.job, heartbeat=False)

    async def WatchJobs(
        self, request: pb.WatchJobsRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobsResponse]:
        tenant = current_principal().tenant
        violations: list[FieldViolation] = []
        conditions = _collect(violations, lambda: parse_filter(request.filter))
        job_ids = _collect(
            violations, lambda: job_ids_from_proto(request.job_ids, max_count=MAX_WATCH_JOB_IDS)
        )
        if violations or conditions is None:
            raise InvalidJobError(violations)
        # A cursor is bound to the filter and ids, so it is checked against valid ones only.
        cursors = WatchCursors(
            self._page_tokens, tenant=tenant, filter_text=request.filter, job_ids=job_ids
        )
        token, field = _after_cursor(request, context)
        async with contextlib.aclosing(
            follow_tenant(
                self._hub,
                self._store,
                tenant=tenant,
                selection=JobSelection(conditions, job_ids),
                after=cursors.decode(token, field=field) if token else None,
                heartbeat=self._watch_heartbeat,
                retention=self._job_retention,
            )
        ) as updates:
            async for update in updates:
                cursor = cursors.encode(update.position, now=datetime.now(UTC))
                if update.job is None:
                    yield pb.WatchJobsResponse(cursor=cursor, heartbeat=True)
                    continue
                if update.traceparent:
                    _trace_delivery(update.job, update.traceparent, method="WatchJobs")
                yield pb.WatchJobsResponse(
                    job=job_to_proto(update.job, with_result=True),
                    sequence=update.job.sequence,
                    cursor=cursor,
                )
