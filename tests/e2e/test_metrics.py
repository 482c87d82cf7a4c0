"""Prometheus metrics of the server, the worker and Envoy, as a scraper sees them."""

from __future__ import annotations

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.eventually import eventually


async def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape `url`; a worker that has just started may take a moment to open its port."""
    async with httpx.AsyncClient(
        timeout=10, transport=httpx.AsyncHTTPTransport(retries=20)
    ) as client:
        text = (await client.get(url)).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_server_and_worker_count_calls_jobs_and_outcomes(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    server = f"http://127.0.0.1:{stack.config.ports.server_metrics}/metrics"
    worker = f"http://127.0.0.1:{stack.config.ports.worker_metrics}/metrics"
    before_server, before_worker = await _samples(server), await _samples(worker)

    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[1, 2], operation=pb.cube_sum))
    stream = jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    await stream.read()
    during = await _samples(server)
    while await stream.read() is not grpc.aio.EOF:
        pass

    after_worker = await eventually(
        lambda: _samples(worker),
        until=lambda s: (
            _value(s, "jobs_processed_total", operation="cube_sum", outcome="success")
            > _value(before_worker, "jobs_processed_total", operation="cube_sum", outcome="success")
        ),
    )
    after_server = await _samples(server)

    def grew(name: str, **labels: str) -> float:
        return _value(after_server, name, **labels) - _value(before_server, name, **labels)

    assert grew("jobs_grpc_requests_total", method="SubmitJob", code="OK") >= 1
    assert grew("jobs_submitted_total", operation="cube_sum") >= 1
    assert grew("jobs_grpc_request_duration_seconds_count", method="SubmitJob") >= 1
    assert _value(during, "jobs_watch_streams_open") >= 1
    assert grew("jobs_grpc_requests_total", method="WatchJob", code="OK") >= 1
    assert _value(after_worker, "jobs_processing_seconds_count", operation="cube_sum") >= 1
    assert ("jobs_in_flight", frozenset()) in after_worker


async def test_errors_are_counted_by_code(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    server = f"http://127.0.0.1:{stack.config.ports.server_metrics}/metrics"
    before = await _samples(server)

    with pytest.raises(grpc.aio.AioRpcError):
        await jobs_stub.GetStatus(pb.GetStatusRequest(job_id="nope"))

    after = await _samples(server)
    key = {"method": "GetStatus", "code": "INVALID_ARGUMENT"}
    assert (
        _value(after, "jobs_grpc_requests_total", **key)
        == _value(before, "jobs_grpc_requests_total", **key) + 1
    )


async def test_envoy_stats_are_reachable(stack: Stack) -> None:
    samples = await _samples(f"http://127.0.0.1:{stack.config.ports.envoy_admin}/stats/prometheus")

    assert any(name.startswith("envoy_cluster_upstream_rq") for name, _ in samples)
