"""Domain errors: raised by jobcore, mapped to gRPC statuses in one place by the server."""

from __future__ import annotations

import math
from dataclasses import dataclass


class JobError(Exception):
    """Base class of every error the job domain raises on purpose."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: which field, and what is wrong with it."""

    field: str
    description: str


class InvalidJobError(JobError):
    """A request was rejected because one or more of its fields are invalid."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class JobNotFoundError(JobError):
    """No job has this id (it never existed, or it was purged)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class JobAlreadyFinishedError(JobError):
    """The job already reached a final state, so it cannot be changed (e.g. cancelled)."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} already finished with status {status}")


class IdempotencyKeyReusedError(JobError):
    """A request_id / Idempotency-Key was already used for a different submission."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"request_id {request_id!r} was already used for a different job; "
            "use a new key for a new submission"
        )


class UnauthenticatedError(JobError):
    """The call carries no credential, or one that is malformed, unknown, expired or revoked.

    The message says which, without echoing the credential.
    """


class PermissionDeniedError(JobError):
    """The caller is known but its credential lacks the scope the method needs."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"this credential lacks the scope {scope!r} that this method needs")


class ApiKeyNotFoundError(JobError):
    """No API key has this id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"API key {key_id} not found")


class QuotaExceededError(JobError):
    """The tenant already has its maximum of unfinished jobs: wait for some to finish."""

    def __init__(self, tenant: str, limit: int) -> None:
        self.tenant = tenant
        self.limit = limit
        super().__init__(
            f"tenant {tenant!r} already has its maximum of {limit} unfinished jobs; "
            "submit again once some have finished"
        )


class RateLimitedError(JobError):
    """The caller sent more requests than its rate allows; it may call again after a while."""

    def __init__(self, limit: str, retry_after_seconds: float) -> None:
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        # Whole seconds, rounded up, as Retry-After says it: never "retry in 0 s".
        super().__init__(
            f"request rate limit of {limit} exceeded; retry in {math.ceil(retry_after_seconds)} s"
        )


class TransientError(JobError):
    """A dependency failed in a way that passes: the same call may succeed if retried later.

    Retrying is safe because every change the service makes is idempotent or fenced (the
    idempotency key, the claim's compare-and-set, the attempt number). Clients get a
    retryable gRPC code with RetryInfo; background loops retry with backoff.
    """


class StoreUnavailableError(TransientError):
    """PostgreSQL (the source of truth) cannot be reached, so nothing was stored or read."""


class StoreOverloadedError(TransientError):
    """PostgreSQL or this process's pool has no connection to spare (RESOURCE_EXHAUSTED)."""


class StoreConflictError(TransientError):
    """PostgreSQL aborted the statement (deadlock or serialization failure): retry it (ABORTED)."""


class StoreTimeoutError(TransientError):
    """The statement ran past PostgreSQL's statement_timeout and was cancelled (DEADLINE_EXCEEDED)."""


class ComputationError(JobError):
    """A job's computation cannot produce a valid result; the job fails with this message."""


class ResultOverflowError(ComputationError):
    """The exact result is too large to be represented as a double."""


class BrokerUnavailableError(TransientError):
    """The message broker (Redis) cannot be reached."""


class ServiceShuttingDownError(TransientError):
    """The process is draining; the client should retry against another replica."""
