"""Cancel, idempotent submit, resumable watch and lease recovery, over gRPC and REST."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.ids import new_job_id
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.eventually import eventually
from tests.owners import TEST_OWNER

FINAL = (pb.SUCCESS, pb.FAILED, pb.CANCELLED)


async def _final(stub: pb_grpc.JobServiceAsyncStub, job_id: str) -> pb.Job:
    return await eventually(
        lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id)),
        until=lambda job: job.status in FINAL,
    )


async def test_cancelling_a_running_job_is_final_and_the_worker_stops(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[3], operation=pb.square_sum))
    await eventually(
        lambda: jobs_stub.GetStatus(pb.GetStatusRequest(job_id=job.id)),
        until=lambda j: j.status == pb.IN_PROGRESS,
    )

    cancelled = await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    again = await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.id))

    assert cancelled.status == pb.CANCELLED
    assert cancelled.result.error == "cancelled by request"
    assert again.status == pb.CANCELLED
    assert again.updated_at == cancelled.updated_at
    logs = [worker.log_path for worker in stack.workers]
    await eventually(
        lambda: _logs_mention(logs, f"job {job.id}: attempt 1 stopped early"), until=bool
    )
    final = await jobs_stub.GetResult(pb.GetResultRequest(job_id=job.id))
    assert final.status == pb.CANCELLED
    assert final.attempts == 1


async def _logs_mention(paths: list[Any], text: str) -> bool:
    return any(text in path.read_text(errors="replace") for path in paths)


async def test_cancelling_a_finished_job_is_failed_precondition(
    jobs_stub: pb_grpc.JobServiceAsyncStub, http: httpx.AsyncClient
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[1], operation=pb.square_sum))
    await _final(jobs_stub, job.id)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    rest = await http.post(f"/api/v1/jobs/{job.id}:cancel")

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SUCCESS" in (refused.value.details() or "")
    assert rest.status_code == 400
    assert "already finished" in rest.json()["message"]


async def test_cancel_over_rest(http: httpx.AsyncClient) -> None:
    submitted = (
        await http.post("/api/v1/jobs/", json={"data": [1], "operation": "cube_sum"})
    ).json()

    cancelled = await http.post(f"/api/v1/jobs/{submitted['id']}:cancel")
    unknown = await http.post(f"/api/v1/jobs/{uuid.UUID(int=7 << 76 | 2 << 62)}:cancel")

    # The job is still in its 0.5 s delay when the cancel arrives.
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["result"] == {"error": "cancelled by request"}
    assert unknown.status_code == 404


async def test_same_request_id_returns_the_original_job(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    key = str(uuid.uuid4())
    request = pb.SubmitJobRequest(data=[1, 2], operation=pb.cube_sum, request_id=key)

    first = await jobs_stub.SubmitJob(request)
    retried = await jobs_stub.SubmitJob(request)
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await jobs_stub.SubmitJob(
            pb.SubmitJobRequest(data=[1, 2, 3], operation=pb.cube_sum, request_id=key)
        )

    assert retried.id == first.id
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert key in (conflict.value.details() or "")
    assert (await _final(jobs_stub, first.id)).result.result == 9.0


async def test_idempotency_key_header_over_rest(http: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"data": [2, 2], "operation": "square_sum"}

    first = await http.post("/api/v1/jobs/", json=body, headers=headers)
    retried = await http.post("/api/v1/jobs/", json=body, headers=headers)
    conflict = await http.post(
        "/api/v1/jobs/", json={**body, "operation": "cube_sum"}, headers=headers
    )

    assert first.status_code == 201
    assert retried.status_code == 201
    assert retried.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert headers["Idempotency-Key"] in conflict.json()["message"]


async def test_watch_resumes_after_a_sequence_with_nothing_missed_or_repeated(
    jobs_stub: pb_grpc.JobServiceAsyncStub, http: httpx.AsyncClient
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[6], operation=pb.square_sum))
    await _final(jobs_stub, job.id)

    after_first = [
        (u.sequence, u.job.status)
        async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id, after_sequence=1))
    ]
    after_last = [
        u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id, after_sequence=3))
    ]
    sse = await http.get(f"/api/v1/jobs/{job.id}/watch", headers={"Last-Event-ID": "2"})
    query = await http.get(f"/api/v1/jobs/{job.id}/watch", params={"after_sequence": 2})

    assert after_first == [(2, pb.IN_PROGRESS), (3, pb.SUCCESS)]
    assert after_last == []
    for response in (sse, query):
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        assert [(e["sequence"], e["job"]["status"]) for e in events] == [(3, "SUCCESS")]
        assert events[0]["job"]["result"] == {"result": 36}


async def test_bad_last_event_id_is_400(http: httpx.AsyncClient) -> None:
    job = (await http.post("/api/v1/jobs/", json={"data": [1], "operation": "cube_sum"})).json()

    response = await http.get(f"/api/v1/jobs/{job['id']}/watch", headers={"Last-Event-ID": "x"})

    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["message"]


async def test_a_job_whose_worker_vanished_is_run_again_when_its_lease_expires(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    # Claim the job the way a worker would, then "die": never renew, never finish.
    store = await JobStore.connect(stack.database_url, pool_size=1)
    try:
        job, _ = await store.create(
            owner=TEST_OWNER,
            job_id=new_job_id(),
            operation=Operation.CUBE_SUM,
            numbers=pack_numbers([3.0]),
        )
        claim = await store.claim(job.id, lease=timedelta(seconds=1))
        assert claim is not None
    finally:
        await store.close()

    final = await _final(jobs_stub, str(job.id))

    assert final.status == pb.SUCCESS
    assert final.result.result == 27.0
    assert final.attempts == 2
    history = [
        (u.sequence, u.job.status)
        async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=str(job.id), after_sequence=0))
    ]
    assert history == [(5, pb.SUCCESS)]
