"""WatchJob streams end cleanly in the real server: no "Failed to detach context" in its log.

The cancel that used to log it arrives while the server is writing a message: the client's
1-byte flow-control window holds the server's first write until the client cancels, so
grpc.aio drops the handler's generator at a `yield` and the event loop closes it elsewhere.
"""

from __future__ import annotations

import httpx
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.credentials import aio_channel
from tests.eventually import eventually

_DETACH_ERROR = "Failed to detach context"
# The server cannot send a message body through a 1-byte window, so its write stays pending.
_TIGHT_WINDOW = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]


async def _watch_calls(stack: Stack) -> dict[str, float]:
    """WatchJob calls the server has finished, by gRPC status code, from its metrics."""
    url = f"http://127.0.0.1:{stack.config.ports.server_metrics}/metrics"
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobs_grpc_requests_total" and sample.labels["method"] == "WatchJob"
    }


def _detach_errors(stack: Stack) -> int:
    return stack.server.log_path.read_text(errors="replace").count(_DETACH_ERROR)


async def test_watch_streams_ended_or_cancelled_mid_write_log_no_detach_error(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    errors_before, calls_before = _detach_errors(stack), await _watch_calls(stack)
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.square_sum))

    updates = [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    async with aio_channel(stack.grpc_target, stack.api_key, options=_TIGHT_WINDOW) as tight:
        call = pb_grpc.JobServiceStub(tight).WatchJob(pb.WatchJobRequest(job_id=job.id))
        await call.initial_metadata()  # sent with the first message, whose body is held back
        call.cancel()

    def grew(calls: dict[str, float], code: str) -> float:
        return calls.get(code, 0.0) - calls_before.get(code, 0.0)

    calls_after = await eventually(
        lambda: _watch_calls(stack),
        until=lambda calls: sum(calls.values()) - sum(calls_before.values()) >= 2,
    )
    assert _detach_errors(stack) == errors_before
    assert updates[-1].job.status == pb.SUCCESS
    assert grew(calls_after, "OK") >= 1
    assert grew(calls_after, "CANCELLED") >= 1  # a stream dropped mid-write was cancelled
