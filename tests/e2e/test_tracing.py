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
