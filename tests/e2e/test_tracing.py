"""One trace follows a job from SubmitJob through the broker into the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.eventually import eventually


def _spans(*logs: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (one JSON object a line, with a "span" key)."""
    spans = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"span"'):
                spans.append(json.loads(line))
    return spans


async def test_the_worker_span_joins_the_submit_trace(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[3], operation=pb.square_sum))
    logs = [stack.server.log_path, *(worker.log_path for worker in stack.workers)]

    async def spans_of_job() -> dict[str, dict[str, Any]]:
        return {
            span["span"]: span
            for span in _spans(*logs)
            if span["attributes"].get("job.id") == job.id
        }

    spans = await eventually(spans_of_job, until=lambda found: "process_job" in found)

    submit, process = spans["jobs.v1.JobService/SubmitJob"], spans["process_job"]
    assert submit["service"] == "jobs-server"
    assert process["service"] == "jobs-worker"
    assert process["trace_id"] == submit["trace_id"]
    assert process["parent_id"] == submit["span_id"]


async def test_events_a_watcher_receives_continue_the_trace(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[4], operation=pb.cube_sum))
    updates = [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    assert updates[-1].job.status == pb.SUCCESS
    logs = [stack.server.log_path, *(worker.log_path for worker in stack.workers)]

    async def job_spans() -> list[dict[str, Any]]:
        return [s for s in _spans(*logs) if s["attributes"].get("job.id") == job.id]

    # The worker logs its span once its finish has returned, which may be after the server
    # delivered the change: wait for both.
    spans = await eventually(
        job_spans,
        until=lambda found: (
            any(
                s["span"].endswith("WatchJob deliver")
                and s["attributes"]["job.status"] == "SUCCESS"
                for s in found
            )
            and any(s["span"] == "process_job" for s in found)
        ),
    )

    [submit] = [s for s in spans if s["span"] == "jobs.v1.JobService/SubmitJob"]
    [process] = [s for s in spans if s["span"] == "process_job"]
    deliveries = [s for s in spans if s["span"].endswith("WatchJob deliver")]
    # Every delivered change belongs to the job's one trace; the final state was made by
    # the worker, so its delivery hangs under the worker's span.
    assert {s["trace_id"] for s in deliveries} == {submit["trace_id"]}
    final = next(s for s in deliveries if s["attributes"]["job.status"] == "SUCCESS")
    assert final["parent_id"] == process["span_id"]
