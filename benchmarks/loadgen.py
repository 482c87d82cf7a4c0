"""The client side of every measurement; each public function runs in a pinned process of its own.

Every loop is bounded by a count or a deadline, and run_pinned bounds the whole
function, so a stuck service ends a measurement with an error, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, Literal

import asyncpg
import grpc
import numpy as np
import psutil
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from benchmarks.cpu import Parts, PartsMeter
from benchmarks.http1 import Http1Connection, HttpError, encode_request
from benchmarks.pinned import Samples
from benchmarks.stats import percentile
from jobcore.schema import JOB_EVENTS_CHANNEL

# The job every throughput test submits: the README's example.
SMALL_JOB = pb.SubmitJobRequest(data=[1, 2, 3, 4, 5], operation=pb.square_sum)
SMALL_JOB_JSON = b'{"data": [1, 2, 3, 4, 5], "operation": "square_sum"}'
CALL_TIMEOUT_SECONDS = 30.0
FINAL_STATUSES = frozenset({"SUCCESS", "FAILED", "CANCELLED"})
# Each job commits PENDING (server), IN_PROGRESS and SUCCESS (worker).
EVENTS_PER_JOB = 3
MB = 1_000_000

# What a failed call raises: counted as an error, never retried within the same call.
_CALL_ERRORS = (
    grpc.aio.AioRpcError,
    OSError,
    EOFError,
    asyncio.LimitOverrunError,
    HttpError,
    TimeoutError,
)
_STREAM_OPEN_CONCURRENCY = 200
_STREAM_SETTLE_SECONDS = 3.0
_STREAM_OPEN_TIMEOUT_SECONDS = 300.0
_RSS_SAMPLE_SECONDS = 0.005

Metadata = tuple[tuple[str, str], ...]


def _auth_metadata(api_key: str) -> Metadata:
    """What every call sends: the key as `authorization: Bearer` (nothing for an empty key).

    Given per call, as a client library does: a grpc.aio channel interceptor would add
    Python work per call to the client whose rate is measured.
    """
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def _open_channels(
    target: str, count: int, *, max_message_bytes: int | None = None
) -> list[grpc.aio.Channel]:
    """`count` channels with a TCP connection each (a shared subchannel pool would merge them)."""
    options: list[tuple[str, int]] = [("grpc.use_local_subchannel_pool", 1)]
    if max_message_bytes is not None:
        options += [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]


async def _close_channels(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(channel.close() for channel in channels))


# --- closed-loop throughput -------------------------------------------------------------


@dataclass
class _Window:
    completed: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


async def _closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    in_flight: int,
    seconds: float,
    max_calls: int | None = None,
) -> tuple[_Window, float]:
    """Keep `in_flight` calls outstanding for `seconds` or `max_calls`; (window, seconds used).

    A call still running at the deadline is awaited but not counted, so the rate is
    completions inside the window divided by the window.
    """
    window = _Window()
    started = time.perf_counter()
    deadline = started + seconds
    limit = max_calls if max_calls is not None else 1 << 62
    issued = 0

    async def lane(index: int) -> None:
        nonlocal issued
        while issued < limit and (begin := time.perf_counter()) < deadline:
            issued += 1
            try:
                await call(index)
            except _CALL_ERRORS:
                window.errors += 1
                continue
            end = time.perf_counter()
            if end <= deadline:
                window.completed += 1
                window.latencies.append(end - begin)

    await asyncio.gather(*(lane(index) for index in range(in_flight)))
    return window, min(time.perf_counter(), deadline) - started


@dataclass(frozen=True)
class Throughput:
    """Closed-loop load: `in_flight` calls outstanding, a warm-up, then `repeats` windows."""

    name: str
    target: str
    # Presented by every call (make run's kind of key); empty: none.
    api_key: str
    in_flight: int
    channels: int
    warmup_seconds: float
    window_seconds: float
    repeats: int
    # gRPC to `target`, or REST (HTTP/1.1 with JSON) to the gateway at `target`.
    protocol: Literal["grpc", "rest"] = "grpc"


async def _repeated(call: Callable[[int], Awaitable[object]], spec: Throughput) -> Samples:
    await _closed_loop(call, in_flight=spec.in_flight, seconds=spec.warmup_seconds)
    samples: Samples = {}
    for _ in range(spec.repeats):
        await _measure_window(call, spec, samples)
    return samples


async def _measure_window(
    call: Callable[[int], Awaitable[object]], spec: Throughput, samples: Samples
) -> None:
    """One window of closed-loop load; its rate, p99 and errors appended to `samples`."""
    window, seconds = await _closed_loop(
        call, in_flight=spec.in_flight, seconds=spec.window_seconds
    )
    samples.setdefault(f"{spec.name}_per_s", []).append(window.completed / seconds)
    samples.setdefault(f"{spec.name}_p99_ms", []).append(percentile(window.latencies, 0.99) * 1000)
    samples.setdefault(f"{spec.name}_errors", []).append(float(window.errors))


def submit(spec: Throughput) -> Samples:
    """SubmitJob over gRPC (also R1, against the echo server) or REST through Envoy: rate, p99
    and errors per window."""
    return asyncio.run(_submit(spec))


async def _submit(spec: Throughput) -> Samples:
    async with _submit_call(spec) as call:
        return await _repeated(call, spec)


def _submit_call(
    spec: Throughput,
) -> contextlib.AbstractAsyncContextManager[Callable[[int], Awaitable[object]]]:
    """One submit of SMALL_JOB per call over the load's connections, open while in the block."""
    return _rest_submit_call(spec) if spec.protocol == "rest" else _grpc_submit_call(spec)


