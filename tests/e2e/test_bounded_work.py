"""Bounded work per request: a 1 MB ListJobs filter is refused at once, and GetStatus calls made
meanwhile stay as fast as without it.

The session stack caps messages at 64 KiB, so this module starts a second gRPC server and Envoy,
with the default message size limits, on the session stack's PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.parse
from collections.abc import Iterator

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.conftest import second_server
from tests.credentials import aio_channel

CLAUSE = 'status = "FAILED" AND '
# About 48,000 clauses: what froze the server for seconds before filters were capped.
HUGE_FILTER = CLAUSE * (1024 * 1024 // len(CLAUSE)) + 'status = "FAILED"'
HUGE_FILTERS_SENT = 20
STATUS_CALLS = 200
# Envoy's request-header limit keeps a 1 MB query string from the server, and Envoy forwards the
# original path as gRPC metadata, which the server limits too; a filter of a few KiB passes both
# and is refused by the server.
LONG_REST_FILTER = CLAUSE * (4 * 1024 // len(CLAUSE))


@pytest.fixture(scope="module")
def roomy(stack: Stack) -> Iterator[Stack]:
    """A second server and gateway with the default message size limits."""
    with second_server(stack, "bounded-work") as second:
        yield second


async def _status_latencies(
    stub: pb_grpc.JobServiceAsyncStub, job_id: str, *, until: asyncio.Event | None = None
) -> list[float]:
    """Seconds per GetStatus call, one after another: STATUS_CALLS of them, or until `until`."""
    latencies: list[float] = []
    while len(latencies) < STATUS_CALLS or (until is not None and not until.is_set()):
        started = time.perf_counter()
        await stub.GetStatus(pb.GetStatusRequest(job_id=job_id), timeout=30)
        latencies.append(time.perf_counter() - started)
        if until is not None and until.is_set():
            break
    return latencies


async def _refusals(
    stub: pb_grpc.JobServiceAsyncStub, done: asyncio.Event
) -> list[grpc.aio.AioRpcError]:
    """Send the huge filter HUGE_FILTERS_SENT times; the errors it got."""
    errors = []
    try:
        for _ in range(HUGE_FILTERS_SENT):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListJobs(pb.ListJobsRequest(filter=HUGE_FILTER), timeout=30)
            errors.append(raised.value)
    finally:
        done.set()
    return errors


async def test_a_1_mb_filter_is_refused_while_get_status_stays_fast(roomy: Stack) -> None:
    options = [("grpc.max_send_message_length", 4 * 1024 * 1024)]
    async with aio_channel(roomy.gateway_target, roomy.api_key, options=options) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        job = await stub.SubmitJob(pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum))
        baseline = await _status_latencies(stub, job.id)

        done = asyncio.Event()
        errors, loaded = await asyncio.gather(
            _refusals(stub, done), _status_latencies(stub, job.id, until=done)
        )

    assert len(errors) == HUGE_FILTERS_SENT
    for error in errors:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "filter" in (error.details() or "")
    # Generous: a request that held the event loop would add its whole parse to some call.
    slowest_allowed = 10 * max(baseline) + 0.5
    assert max(loaded) < slowest_allowed, (max(loaded), max(baseline))
    assert statistics.median(loaded) < 10 * statistics.median(baseline) + 0.05


async def _raw_get(stack: Stack, target: str) -> bytes:
    """GET `target` over plain HTTP/1.1 (httpx refuses URLs this long): what Envoy answers.

    The request is written in pieces while the answer is read, because Envoy answers and
    closes the connection before it has read all of an oversized request line.
    """
    host, port = stack.gateway_target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET {target} HTTP/1.1\r\nHost: {stack.gateway_target}\r\n\r\n".encode()
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        for start in range(0, len(request), 16 * 1024):
            if answer.done():
                break
            writer.write(request[start : start + 16 * 1024])
            await writer.drain()
    except ConnectionError:
        pass  # Envoy closed the connection: its answer is already in
    try:
        return await asyncio.wait_for(answer, timeout=30)
    finally:
        writer.close()


async def test_long_filters_over_rest_are_refused_naming_the_filter(roomy: Stack) -> None:
    async with httpx.AsyncClient(
        base_url=roomy.http_base, headers=roomy.auth_headers(), timeout=30
    ) as http:
        long = await http.get("/api/v1/jobs", params={"filter": LONG_REST_FILTER})
    huge = await _raw_get(roomy, "/api/v1/jobs?" + urllib.parse.urlencode({"filter": HUGE_FILTER}))

    assert long.status_code == 400, long.text
    assert "filter" in long.json()["message"]
    head, _, body = huge.partition(b"\r\n\r\n")
    # Envoy's request-header limit answers: a client error with a JSON message, never a 5xx.
    assert head.startswith(b"HTTP/1.1 431 "), huge[:300]
    assert json.loads(body)["message"]


@pytest.mark.parametrize("kib", [9, 20, 59])
async def test_a_query_string_above_the_header_limit_is_431_not_a_server_error(
    roomy: Stack, kib: int
) -> None:
    """Between the gateway's 8 KiB header limit and Envoy's default one, the gRPC server used
    to refuse the metadata Envoy passed on, as RESOURCE_EXHAUSTED (429)."""
    answer = await _raw_get(roomy, "/api/v1/jobs?filter=" + "a" * (kib * 1024))

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert json.loads(body)["message"]
