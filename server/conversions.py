"""Protobuf <-> domain conversions, so servicers stay one-liners around the domain."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet
from jobs.v1 import jobs_service_pb2 as pb

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.ids import parse_job_id
from jobcore.models import Job
from jobcore.operations import Operation

_OPERATIONS: dict[int, Operation] = {
    pb.square_sum: Operation.SQUARE_SUM,
    pb.cube_sum: Operation.CUBE_SUM,
}
_KNOWN_OPERATIONS = ", ".join(operation.value for operation in Operation)
# Listing unknown fields makes a Python object of each; a request with more than this many bytes
# of them is refused without the list, so the check's work stays small.
_MAX_UNKNOWN_BYTES_LISTED = 1024
# Bad job ids named one by one at most (then one violation counts the rest): violations travel
# in the call's trailers, which gRPC clients refuse past 8 KiB.
_MAX_ID_VIOLATIONS = 10


# The jobs of one batch share their creation time (one transaction's now()), so a batch's
# answer converts it once instead of twice per job. The cached messages are only ever copied
# into a Job, never changed.
@functools.lru_cache(maxsize=64)
def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def reject_unknown_fields(request: Message) -> None:
    """InvalidJobError if the request carries fields this server does not know.

    Protobuf would silently drop them; a client that sets a field we ignore deserves to know.
    A known field sent with the wrong wire type arrives as an unknown one, and is named.
    """
    known = type(request)()
    known.CopyFrom(request)
    known.DiscardUnknownFields()
    unknown_bytes = request.ByteSize() - known.ByteSize()
    if not unknown_bytes:
        return
    if unknown_bytes > _MAX_UNKNOWN_BYTES_LISTED:
        raise InvalidJobError(
            [FieldViolation("request", f"carries {unknown_bytes} bytes of unknown fields")]
        )
    fields = UnknownFieldSet(request)
    unknown = sorted({fields[index].field_number for index in range(len(fields))})
    by_number = request.DESCRIPTOR.fields_by_number
    raise InvalidJobError(
        [
            FieldViolation(by_number[number].name, "has the wrong wire type for its type")
            if number in by_number
            else FieldViolation(
                f"#{number}", "unknown field (is the client newer than the server?)"
            )
            for number in unknown
        ]
    )


def operation_from_proto(value: int) -> Operation:
    """The requested operation, or InvalidJobError naming the `operation` field."""
    operation = _OPERATIONS.get(value)
    if operation is None:
        raise InvalidJobError([FieldViolation("operation", f"must be one of {_KNOWN_OPERATIONS}")])
    return operation


def job_id_from_proto(text: str) -> uuid.UUID:
    """The job id a client sent, or InvalidJobError naming the `job_id` field."""
    job_id = parse_job_id(text)
    if job_id is None:
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise InvalidJobError(
            [FieldViolation("job_id", f"must be a job id returned by SubmitJob, got {shown!r}")]
        )
    return job_id


def job_ids_from_proto(texts: Sequence[str], *, max_count: int) -> frozenset[uuid.UUID] | None:
    """The job ids a client listed (None for none: any job), or InvalidJobError naming each
    bad one by its place (`job_ids[3]`)."""
    if len(texts) > max_count:
        raise InvalidJobError(
            [FieldViolation("job_ids", f"lists {len(texts)} ids; at most {max_count} are allowed")]
        )
    job_ids: set[uuid.UUID] = set()
    violations: list[FieldViolation] = []
    for index, text in enumerate(texts):
        try:
            job_ids.add(job_id_from_proto(text))
        except InvalidJobError as error:
            violations += [
                FieldViolation(f"job_ids[{index}]", violation.description)
                for violation in error.violations
            ]
    if len(violations) > _MAX_ID_VIOLATIONS:
        more = len(violations) - _MAX_ID_VIOLATIONS
        violations = [
            *violations[:_MAX_ID_VIOLATIONS],
            FieldViolation("job_ids", f"{more} more of its ids are not job ids either"),
        ]
    if violations:
        raise InvalidJobError(violations)
    return frozenset(job_ids) if job_ids else None


def job_to_proto(job: Job, *, with_result: bool) -> pb.Job:
    """The API's view of a job; the outcome is only included where the RPC promises it."""
    message = pb.Job(
        id=str(job.id),
        status=pb.JobStatus.Value(job.status.value),
        operation=pb.Operation.Value(job.operation.value),
        created_at=_timestamp(job.created_at),
        updated_at=_timestamp(job.updated_at),
        attempts=job.attempts,
    )
    if with_result and job.outcome is not None:
        if job.outcome.error is None:
            message.result.result = job.outcome.result if job.outcome.result is not None else 0.0
        else:
            message.result.error = job.outcome.error
    return message