@contextlib.asynccontextmanager
async def _grpc_submit_call(
    spec: Throughput,
) -> AsyncIterator[Callable[[int], Awaitable[object]]]:
    """SubmitJob, the lanes sharing `spec.channels` channels."""
    channels = _open_channels(spec.target, spec.channels)
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    metadata = _auth_metadata(spec.api_key)

    async def call(lane: int) -> None:
        await stubs[lane % len(stubs)].SubmitJob(
            SMALL_JOB, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
        )

    try:
        yield call
    finally:
        await _close_channels(channels)


@contextlib.asynccontextmanager
async def _rest_submit_call(
    spec: Throughput,
) -> AsyncIterator[Callable[[int], Awaitable[object]]]:
    """POST /api/v1/jobs, one keep-alive HTTP/1.1 connection per lane."""
    host, port = spec.target.rsplit(":", 1)
    request = encode_request(
        method="POST",
        host=spec.target,
        path="/api/v1/jobs",
        json_body=SMALL_JOB_JSON,
        headers=dict(_auth_metadata(spec.api_key)),
    )
    connections = [Http1Connection(host, int(port)) for _ in range(spec.in_flight)]

    async def call(lane: int) -> None:
        status, body = await connections[lane].request(request)
        if not 200 <= status < 300:
            raise HttpError(f"HTTP {status}: {body[:200]!r}")

    try:
        yield call
    finally:
        for connection in connections:
            await connection.close()


@dataclass(frozen=True)
class Alternating:
    """Closed-loop loads on several targets measured in turns, window by window, so that
    whatever else the host does in the meantime touches each of them alike."""

    loads: tuple[Throughput, ...]


def submit_alternating(spec: Alternating) -> Samples:
    """Submits to each load's target in turn: each load's rate, p99 and errors per window."""
    return asyncio.run(_submit_alternating(spec))


async def _submit_alternating(spec: Alternating) -> Samples:
    async with contextlib.AsyncExitStack() as opened:
        calls = [await opened.enter_async_context(_submit_call(load)) for load in spec.loads]
        for call, load in zip(calls, spec.loads, strict=True):
            await _closed_loop(call, in_flight=load.in_flight, seconds=load.warmup_seconds)
        samples: Samples = {}
        for _ in range(max(load.repeats for load in spec.loads)):
            for call, load in zip(calls, spec.loads, strict=True):
                await _measure_window(call, load, samples)
        return samples


@dataclass(frozen=True)
class BatchThroughput:
    """Closed-loop BatchSubmitJobs: `in_flight` calls of `batch_size` jobs outstanding."""

    name: str
    target: str
    api_key: str
    batch_size: int
    in_flight: int
    warmup_seconds: float
    window_seconds: float
    repeats: int


def _batch_request(size: int) -> pb.BatchSubmitJobsRequest:
    return pb.BatchSubmitJobsRequest(requests=[SMALL_JOB] * size)


def submit_batches(spec: BatchThroughput) -> Samples:
    """Jobs per second stored by BatchSubmitJobs, with each call's p99 and errors per window."""
    return asyncio.run(_submit_batches(spec))


