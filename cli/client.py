"""The gRPC side of the commands: the channel, watches that survive restarts, batched submits."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
# A unary call that takes longer than this is treated like an unreachable server.
UNARY_TIMEOUT_SECONDS = 30.0
# A server restart ends watch streams with UNAVAILABLE (or CANCELLED through a proxy);
# the job lives on in the database, so the watch resumes where it stopped.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RESUME_ATTEMPTS = 5
RECONNECT_TIMEOUT_SECONDS = 10.0
# The most requests in one BatchSubmitJobs call (the contract's limit), and how many such calls
# are in flight at once: enough to keep a server busy, few enough not to queue behind each other.
BATCH_SIZE = 1000
BATCHES_IN_FLIGHT = 4
# A batch that failed with these codes is sent again, at most BATCH_ATTEMPTS times in all: either
# nothing was stored, or it was and the same request ids return the same jobs.
RETRY_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
BATCH_ATTEMPTS = 5


def _with_key(
    details: grpc.aio.ClientCallDetails, header: tuple[str, str]
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_key(client_call_details, self._header), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_key(client_call_details, self._header), request)


def bearer_interceptors(api_key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send `authorization: Bearer <key>` with every call, unary or streaming.

    Interceptors rather than gRPC call credentials, which refuse plaintext channels (the
    service runs without TLS on loopback, and behind a gateway that terminates it). One per
    kind of call: grpc.aio files an interceptor under the first kind it implements only.
    """
    header = ("authorization", f"Bearer {api_key}")
    return [_UnaryBearer(header), _StreamBearer(header)]


def open_channel(
    target: str, *, ca_file: Path | None = None, api_key: str | None = None
) -> grpc.aio.Channel:
    """A channel that reconnects within a second once a restarted server is back, and presents
    `api_key` (if any) with every call.

    TLS for an `https://HOST:PORT` target or when a CA file is given (the server's certificate
    is checked against that CA, else against the system's roots); plaintext otherwise.
    """
    options = [
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    interceptors = bearer_interceptors(api_key) if api_key else None
    address, tls = parse_target(target)
    if not tls and ca_file is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    root_certificates = ca_file.read_bytes() if ca_file is not None else None
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def parse_target(target: str) -> tuple[str, bool]:
    """HOST:PORT and whether the target asks for TLS (`https://`); `http://` asks for none."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            return target.removeprefix(scheme).rstrip("/"), tls
    return target, False


async def watch_job(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    job_id: str,
    *,
    on_resume: Callable[[str], None] | None = None,
) -> AsyncIterator[pb.WatchJobResponse]:
    """Every update of the job (heartbeats included) until its final state.

    A stream lost to a restart is resumed with `after_sequence`, so nothing is missed or
    repeated; after RESUME_ATTEMPTS failures in a row without an update the error is raised.
    """
    after_sequence = 0
    failures = 0
    while True:
        request = pb.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        try:
            async for update in stub.WatchJob(request):
                failures = 0
                after_sequence = update.sequence  # heartbeats repeat the latest sequence
                yield update
        except grpc.aio.AioRpcError as error:
            if error.code() not in RESUMABLE_CODES or failures >= RESUME_ATTEMPTS:
                raise
            failures += 1
            if on_resume is not None:
                on_resume(
                    f"watch of {job_id} interrupted ({error.code().name}); resuming after "
                    f"sequence {after_sequence} (attempt {failures} of {RESUME_ATTEMPTS})"
                )
            await _wait_for_server(channel, attempt=failures)
        else:
            return  # the server ends a stream only after the job's final state


async def _wait_for_server(channel: grpc.aio.Channel, *, attempt: int) -> None:
    """Back off briefly, then wait (bounded) until the channel connects again."""
    await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
    # On timeout the next call fails with UNAVAILABLE and counts as another attempt.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(channel.channel_ready(), RECONNECT_TIMEOUT_SECONDS)


def batch_requests(request: pb.SubmitJobRequest, count: int) -> list[pb.SubmitJobRequest]:
    """`count` copies of `request`, job i keyed KEY-i, so that a batch sent again returns the
    same jobs: KEY is the request's request_id, or a new random one."""
    if count == 1:
        return [request]
    key = request.request_id or str(uuid.uuid4())
    copies = []
    for index in range(1, count + 1):
        copy = pb.SubmitJobRequest()
        copy.CopyFrom(request)
        copy.request_id = f"{key}-{index}"
        copies.append(copy)
    return copies


async def submit_batch(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    requests: Sequence[pb.SubmitJobRequest],
    *,
    watch: bool,
    on_submitted: Callable[[pb.Job], None],
    on_finished: Callable[[pb.Job], None],
) -> list[pb.Job]:
    """Submit every request with BatchSubmitJobs, BATCH_SIZE at a time, and, with `watch`,
    follow each job as soon as its batch is stored.

    Returns the watched jobs in their final states (none without `watch`).

    The first error stops the whole: the remaining calls are cancelled and that error is raised
    (jobs already submitted stay submitted and were reported through `on_submitted`).
    """
    slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
    finished: list[pb.Job] = []

    async def one(batch: Sequence[pb.SubmitJobRequest]) -> None:
        async with slots:
            jobs = await _submit_with_retries(stub, channel, batch)
        for job in jobs:
            on_submitted(job)
        if watch:
            finished.extend(await follow_jobs(stub, channel, jobs, on_finished=on_finished))

    try:
        async with asyncio.TaskGroup() as group:
            for start in range(0, len(requests), BATCH_SIZE):
                group.create_task(one(requests[start : start + BATCH_SIZE]))
    except ExceptionGroup as failed:
        # Siblings fail with the same error (an unreachable server, N times): show one.
        raise failed.exceptions[0] from None
    return finished


async def _submit_with_retries(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    batch: Sequence[pb.SubmitJobRequest],
) -> Sequence[pb.Job]:
    """One BatchSubmitJobs call, sent again after an error that may pass (see RETRY_CODES)."""
    request = pb.BatchSubmitJobsRequest(requests=batch)
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        try:
            response = await stub.BatchSubmitJobs(request, timeout=UNARY_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRY_CODES or attempt == BATCH_ATTEMPTS:
                raise
            await _wait_for_server(channel, attempt=attempt)
        else:
            return response.jobs
    raise AssertionError("unreachable: the last attempt returns or raises")


async def follow_jobs(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    jobs: Sequence[pb.Job],
    *,
    on_finished: Callable[[pb.Job], None],
) -> list[pb.Job]:
    """Follow these jobs until each is final, telling `on_finished` of each; their final states.

    The seam for watching many jobs: today one resumable WatchJob stream per job, which may
    start late since a stream begins with the job's whole history. One WatchJobs stream for all
    of them would replace this body.
    """
    finished: list[pb.Job] = []

    async def one(job: pb.Job) -> None:
        final = job
        async for update in watch_job(stub, channel, job.id):
            final = update.job
        finished.append(final)
        on_finished(final)

    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(one(job))
    return finished
