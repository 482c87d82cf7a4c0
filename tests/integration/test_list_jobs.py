"""ListJobs over gRPC and REST, and the indexes that serve each filter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.database import asyncpg_dsn


async def _jobs_since(
    stub: pb_grpc.JobServiceAsyncStub, since: datetime, *, page_size: int, extra: str = ""
) -> list[list[pb.Job]]:
    """Every page of jobs created since `since` (plus `extra` conditions)."""
    filter_text = f'create_time >= "{since.isoformat()}"' + (f" AND {extra}" if extra else "")
    pages, token = [], ""
    while True:
        reply = await stub.ListJobs(
            pb.ListJobsRequest(page_size=page_size, page_token=token, filter=filter_text)
        )
        pages.append(list(reply.jobs))
        token = reply.next_page_token
        if not token:
            return pages


async def test_pages_walk_every_job_newest_first_exactly_once(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    submitted = [
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[i], operation=pb.square_sum))
        for i in range(7)
    ]

    pages = await _jobs_since(jobs_stub, since, page_size=3)

    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [job.id for page in pages for job in page]
    assert listed == [job.id for job in reversed(submitted)]
    assert all(not job.HasField("result") for page in pages for job in page)


async def test_filters_by_status_and_operation(jobs_stub: pb_grpc.JobServiceAsyncStub) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    cube = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.cube_sum))
    square = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.square_sum))
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=square.id))

    cubes = await _jobs_since(jobs_stub, since, page_size=50, extra='operation = "cube_sum"')
    cancelled = await _jobs_since(jobs_stub, since, page_size=50, extra='status = "CANCELLED"')
    not_cancelled = await _jobs_since(jobs_stub, since, page_size=50, extra="status != CANCELLED")

    assert [job.id for job in cubes[0]] == [cube.id]
    assert [job.id for job in cancelled[0]] == [square.id]
    assert [job.id for job in not_cancelled[0]] == [cube.id]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"filter": 'colour = "red"'}, "filter"),
        ({"page_size": 5000}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
    ],
)
async def test_bad_list_requests_are_invalid_argument(
    jobs_stub: pb_grpc.JobServiceAsyncStub, request_fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.ListJobs(pb.ListJobsRequest(**request_fields))  # type: ignore[arg-type]

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


async def test_list_over_rest(http: httpx.AsyncClient) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    created = [
        (await http.post("/api/v1/jobs/", json={"data": [i], "operation": "cube_sum"})).json()
        for i in range(3)
    ]
    params: dict[str, str | int] = {
        "page_size": 2,
        "filter": f'create_time >= "{since.isoformat()}"',
    }

    first = await http.get("/api/v1/jobs", params=params)
    second = await http.get(
        "/api/v1/jobs", params={**params, "page_token": first.json()["next_page_token"]}
    )
    bad = await http.get("/api/v1/jobs", params={"filter": "status > 3"})

    assert first.status_code == 200
    assert [job["id"] for job in first.json()["jobs"]] == [created[2]["id"], created[1]["id"]]
    assert [job["id"] for job in second.json()["jobs"]] == [created[0]["id"]]
    assert second.json()["next_page_token"] == ""
    assert bad.status_code == 400
    assert "filter" in bad.json()["message"]


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("true", "jobs_by_tenant_creation"),
        ("created_at > now() - interval '1 day'", "jobs_by_tenant_creation"),
        ("status = 'FAILED'", "jobs_by_tenant_status_creation"),
        ("operation = 'cube_sum'", "jobs_by_tenant_operation_creation"),
    ],
)
async def test_an_index_serves_every_supported_filter(
    isolated_database_url: str, where: str, index: str
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    try:
        # The isolated table is tiny, so forbid the sequential scan and the sort the planner
        # would pick: what matters is that an index exists that returns rows in page order.
        await connection.execute("SET enable_seqscan = off")
        await connection.execute("SET enable_sort = off")
        plan = await asyncio.wait_for(
            connection.fetchval(
                # ListJobs always reads one tenant's jobs.
                "EXPLAIN (FORMAT JSON) SELECT id FROM jobs WHERE tenant = 'default' AND "
                + where
                + " ORDER BY created_at DESC, id DESC LIMIT 51"
            ),
            timeout=10,
        )
    finally:
        await connection.close()

    assert f'"Index Name": "{index}"' in plan
    assert '"Node Type": "Sort"' not in plan