async def _submit_batches(spec: BatchThroughput) -> Samples:
    channels = _open_channels(spec.target, spec.in_flight)
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    metadata = _auth_metadata(spec.api_key)
    request = _batch_request(spec.batch_size)

    async def call(lane: int) -> None:
        await stubs[lane].BatchSubmitJobs(request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)

    samples: Samples = {f"{spec.name}_{key}": [] for key in ("jobs_per_s", "p99_ms", "errors")}
    try:
        await _closed_loop(call, in_flight=spec.in_flight, seconds=spec.warmup_seconds)
        for _ in range(spec.repeats):
            window, seconds = await _closed_loop(
                call, in_flight=spec.in_flight, seconds=spec.window_seconds
            )
            samples[f"{spec.name}_jobs_per_s"].append(window.completed * spec.batch_size / seconds)
            samples[f"{spec.name}_p99_ms"].append(percentile(window.latencies, 0.99) * 1000)
            samples[f"{spec.name}_errors"].append(float(window.errors))
    finally:
        await _close_channels(channels)
    return samples


# --- GetStatus latency ------------------------------------------------------------------


@dataclass(frozen=True)
class Lookups:
    """Sequential GetStatus calls over a sample of stored ids: latency without queueing."""

    suffix: str
    target: str
    api_key: str
    job_ids: tuple[str, ...]
    calls: int
    repeats: int


def get_status_latency(spec: Lookups) -> Samples:
    """GetStatus p50 and p99 in ms, one call at a time."""
    return asyncio.run(_get_status_latency(spec))


