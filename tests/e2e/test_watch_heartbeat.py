"""While nothing changes, WatchJob sends heartbeats (gRPC and SSE); cancelling a queued job ends it."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc


@pytest.mark.usefixtures("workers_stopped")
async def test_heartbeats_then_cancel_of_a_pending_job_over_grpc(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.cube_sum))
    stream = jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))

    first = await stream.read()
    beat = await stream.read()  # WATCH_HEARTBEAT_SECONDS is 1 in the test stack
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    rest = []
    while (update := await stream.read()) is not grpc.aio.EOF:
        assert isinstance(update, pb.WatchJobResponse)
        rest.append(update)

    assert isinstance(first, pb.WatchJobResponse)
    assert isinstance(beat, pb.WatchJobResponse)
    assert (first.sequence, first.job.status, first.heartbeat) == (1, pb.PENDING, False)
    assert (beat.sequence, beat.job.status, beat.heartbeat) == (1, pb.PENDING, True)
    non_heartbeats = [u for u in rest if not u.heartbeat]
    assert [(u.sequence, u.job.status) for u in non_heartbeats] == [(2, pb.CANCELLED)]
    assert non_heartbeats[0].job.result.error == "cancelled by request"


@pytest.mark.usefixtures("workers_stopped")
async def test_heartbeats_over_sse(http: httpx.AsyncClient) -> None:
    job = (await http.post("/api/v1/jobs/", json={"data": [2], "operation": "cube_sum"})).json()

    frames: list[dict[str, object]] = []
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/watch") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line.removeprefix("data: ")))
            if len(frames) == 2:
                await http.post(f"/api/v1/jobs/{job['id']}:cancel")

    assert frames[0]["heartbeat"] is False
    assert frames[1]["heartbeat"] is True
    assert frames[1]["sequence"] == 1
    final = [frame for frame in frames if not frame["heartbeat"]][-1]
    assert final["sequence"] == 2
    assert final["job"]["status"] == "CANCELLED"  # type: ignore[index]
