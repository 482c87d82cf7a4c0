"""WatchJobs through Envoy: Server-Sent Events resumed with Last-Event-ID or after_cursor,
refused requests as 400s naming the field, and quiet streams (SSE and gRPC) that outlive the
gateway's unary timeout on heartbeats."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.conftest import second_server
from tests.credentials import aio_channel

WATCH = "/api/v1/jobs:watch"
UNARY_TIMEOUT_SECONDS = 1.0


async def _frames(
    http: httpx.AsyncClient,
    params: dict[str, Any],
    *,
    until: Callable[[list[dict[str, Any]]], bool],
    headers: dict[str, str] | None = None,
    on_first: Callable[[], Awaitable[object]] | None = None,
) -> list[dict[str, Any]]:
    """The SSE frames of one WatchJobs stream (heartbeats too), until `until(frames)` holds."""
    frames: list[dict[str, Any]] = []
    async with http.stream("GET", WATCH, params=params, headers=headers or {}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            frames.append(json.loads(line.removeprefix("data: ")))
            if len(frames) == 1 and on_first is not None:
                await on_first()
            if until(frames):
                return frames
    raise AssertionError(f"the stream ended after {frames}")


def _changed(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda frames: sum(not frame["heartbeat"] for frame in frames) >= count


def _changes(frames: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f["job"]["id"], f["job"]["status"]) for f in frames if not f["heartbeat"]]


@pytest.mark.usefixtures("workers_stopped")
async def test_sse_streams_the_changes_and_resumes_with_last_event_id_or_after_cursor(
    http: httpx.AsyncClient,
) -> None:
    submit = {"data": [2], "operation": "cube_sum"}
    a = (await http.post("/api/v1/jobs/", json=submit)).json()
    b = (await http.post("/api/v1/jobs/", json=submit)).json()
    params = {"job_ids": [a["id"], b["id"]], "filter": 'status != "PENDING"'}

    async def cancel_a() -> None:
        await http.post(f"/api/v1/jobs/{a['id']}:cancel")

    first = await _frames(http, params, until=_changed(1), on_first=cancel_a)
    await http.post(f"/api/v1/jobs/{b['id']}:cancel")  # while no stream is open
    by_header = await _frames(
        http, params, until=_changed(1), headers={"Last-Event-ID": first[-1]["cursor"]}
    )
    by_query = await _frames(
        http, {**params, "after_cursor": first[-1]["cursor"]}, until=_changed(1)
    )

    assert first[0]["heartbeat"] is True
    assert first[0]["cursor"]
    assert "job" not in first[0] or not first[0]["job"]
    assert _changes(first) == [(a["id"], "CANCELLED")]
    assert first[-1]["sequence"] == 2
    assert first[-1]["job"]["result"]["error"] == "cancelled by request"
    assert _changes(by_header) == [(b["id"], "CANCELLED")]
    assert _changes(by_query) == [(b["id"], "CANCELLED")]
    assert all(frame["cursor"] for frame in first + by_header + by_query)


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"after_cursor": "forged.cursor"}, {}, "after_cursor"),
        ({}, {"Last-Event-ID": "12"}, "Last-Event-ID"),
        ({"job_ids": ["nope"]}, {}, "job_ids[0]"),
        ({"filter": "priority = high"}, {}, "filter"),
    ],
)
async def test_a_refused_watch_is_a_400_naming_the_field(
    http: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    response = await http.get(WATCH, params=params, headers=headers)

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 3
    bad_request = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert [v["field"] for v in bad_request[0]["field_violations"]] == [field]


@pytest.fixture(scope="module")
def quick_gateway(stack: Stack) -> Iterator[Stack]:
    """A server that beats every quarter second, behind a gateway whose unary calls may take
    one second."""
    with second_server(
        stack,
        "watch-jobs-gateway",
        env={"WATCH_HEARTBEAT_SECONDS": "0.25", "GATEWAY_UNARY_TIMEOUT_SECONDS": "1"},
    ) as second:
        yield second


async def test_idle_streams_beat_through_the_gateway_past_its_unary_timeout(
    stack: Stack, quick_gateway: Stack
) -> None:
    held_seconds = 2 * UNARY_TIMEOUT_SECONDS
    async with httpx.AsyncClient(
        base_url=quick_gateway.http_base, headers=stack.auth_headers(), timeout=30
    ) as http:
        opened = time.monotonic()
        frames = await _frames(
            http,
            {"filter": 'create_time > "9999-01-01T00:00:00Z"'},  # no job is ever selected
            until=lambda _: time.monotonic() - opened > held_seconds,
        )
    async with aio_channel(quick_gateway.gateway_target, stack.api_key) as channel:
        jobs = pb_grpc.JobServiceStub(channel)
        call = jobs.WatchJobs(pb.WatchJobsRequest(filter='create_time > "9999-01-01T00:00:00Z"'))
        opened = time.monotonic()
        messages = []
        async for message in call:
            messages.append(message)
            if time.monotonic() - opened > held_seconds:
                break
        call.cancel()

    for stream in (frames, [json_format.MessageToDict(m) for m in messages]):
        assert len(stream) >= 4
        assert all(frame["heartbeat"] and frame["cursor"] for frame in stream)