async def _get_status_latency(spec: Lookups) -> Samples:
    [channel] = _open_channels(spec.target, 1)
    stub = pb_grpc.JobServiceStub(channel)
    requests = [pb.GetStatusRequest(job_id=job_id) for job_id in spec.job_ids]
    metadata = _auth_metadata(spec.api_key)
    counter = 0

    async def call(_lane: int) -> None:
        nonlocal counter
        counter += 1
        await stub.GetStatus(
            requests[counter % len(requests)], timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
        )

    samples: Samples = {
        f"getstatus_p50_ms_{spec.suffix}": [],
        f"getstatus_p99_ms_{spec.suffix}": [],
    }
    try:
        await _closed_loop(call, in_flight=1, seconds=120, max_calls=max(1, spec.calls // 5))
        for _ in range(spec.repeats):
            window, _ = await _closed_loop(call, in_flight=1, seconds=120, max_calls=spec.calls)
            if window.errors:
                raise RuntimeError(f"{window.errors} GetStatus calls failed")
            samples[f"getstatus_p50_ms_{spec.suffix}"].append(
                percentile(window.latencies, 0.5) * 1000
            )
            samples[f"getstatus_p99_ms_{spec.suffix}"].append(
                percentile(window.latencies, 0.99) * 1000
            )
    finally:
        await _close_channels([channel])
    return samples


# --- job completions, from the service's own notification channel ----------------------


class _Completions:
    """When each job reached a final state, heard on the LISTEN channel the service's watchers use.

    A job may finish before its SubmitJob answer arrives (delay 0), so final states
    are kept by id and matched when the id becomes known.
    """

    def __init__(self, *, max_outstanding: int) -> None:
        self.final_at: dict[str, float] = {}
        self.failed = 0
        self.slots = asyncio.Semaphore(max_outstanding)
        self._outstanding: set[str] = set()
        self._connection: asyncpg.Connection | None = None

    async def start(self, dsn: str) -> None:
        self._connection = await asyncpg.connect(dsn, timeout=10)
        await self._connection.add_listener(JOB_EVENTS_CHANNEL, self._on_event)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close(timeout=5)

    def _on_event(self, _connection: object, _pid: int, _channel: str, payload: object, /) -> None:
        event = json.loads(str(payload))
        if event["status"] not in FINAL_STATUSES:
            return
        job_id = str(event["job_id"])
        self.final_at.setdefault(job_id, time.perf_counter())
        self.failed += event["status"] != "SUCCESS"
        if job_id in self._outstanding:
            self._outstanding.discard(job_id)
            self.slots.release()

    def submitted(self, job_id: str) -> None:
        """Track a job whose id SubmitJob just returned (its slot is freed when it finishes)."""
        if job_id in self.final_at:
            self.slots.release()
        else:
            self._outstanding.add(job_id)

    async def wait_all(self, job_ids: list[str], *, timeout_seconds: float) -> float:
        """Wait until every job is final; the time the last one finished."""
        deadline = time.perf_counter() + timeout_seconds
        while any(job_id not in self.final_at for job_id in job_ids):
            if time.perf_counter() > deadline:
                missing = sum(job_id not in self.final_at for job_id in job_ids)
                raise TimeoutError(f"{missing} jobs not final after {timeout_seconds:.0f} s")
            await asyncio.sleep(0.02)
        return max(self.final_at[job_id] for job_id in job_ids)


@dataclass(frozen=True)
class Lifecycle:
    """Submit→final: a batch of `jobs` per repeat, or (jobs=0) a sustained run in windows."""

    name: str
    target: str
    api_key: str
    dsn: str
    in_flight: int
    channels: int
    jobs: int
    max_outstanding: int
    warmup_seconds: float
    window_seconds: float
    repeats: int
    delay_seconds: float
    # Above 1: submitted with BatchSubmitJobs, this many jobs a call (`in_flight` calls at once).
    batch_size: int = 1
    # The stack's processes by part (roots): in batch runs, their CPU per job is measured too.
    cpu_parts: Parts = ()


async def _submit_many(
    stubs: list[pb_grpc.JobServiceAsyncStub],
    completions: _Completions,
    *,
    metadata: Metadata,
    in_flight: int,
    count: int,
    deadline: float,
) -> list[str]:
    """Submit up to `count` jobs from `in_flight` lanes until `deadline`; their ids."""
    job_ids: list[str] = []
    issued = 0

    async def lane(index: int) -> None:
        nonlocal issued
        while issued < count:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(completions.slots.acquire(), remaining)
            except TimeoutError:
                return
            issued += 1
            try:
                job = await stubs[index % len(stubs)].SubmitJob(
                    SMALL_JOB, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
                )
            except grpc.aio.AioRpcError:
                completions.slots.release()
                raise
            job_ids.append(job.id)
            completions.submitted(job.id)

    await asyncio.gather(*(lane(index) for index in range(in_flight)))
    return job_ids


def lifecycle(spec: Lifecycle) -> Samples:
    """Jobs per second from submit to SUCCESS (batch or sustained)."""
    return asyncio.run(_lifecycle(spec))


async def _lifecycle(spec: Lifecycle) -> Samples:
    channels = _open_channels(spec.target, spec.channels)
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    completions = _Completions(max_outstanding=spec.max_outstanding)
    await completions.start(spec.dsn)
    try:
        if spec.jobs:
            samples = await _lifecycle_batches(spec, stubs, completions)
        else:
            samples = await _lifecycle_sustained(spec, stubs, completions)
    finally:
        await completions.stop()
        await _close_channels(channels)
    samples[f"{spec.name}_failed"] = [float(completions.failed)]
    return samples


async def _submit_in_batches(
    stubs: list[pb_grpc.JobServiceAsyncStub],
    completions: _Completions,
    *,
    metadata: Metadata,
    in_flight: int,
    batch_size: int,
    count: int,
) -> list[str]:
    """Submit `count` jobs with BatchSubmitJobs, `batch_size` a call, `in_flight` calls at once."""
    job_ids: list[str] = []
    issued = 0

    async def lane(index: int) -> None:
        nonlocal issued
        while issued < count:
            size = min(batch_size, count - issued)
            issued += size
            for _ in range(size):
                await completions.slots.acquire()
            answer = await stubs[index % len(stubs)].BatchSubmitJobs(
                _batch_request(size), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
            )
            for job in answer.jobs:
                job_ids.append(job.id)
                completions.submitted(job.id)

    await asyncio.gather(*(lane(index) for index in range(in_flight)))
    return job_ids


async def _lifecycle_batches(
    spec: Lifecycle, stubs: list[pb_grpc.JobServiceAsyncStub], completions: _Completions
) -> Samples:
    rates: list[float] = []
    cpu_ms_per_job: list[dict[str, float]] = []
    meter = PartsMeter(spec.cpu_parts)
    # The first batch (a twentieth of the size) warms up the server, the workers and the database.
    for batch in [max(100, spec.jobs // 20), *[spec.jobs] * spec.repeats]:
        timeout = 60 + batch / 20  # generous: 20 jobs/s would still finish
        meter.start()
        started = time.perf_counter()
        if spec.batch_size > 1:
            job_ids = await asyncio.wait_for(
                _submit_in_batches(
                    stubs,
                    completions,
                    metadata=_auth_metadata(spec.api_key),
                    in_flight=spec.in_flight,
                    batch_size=spec.batch_size,
                    count=batch,
                ),
                timeout,
            )
        else:
            job_ids = await _submit_many(
                stubs,
                completions,
                metadata=_auth_metadata(spec.api_key),
                in_flight=spec.in_flight,
                count=batch,
                deadline=started + timeout,
            )
        if len(job_ids) < batch:
            raise TimeoutError(f"submitted only {len(job_ids)} of {batch} jobs in {timeout:.0f} s")
        finished = await completions.wait_all(job_ids, timeout_seconds=timeout)
        rates.append(batch / (finished - started))
        cpu_ms_per_job.append({part: used * 1000 / batch for part, used in meter.used().items()})
    samples: Samples = {f"{spec.name}_per_s": rates[1:]}
    if spec.cpu_parts:
        samples |= _cpu_samples(f"{spec.name}_cpu_ms_per_job", cpu_ms_per_job[1:])
    return samples


def _cpu_samples(name: str, repeats: list[dict[str, float]]) -> Samples:
    """The whole set's CPU figure under `name`, and each part's under `name`_part."""
    samples: Samples = {name: [sum(parts.values()) for parts in repeats]}
    for part in repeats[0] if repeats else {}:
        samples[f"{name}_{part}"] = [parts[part] for parts in repeats]
    return samples


async def _lifecycle_sustained(
    spec: Lifecycle, stubs: list[pb_grpc.JobServiceAsyncStub], completions: _Completions
) -> Samples:
    started = time.perf_counter()
    measured_from = started + spec.warmup_seconds + 2 * spec.delay_seconds
    deadline = measured_from + spec.repeats * spec.window_seconds
    await _submit_many(
        stubs,
        completions,
        metadata=_auth_metadata(spec.api_key),
        in_flight=spec.in_flight,
        count=1 << 62,
        deadline=deadline,
    )
    rates = []
    for index in range(spec.repeats):
        begin = measured_from + index * spec.window_seconds
        end = begin + spec.window_seconds
        done = sum(begin <= moment < end for moment in completions.final_at.values())
        rates.append(done / spec.window_seconds)
    return {f"{spec.name}_per_s": rates}


# --- WatchJob: memory per stream, then event latency with events flowing ----------------


@dataclass(frozen=True)
class WatchLoad:
    """Idle streams held open on one server, then jobs submitted at a fixed event rate and watched."""

    target: str
    api_key: str
    # The stack's database, for R4: a bare LISTEN client on the same notifications.
    dsn: str
    server_pid: int
    idle_job_ids: tuple[str, ...]
    # Of those, the streams left open while events flow.
    watchers: int
    channels: int
    in_flight: int
    events_per_second: float
    warmup_seconds: float
    window_seconds: float
    repeats: int
    delay_seconds: float


@dataclass
class _Streams:
    expected: int = 0
    opened: int = 0
    failed: int = 0
    closed: int = 0
    live: int = 0
    received: list[tuple[float, float]] = field(default_factory=list)
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def answered(self, *, ok: bool, error: str = "") -> None:
        """Count a stream that opened (or failed, and why); wake the opener once all have answered."""
        self.opened += ok
        self.failed += not ok
        if error:
            self.errors[error] += 1
        if self.opened + self.failed >= self.expected:
            self.all_answered.set()


async def _hold_idle_stream(
    stub: pb_grpc.JobServiceAsyncStub,
    job_id: str,
    opening: asyncio.Semaphore,
    state: _Streams,
    *,
    metadata: Metadata,
) -> None:
    """Open one stream, count it when its first message arrives, then read heartbeats until cancelled."""
    # The RPC starts when the call object is created, so create it inside the semaphore.
    async with opening:
        call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=metadata)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            state.answered(ok=False, error=f"{error.code().name}: {error.details()}"[:200])
            return
    if first is grpc.aio.EOF:
        state.answered(ok=False, error="the stream ended right after opening")
        return
    state.answered(ok=True)
    try:
        # read() only: grpc.aio forbids mixing read() with async iteration on one call.
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass  # a stream lost after opening is counted below and shows in the open count
    finally:
        state.closed += 1
        call.cancel()


async def _submit_and_watch(
    stub: pb_grpc.JobServiceAsyncStub,
    submitting: asyncio.Semaphore,
    state: _Streams,
    *,
    metadata: Metadata,
) -> None:
    """Submit a job and watch it to the end, recording (receive time, commit→receive latency)."""
    try:
        job = await stub.SubmitJob(SMALL_JOB, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
    finally:
        submitting.release()
    call = stub.WatchJob(
        pb.WatchJobRequest(job_id=job.id), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
    )
    state.live += 1
    try:
        snapshot = True
        async for message in call:
            received = time.time()
            if snapshot or message.heartbeat:
                snapshot = False  # the state read when the stream opened, not a pushed change
                continue
            stamp = message.job.updated_at
            state.received.append((received, received - (stamp.seconds + stamp.nanos / 1e9)))
    finally:
        state.live -= 1


class _ListenReference:
    """R4, in a process of its own: a bare asyncpg LISTEN client on the channel the service's
    watchers are fed from, timing each notification from its commit stamp to its arrival.
    """

    def __init__(self, dsn: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_listen, args=(dsn, child), name="listen-r4")
        self._process.start()
        child.close()
        if not self._pipe.poll(30) or self._pipe.recv() != "listening":
            raise RuntimeError("the LISTEN reference did not start")

    def stop(self) -> list[tuple[float, float]]:
        """Stop listening; (receive time, commit->receive seconds) of every notification."""
        self._pipe.send("stop")
        if not self._pipe.poll(60):
            raise RuntimeError("the LISTEN reference did not answer")
        received: list[tuple[float, float]] = self._pipe.recv()
        self._process.join(10)
        return received


def _listen(dsn: str, pipe: Connection) -> None:
    asyncio.run(_listen_until_stopped(dsn, pipe))


async def _listen_until_stopped(dsn: str, pipe: Connection) -> None:
    received: list[tuple[float, float]] = []

    def on_event(_connection: object, _pid: int, _channel: str, payload: object, /) -> None:
        now = time.time()
        # The event's occurred_at, as the watchers' figure uses its job's updated_at.
        occurred = datetime.fromisoformat(json.loads(str(payload))["occurred_at"])
        received.append((now, now - occurred.timestamp()))

    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.add_listener(JOB_EVENTS_CHANNEL, on_event)
        pipe.send("listening")
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_reader(pipe.fileno(), stopped.set)
        await stopped.wait()
    finally:
        await connection.close(timeout=5)
    pipe.send(received)


def watch(spec: WatchLoad) -> Samples:
    """Server RSS per open stream, then commit→receive latency of pushed job events."""
    return asyncio.run(_watch(spec))


async def _watch(spec: WatchLoad) -> Samples:
    server = psutil.Process(spec.server_pid)
    rss_before = server.memory_info().rss
    idle = _IdleStreams(spec)
    try:
        opened = idle.opened()
        rss_after = server.memory_info().rss
        for error, count in opened["errors"]:
            print(f"watch: {count} streams failed to open: {error}", file=sys.stderr)
        still_open = opened["open"]
        samples: Samples = {
            "watch_streams": [float(still_open)],
            "watch_streams_failed": [float(len(spec.idle_job_ids) - still_open)],
            "watch_kb_per_stream": [(rss_after - rss_before) / max(1, still_open) / 1024],
            "watch_server_rss_mb": [rss_after / MB],
        }
        channels = _open_channels(spec.target, spec.channels)
        try:
            stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
            samples |= await _flow(spec, stubs, idle_open=idle.keep(spec.watchers))
        finally:
            await _close_channels(channels)
    finally:
        idle.stop()
    return samples


class _IdleStreams:
    """The idle WatchJob streams, held by a process of their own.

    Their heartbeats (thousands a second with 50,000 streams) are read there, so they never
    delay the event loop that times the watchers' events; the server's cost is the same.
    """

    def __init__(self, spec: WatchLoad) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_hold_idle_streams, args=(spec, child), name="idle-streams"
        )
        self._process.start()
        child.close()

    def _answer(self, timeout_seconds: float) -> Any:
        if not self._pipe.poll(timeout_seconds):
            raise RuntimeError("the idle streams' process did not answer")
        answer = self._pipe.recv()
        if isinstance(answer, BaseException):
            raise RuntimeError("a WatchJob stream failed unexpectedly") from answer
        return answer

    def opened(self) -> dict[str, Any]:
        """Wait until every stream answered and settled: {"open": n, "errors": [(error, n)]}."""
        answer: dict[str, Any] = self._answer(_STREAM_OPEN_TIMEOUT_SECONDS + 60)
        return answer

    def keep(self, count: int) -> int:
        """Close the streams beyond the first `count`; how many stay open."""
        self._pipe.send(("keep", count))
        kept: int = self._answer(120)
        return kept

    def stop(self) -> None:
        """Close every stream and end the process."""
        with contextlib.suppress(RuntimeError, OSError):
            self._pipe.send(("stop", 0))
            self._answer(120)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _hold_idle_streams(spec: WatchLoad, pipe: Connection) -> None:
    asyncio.run(_hold_idle_streams_until_stopped(spec, pipe))


async def _hold_idle_streams_until_stopped(spec: WatchLoad, pipe: Connection) -> None:
    channels = _open_channels(spec.target, spec.channels)
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    idle = _Streams(expected=len(spec.idle_job_ids))
    opening = asyncio.Semaphore(_STREAM_OPEN_CONCURRENCY)
    holders = [
        asyncio.create_task(
            _hold_idle_stream(
                stubs[index % len(stubs)],
                job_id,
                opening,
                idle,
                metadata=_auth_metadata(spec.api_key),
            )
        )
        for index, job_id in enumerate(spec.idle_job_ids)
    ]
    commands: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    asyncio.get_running_loop().add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    try:
        await asyncio.wait_for(idle.all_answered.wait(), _STREAM_OPEN_TIMEOUT_SECONDS)
        await asyncio.sleep(_STREAM_SETTLE_SECONDS)
        for holder in holders:
            if holder.done() and not holder.cancelled() and holder.exception() is not None:
                pipe.send(holder.exception())
                return
        pipe.send({"open": idle.opened - idle.closed, "errors": idle.errors.most_common(3)})
        while True:
            command, count = await commands.get()
            if command == "stop":
                break
            for holder in holders[count:]:
                holder.cancel()
            await asyncio.gather(*holders[count:], return_exceptions=True)
            pipe.send(idle.opened - idle.closed)
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        await _close_channels(channels)
        pipe.send(idle.closed)


async def _flow(
    spec: WatchLoad, stubs: list[pb_grpc.JobServiceAsyncStub], *, idle_open: int
) -> Samples:
    """Submit jobs at the event rate, each with a watcher; latency and rate per window."""
    flowing = _Streams()
    jobs_per_second = spec.events_per_second / EVENTS_PER_JOB
    total_seconds = spec.warmup_seconds + spec.repeats * spec.window_seconds
    submitting = asyncio.Semaphore(spec.in_flight)
    watchers: set[asyncio.Task[None]] = set()
    submitted_at: list[float] = []
    open_streams: list[tuple[float, float]] = []  # (time, streams open) at each submission
    reference = _ListenReference(spec.dsn)
    start_wall, start = time.time(), time.perf_counter()
    for index in range(int(total_seconds * jobs_per_second)):
        if time.perf_counter() >= start + total_seconds:
            break  # the server fell behind the schedule; stop on time, not on count
        pause = start + index / jobs_per_second - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        # If the server falls behind, the pace slips; the achieved rate below shows it.
        await submitting.acquire()
        submitted_at.append(time.time())
        watcher = asyncio.create_task(
            _submit_and_watch(
                stubs[index % len(stubs)],
                submitting,
                flowing,
                metadata=_auth_metadata(spec.api_key),
            )
        )
        watchers.add(watcher)
        watcher.add_done_callback(watchers.discard)
        open_streams.append((time.time(), float(idle_open + flowing.live)))
    if watchers:
        await asyncio.wait(watchers, timeout=spec.delay_seconds + 30)
    for watcher in list(watchers):
        watcher.cancel()
    listened = reference.stop()
    keys = ("p50_ms", "p99_ms")
    samples: Samples = {f"{side}_event_{key}": [] for side in ("watch", "listen") for key in keys}
    samples["watch_event_rate_per_s"] = []
    for index in range(spec.repeats):
        begin = start_wall + spec.warmup_seconds + index * spec.window_seconds
        end = begin + spec.window_seconds
        jobs = sum(begin <= moment < end for moment in submitted_at)
        for side, received in (("watch", flowing.received), ("listen", listened)):
            latencies = [latency for moment, latency in received if begin <= moment < end]
            samples[f"{side}_event_p50_ms"].append(percentile(latencies, 0.5) * 1000)
            samples[f"{side}_event_p99_ms"].append(percentile(latencies, 0.99) * 1000)
        samples["watch_event_rate_per_s"].append(jobs * EVENTS_PER_JOB / spec.window_seconds)
    measured_from = start_wall + spec.warmup_seconds
    measured = [count for moment, count in open_streams if moment >= measured_from]
    samples["watch_event_open_streams"] = [float(statistics.median(measured or [math.nan]))]
    return samples


# --- a big job: time and peak memory -------------------------------------------------------


@dataclass(frozen=True)
class BigJob:
    """One job of `numbers` numbers at a time, submit→SUCCESS, with the service's memory sampled."""

    name: str
    target: str
    api_key: str
    dsn: str
    numbers: int
    repeats: int
    processes: tuple[tuple[str, int], ...]
    max_message_bytes: int


class _PeakRss(threading.Thread):
    """Samples the RSS of some processes every few milliseconds and keeps each one's peak."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._processes = [psutil.Process(pid) for pid in pids]
        self.peaks = {process.pid: 0 for process in self._processes}
        self._stop_event = threading.Event()

    def now(self) -> dict[int, int]:
        return {process.pid: int(process.memory_info().rss) for process in self._processes}

    def reset(self) -> None:
        self.peaks = self.now()

    def run(self) -> None:
        while not self._stop_event.wait(_RSS_SAMPLE_SECONDS):
            for pid, rss in self.now().items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def big_job(spec: BigJob) -> Samples:
    """Seconds from submit to SUCCESS; peak RSS and growth over the cold baseline, in MB."""
    return asyncio.run(_big_job(spec))


async def _big_job(spec: BigJob) -> Samples:
    request = pb.SubmitJobRequest(operation=pb.square_sum)
    request.data.extend(np.random.default_rng(1).uniform(-1e6, 1e6, spec.numbers).tolist())
    [channel] = _open_channels(spec.target, 1, max_message_bytes=spec.max_message_bytes)
    stub = pb_grpc.JobServiceStub(channel)
    completions = _Completions(max_outstanding=1 << 30)
    await completions.start(spec.dsn)
    sampler = _PeakRss(tuple(pid for _, pid in spec.processes))
    baseline = sampler.now()
    sampler.start()
    keys = ["seconds", "peak_rss_mb", "max_growth_mb"]
    keys += [f"growth_mb_{name.replace('-', '')}" for name, _ in spec.processes]
    samples: Samples = {f"{spec.name}_{key}": [] for key in keys}
    try:
        for attempt in range(spec.repeats + 1):  # the first one warms up
            sampler.reset()
            started = time.perf_counter()
            job = await stub.SubmitJob(request, timeout=120, metadata=_auth_metadata(spec.api_key))
            completions.submitted(job.id)
            finished = await completions.wait_all([job.id], timeout_seconds=120)
            await asyncio.sleep(0.05)  # let the sampler see the tail of the work
            peaks = dict(sampler.peaks)
            if attempt == 0:
                continue
            samples[f"{spec.name}_seconds"].append(finished - started)
            samples[f"{spec.name}_peak_rss_mb"].append(max(peaks.values()) / MB)
            samples[f"{spec.name}_max_growth_mb"].append(
                max(peaks[pid] - baseline[pid] for pid in peaks) / MB
            )
            for name, pid in spec.processes:
                samples[f"{spec.name}_growth_mb_{name.replace('-', '')}"].append(
                    (peaks[pid] - baseline[pid]) / MB
                )
    finally:
        sampler.stop()
        await completions.stop()
        await _close_channels([channel])
    samples[f"{spec.name}_payload_mb"] = [spec.numbers * 8 / MB]
    samples[f"{spec.name}_failed"] = [float(completions.failed)]
    return samples


# --- references R2 and R3: bare Celery ----------------------------------------------------


@dataclass(frozen=True)
class CeleryRoundTrips:
    """`tasks` Celery tasks sent at once and waited for, per repeat."""

    name: str
    url: str
    task: str
    args: tuple[float, ...]
    tasks: int
    warmup_tasks: int
    repeats: int
    timeout_seconds: float
    # The Celery worker and the broker by part (roots): their CPU per task goes in `cpu_name`.
    cpu_parts: Parts = ()
    cpu_name: str = ""


def celery_round_trips(spec: CeleryRoundTrips) -> Samples:
    """Tasks per second from the first send to the last result."""
    from celery.result import ResultSet  # noqa: PLC0415 - only this reference needs Celery

    from benchmarks.celery_ref import create_app  # noqa: PLC0415

    app = create_app(spec.url)
    meter = PartsMeter(spec.cpu_parts)
    cpu_ms_per_task: list[dict[str, float]] = []

    def batch(count: int) -> float:
        meter.start()
        started = time.perf_counter()
        results = [app.send_task(spec.task, args=spec.args) for _ in range(count)]
        ResultSet(results).join_native(timeout=spec.timeout_seconds)
        rate = count / (time.perf_counter() - started)
        cpu_ms_per_task.append({part: used * 1000 / count for part, used in meter.used().items()})
        return rate

    batch(spec.warmup_tasks)  # also waits for the worker to come up
    samples: Samples = {spec.name: [batch(spec.tasks) for _ in range(spec.repeats)]}
    if spec.cpu_name:
        samples |= _cpu_samples(spec.cpu_name, cpu_ms_per_task[1:])
    return samples
