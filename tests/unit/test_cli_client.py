"""The CLI's batch submit (cli.client): 1,000 requests a call, keyed so a call sent again after an
error that may pass returns the same jobs; other errors stop it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb

from cli import client


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
