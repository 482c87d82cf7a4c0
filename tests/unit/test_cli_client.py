"""The CLI's batch submit (cli.client): 1,000 requests a call, keyed so a call sent again after an
error that may pass returns the same jobs; other errors stop it. Many jobs followed on one
WatchJobs stream, resumed from its last cursor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb

from cli import client
from tests.eventually import eventually


class _Stub:
    """BatchSubmitJobs that fails as told, then answers a job per request, keyed by request_id."""

    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls: list[list[str]] = []

    async def BatchSubmitJobs(
        self, request: pb.BatchSubmitJobsRequest, **options: Any
    ) -> pb.BatchSubmitJobsResponse:
        self.calls.append([one.request_id for one in request.requests])
        if self.failures:
            code = self.failures.pop(0)
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "failed")
        return pb.BatchSubmitJobsResponse(
            jobs=[pb.Job(id=f"job-{one.request_id}") for one in request.requests]
        )


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ready_at_once(channel: Any, *, attempt: int) -> None:
        return None

    monkeypatch.setattr(client, "_wait_for_server", ready_at_once)


async def _submit(stub: _Stub, count: int, *, key: str = "") -> list[pb.Job]:
    request = pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum, request_id=key)
    submitted: list[pb.Job] = []
    await client.submit_batch(
        stub,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # only the back-off uses it
        client.batch_requests(request, count),
        watch=False,
        on_submitted=submitted.append,
        on_finished=submitted.append,
    )
    return submitted


async def test_requests_go_a_thousand_a_call_each_with_its_own_key() -> None:
    stub = _Stub([])

    submitted = await _submit(stub, 2500, key="run")

    assert sorted(len(call) for call in stub.calls) == [500, 1000, 1000]
    keys = sorted(key for call in stub.calls for key in call)
    assert keys == sorted(f"run-{index}" for index in range(1, 2501))
    assert sorted(job.id for job in submitted) == sorted(f"job-{key}" for key in keys)


async def test_without_a_key_each_run_makes_keys_of_its_own() -> None:
    first, second = _Stub([]), _Stub([])

    await _submit(first, 3)
    await _submit(second, 3)

    (first_keys,), (second_keys,) = first.calls, second.calls
    assert len(set(first_keys)) == 3
    assert not set(first_keys) & set(second_keys)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED],
)
async def test_a_call_that_may_have_failed_is_sent_again_with_the_same_keys(
    code: grpc.StatusCode,
) -> None:
    stub = _Stub([code, code])

    submitted = await _submit(stub, 5)

    assert len(stub.calls) == 3
    assert stub.calls[0] == stub.calls[1] == stub.calls[2]
    assert len(submitted) == 5


async def test_a_refused_call_is_not_sent_again_and_its_error_is_raised() -> None:
    stub = _Stub([grpc.StatusCode.INVALID_ARGUMENT])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _submit(stub, 5)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(stub.calls) == 1


async def test_retries_end_after_the_last_attempt() -> None:
    stub = _Stub([grpc.StatusCode.UNAVAILABLE] * client.BATCH_ATTEMPTS)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _submit(stub, 2)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(stub.calls) == client.BATCH_ATTEMPTS


# --- many jobs on one WatchJobs stream ------------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    await eventually(lambda: asyncio.sleep(0, result=condition()), until=bool, timeout_seconds=5)


def _change(job_id: str, sequence: int, status: pb.JobStatus.ValueType) -> pb.WatchJobsResponse:
    return pb.WatchJobsResponse(
        job=pb.Job(id=job_id, status=status), sequence=sequence, cursor=f"after-{job_id}-{sequence}"
    )


class _WatchingStub(_Stub):
    """BatchSubmitJobs as _Stub, plus WatchJobs streams the test feeds (each starts with a
    heartbeat, as a new stream does) and GetResult from `current`. With `fast`, every job
    submitted has finished before its batch is answered, and another job of the tenant changed
    before it."""

    def __init__(self, *, fast: bool = False, current: dict[str, pb.Job] | None = None) -> None:
        super().__init__([])
        self.fast = fast
        self.current = current or {}
        self.watches: list[pb.WatchJobsRequest] = []
        self.streams: list[asyncio.Queue[pb.WatchJobsResponse | BaseException]] = []

    def WatchJobs(self, request: pb.WatchJobsRequest, **options: Any) -> Any:
        self.watches.append(request)
        stream: asyncio.Queue[pb.WatchJobsResponse | BaseException] = asyncio.Queue()
        stream.put_nowait(pb.WatchJobsResponse(heartbeat=True, cursor=f"start-{len(self.streams)}"))
        self.streams.append(stream)
        return self._read(stream)

    @staticmethod
    async def _read(
        stream: asyncio.Queue[pb.WatchJobsResponse | BaseException],
    ) -> AsyncIterator[pb.WatchJobsResponse]:
        while True:
            item = await stream.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def send(self, *messages: pb.WatchJobsResponse | BaseException) -> None:
        for message in messages:
            self.streams[-1].put_nowait(message)

    async def BatchSubmitJobs(
        self, request: pb.BatchSubmitJobsRequest, **options: Any
    ) -> pb.BatchSubmitJobsResponse:
        if self.fast:
            self.send(_change("someone-elses", 2, pb.SUCCESS))
        response = await super().BatchSubmitJobs(request, **options)
        for job in response.jobs:
            job.status = pb.PENDING
            if self.fast:
                self.send(_change(job.id, 2, pb.IN_PROGRESS), _change(job.id, 3, pb.SUCCESS))
        return response

    async def GetResult(self, request: pb.GetResultRequest, **options: Any) -> pb.Job:
        return self.current[request.job_id]


async def test_a_watched_batch_follows_every_job_on_one_stream_even_jobs_done_before_their_answer() -> (
    None
):
    stub = _WatchingStub(fast=True)
    request = pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum, request_id="run")
    finished: list[pb.Job] = []

    task = asyncio.create_task(
        client.submit_batch(
            stub,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            client.batch_requests(request, 1500),
            watch=True,
            on_submitted=lambda job: None,
            on_finished=finished.append,
        )
    )
    finals = await asyncio.wait_for(task, 5)

    assert len(stub.watches) == 1
    assert list(stub.watches[0].job_ids) == []  # ids unknown before submitting: the tenant's
    assert sorted(job.id for job in finals) == sorted(f"job-run-{i}" for i in range(1, 1501))
    assert [job.id for job in finished] == [job.id for job in finals]
    assert {job.status for job in finals} == {pb.SUCCESS}


async def test_a_broken_watch_resumes_from_its_last_cursor_with_the_same_ids() -> None:
    ids = ["a", "b"]
    stub = _WatchingStub(current={i: pb.Job(id=i, status=pb.PENDING) for i in ids})
    updates: list[pb.WatchJobsResponse] = []
    resumed: list[str] = []

    task = asyncio.create_task(
        client.watch_jobs(
            stub,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            ids,
            on_update=updates.append,
            on_resume=resumed.append,
        )
    )
    await _until(lambda: len(updates) == len(ids))  # the states now: the stream is open
    stub.send(
        _change("a", 2, pb.SUCCESS),
        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()),
    )
    await _until(lambda: len(stub.watches) == 2)
    stub.send(_change("a", 2, pb.SUCCESS), _change("b", 2, pb.FAILED))  # a again: ignored
    finals = await asyncio.wait_for(task, 5)

    assert [list(watch.job_ids) for watch in stub.watches] == [ids, ids]
    assert [watch.after_cursor for watch in stub.watches] == ["", "after-a-2"]
    assert len(resumed) == 1
    assert [(job.id, job.status) for job in finals] == [("a", pb.SUCCESS), ("b", pb.FAILED)]
    # The states read once the stream was open, then each change once.
    assert [(u.job.id, u.job.status, u.sequence) for u in updates] == [
        ("a", pb.PENDING, 0),
        ("b", pb.PENDING, 0),
        ("a", pb.SUCCESS, 2),
        ("b", pb.FAILED, 2),
    ]


async def test_jobs_already_final_need_no_change_and_a_refused_watch_is_raised() -> None:
    done = _WatchingStub(current={"a": pb.Job(id="a", status=pb.CANCELLED)})
    finals = await asyncio.wait_for(
        client.watch_jobs(done, None, ["a"], on_update=lambda update: None),  # type: ignore[arg-type]
        5,
    )
    refused = _WatchingStub(current={"a": pb.Job(id="a", status=pb.PENDING)})
    task = asyncio.create_task(
        client.watch_jobs(refused, None, ["a"], on_update=lambda update: None)  # type: ignore[arg-type]
    )
    await _until(lambda: len(refused.streams) == 1)
    refused.send(
        grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata()
        )
    )

    assert [(job.id, job.status) for job in finals] == [("a", pb.CANCELLED)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(task, 5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
