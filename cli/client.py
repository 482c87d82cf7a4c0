"""The gRPC side of the commands: the channel, watches that survive restarts (one job's WatchJob,
many jobs' WatchJobs), batched submits."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.listing import MAX_WATCH_JOB_IDS

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
# Current states read at once by `jobs watch` of many ids.
READS_IN_FLIGHT = 64
FINAL_STATUSES = frozenset({pb.SUCCESS, pb.FAILED, pb.CANCELLED})


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
    follow every job on one WatchJobs stream, opened before the first is submitted.

    Returns the watched jobs in their final states (none without `watch`).

    The first error stops the whole: the remaining calls are cancelled and that error is raised
    (jobs already submitted stay submitted and were reported through `on_submitted`).
    """
    slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def one(batch: Sequence[pb.SubmitJobRequest], watching: JobsWatch | None) -> None:
        async with slots:
            jobs = await _submit_with_retries(stub, channel, batch)
        for job in jobs:
            on_submitted(job)
        if watching is not None:
            watching.track(jobs)

    async def submit_all(watching: JobsWatch | None) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for start in range(0, len(requests), BATCH_SIZE):
                    group.create_task(one(requests[start : start + BATCH_SIZE], watching))
        except ExceptionGroup as failed:
            # Siblings fail with the same error (an unreachable server, N times): show one.
            raise failed.exceptions[0] from None

    if not watch:
        await submit_all(None)
        return []
    # The stream follows the caller's jobs from before the first is stored, so no change is
    # missed; the ids it is after are learnt as the batches are answered.
    async with JobsWatch(stub, channel, on_finished=on_finished) as watching:
        await submit_all(watching)
        watching.close()
        return await watching.wait()


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


async def watch_jobs(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    job_ids: Sequence[str],
    *,
    on_update: Callable[[pb.WatchJobsResponse], None],
    on_resume: Callable[[str], None] | None = None,
) -> list[pb.Job]:
    """Follow the jobs with these ids until each is final, on one WatchJobs stream: each job's
    state now (read once the stream is open), then every change; their final states."""
    async with JobsWatch(
        stub, channel, job_ids=job_ids, on_update=on_update, on_resume=on_resume
    ) as watching:
        slots = asyncio.Semaphore(READS_IN_FLIGHT)

        async def now(job_id: str) -> pb.Job:
            async with slots:
                return await stub.GetResult(
                    pb.GetResultRequest(job_id=job_id), timeout=UNARY_TIMEOUT_SECONDS
                )

        watching.track(await asyncio.gather(*(now(job_id) for job_id in job_ids)), show=True)
        watching.close()
        return await watching.wait()


class JobsWatch:
    """One WatchJobs stream that follows many jobs until each is final.

    It is open (subscribed) once `async with` has entered, so every change committed from then
    on reaches it: jobs submitted or read afterwards are followed with nothing missed. A stream
    lost to a restart resumes from its last cursor, as watch_job resumes; after
    RESUME_ATTEMPTS failures in a row without a message the error is raised (by `wait`).

    `track` the jobs as their states become known, `close` once no more will come, then `wait`.
    """

    def __init__(
        self,
        stub: pb_grpc.JobServiceAsyncStub,
        channel: grpc.aio.Channel,
        *,
        job_ids: Sequence[str] = (),
        on_update: Callable[[pb.WatchJobsResponse], None] | None = None,
        on_finished: Callable[[pb.Job], None] | None = None,
        on_resume: Callable[[str], None] | None = None,
    ) -> None:
        self._stub = stub
        self._channel = channel
        # Up to the contract's limit the server selects the jobs; past it, this client does.
        self._job_ids = list(job_ids) if len(job_ids) <= MAX_WATCH_JOB_IDS else []
        self._on_update = on_update
        self._on_finished = on_finished
        self._on_resume = on_resume
        # The latest change of each job not tracked yet, while jobs may still be tracked: a job's
        # changes can come before the answer that names it.
        self._untracked: dict[str, pb.WatchJobsResponse] = {}
        self._tracked: set[str] = set()
        self._final: dict[str, pb.Job] = {}
        self._closed = False
        self._all_final = asyncio.Event()
        self._opened = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobsWatch:
        self._reader = asyncio.create_task(self._read())
        opened = asyncio.create_task(self._opened.wait())
        await asyncio.wait({self._reader, opened}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._reader.done():
            self._reader.result()  # raises what ended it
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def track(self, jobs: Iterable[pb.Job], *, show: bool = False) -> None:
        """Follow these jobs from the states given (with `show`, passed to on_update first)."""
        for given in jobs:
            self._tracked.add(given.id)
            if show and self._on_update is not None:
                self._on_update(pb.WatchJobsResponse(job=given))
            early = self._untracked.pop(given.id, None)
            if early is None or early.job.status not in FINAL_STATUSES:
                self._check_final(given)
                continue
            # It finished before its state was known here.
            if show and self._on_update is not None:
                self._on_update(early)
            self._check_final(early.job)

    def close(self) -> None:
        """No more jobs will be tracked: the watch is done once the tracked ones are final."""
        self._closed = True
        self._untracked.clear()
        self._check_done()

    async def wait(self) -> list[pb.Job]:
        """The final state of every tracked job, once each has one (in the order they ended)."""
        assert self._reader is not None, "enter the watch first"
        done = asyncio.create_task(self._all_final.wait())
        await asyncio.wait({self._reader, done}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            done.cancel()
            self._reader.result()  # the stream failed for good: raise why
        return list(self._final.values())

    def _receive(self, message: pb.WatchJobsResponse) -> None:
        job = message.job
        if job.id in self._final:
            return  # final states never change; anything later is an older state
        if job.id not in self._tracked:
            if not self._closed:
                early = self._untracked.get(job.id)
                if early is None or early.sequence < message.sequence:
                    self._untracked[job.id] = message
            return
        if self._on_update is not None:
            self._on_update(message)
        self._check_final(job)

    def _check_final(self, job: pb.Job) -> None:
        if job.status in FINAL_STATUSES and job.id not in self._final:
            self._final[job.id] = job
            if self._on_finished is not None:
                self._on_finished(job)
            self._check_done()

    def _check_done(self) -> None:
        if self._closed and len(self._final) == len(self._tracked):
            self._all_final.set()

    async def _read(self) -> None:
        """Read the stream for good, resuming from the last cursor after an interruption."""
        cursor = ""
        failures = 0
        while True:
            request = pb.WatchJobsRequest(job_ids=self._job_ids, after_cursor=cursor)
            try:
                async for message in self._stub.WatchJobs(request):
                    failures = 0
                    cursor = message.cursor
                    self._opened.set()
                    if not message.heartbeat:
                        self._receive(message)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RESUMABLE_CODES or failures >= RESUME_ATTEMPTS:
                    raise
                failures += 1
                if self._on_resume is not None:
                    self._on_resume(
                        f"watch of {len(self._tracked)} jobs interrupted ({error.code().name}); "
                        f"resuming from its last cursor (attempt {failures} of {RESUME_ATTEMPTS})"
                    )
            # The server never ends the stream itself; a proxy that did is treated the same.
            await _wait_for_server(self._channel, attempt=max(failures, 1))
