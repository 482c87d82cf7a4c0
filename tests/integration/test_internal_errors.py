"""An unexpected failure reaches clients as INTERNAL with a correlation id, never its internals."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from jobcore.database import asyncpg_dsn

FAILING_KEY_PREFIX = "failing-insert-"
# What PostgreSQL's error says; none of it may reach a client.
SECRET = "s3cr3t-driver-text"


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database the stack's server and workers use, as the schema's owner
    (the application's role may not add triggers)."""
    connection = await asyncpg.connect(asyncpg_dsn(stack.migration_database_url))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def failing_inserts(database: asyncpg.Connection) -> AsyncIterator[None]:
    """Storing a job whose idempotency key starts with FAILING_KEY_PREFIX fails in PostgreSQL.

    A real trigger raising an error no mapping knows (SQLSTATE P0001), with SQL in its text.
    """
    await database.execute(
        f"""
        CREATE FUNCTION test_failing_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'SELECT numbers FROM jobs: {SECRET}' USING HINT = 'internals';
        END $$;
        CREATE TRIGGER test_failing_insert BEFORE INSERT ON jobs FOR EACH ROW
        WHEN (NEW.request_id LIKE '{FAILING_KEY_PREFIX}%') EXECUTE FUNCTION test_failing_insert();
        """
    )
    try:
        yield
    finally:
        await database.execute(
            "DROP TRIGGER IF EXISTS test_failing_insert ON jobs;"
            "DROP FUNCTION IF EXISTS test_failing_insert();"
        )


def _correlation_id(status: code_pb2.Code.ValueType, message: str, infos: list[object]) -> str:
    """The correlation id of an INTERNAL error, checked to be in its message and ErrorInfo."""
    assert status == code_pb2.INTERNAL
    [info] = infos
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INTERNAL", "jobs.v1")
    correlation_id: str = info.metadata["correlation_id"]
    assert message == f"internal error (correlation id {correlation_id})"
    return correlation_id


def _grpc_correlation_id(error: grpc.aio.AioRpcError) -> str:
    assert error.code() == grpc.StatusCode.INTERNAL
    status = rpc_status.from_call(error)
    assert status is not None
    assert SECRET not in status.SerializeToString().decode(errors="replace")
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        infos.append(info)
    return _correlation_id(status.code, error.details() or "", infos)


def _logged_once(stack: Stack, correlation_id: str, *, with_text: str) -> None:
    """The server logged the failure once, with its traceback, under the correlation id."""
    records = [
        json.loads(line)
        for line in stack.server.log_path.read_text(errors="replace").splitlines()
        if correlation_id in line
    ]
    assert len(records) == 1, records
    assert records[0]["level"] == "ERROR"
    assert "Traceback" in records[0]["exception"]
    assert with_text in records[0]["exception"]


async def _internal_submits(stack: Stack) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{stack.config.ports.server_metrics}/")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobs_grpc_requests_total"
        and sample.labels == {"method": "SubmitJob", "code": "INTERNAL"}
    )


async def _read_to_the_end(
    stream: grpc.aio.UnaryStreamCall[pb.WatchJobRequest, pb.WatchJobResponse],
) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


@pytest.mark.usefixtures("failing_inserts")
async def test_unmapped_database_error_is_internal_with_a_logged_correlation_id(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    before = await _internal_submits(stack)
    request = pb.SubmitJobRequest(
        data=[1], operation=pb.square_sum, request_id=f"{FAILING_KEY_PREFIX}{uuid.uuid4()}"
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.SubmitJob(request)

    correlation_id = _grpc_correlation_id(raised.value)
    assert await _internal_submits(stack) == before + 1
    _logged_once(stack, correlation_id, with_text=SECRET)


@pytest.mark.usefixtures("failing_inserts")
async def test_unmapped_database_error_is_500_over_rest_without_internals(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/v1/jobs",
        json={"data": [1], "operation": "square_sum"},
        headers={"Idempotency-Key": f"{FAILING_KEY_PREFIX}{uuid.uuid4()}"},
    )

    assert response.status_code == 500
    assert SECRET not in response.text
    assert "SELECT" not in response.text
    body = response.json()
    infos = []
    for detail in body["details"]:
        assert detail.pop("@type") == "type.googleapis.com/google.rpc.ErrorInfo"
        infos.append(error_details_pb2.ErrorInfo(**detail))
    correlation_id = _correlation_id(body["code"], body["message"], infos)
    _logged_once(stack, correlation_id, with_text=SECRET)


async def test_unexpected_failure_mid_stream_ends_it_with_internal(
    stack: Stack,
    jobs_stub: pb_grpc.JobServiceAsyncStub,
    database: asyncpg.Connection,
    workers_stopped: None,
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.square_sum))
    stream = jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    first = await stream.read()
    assert isinstance(first, pb.WatchJobResponse)
    assert (first.job.status, first.sequence) == (pb.PENDING, 1)
    try:
        # A history the server cannot read (a status it does not know), then a change after
        # it: the stream sees a gap, re-reads the history and fails on the unknown status.
        await database.execute(
            """
            INSERT INTO job_events (job_id, sequence, tenant, position, status, occurred_at,
                                    attempt, operation, job_created_at)
            VALUES ($1, 2, 'default', take_event_positions('default', 1), 'NOT_A_STATUS', now(),
                    0, 'square_sum', now()),
                   ($1, 3, 'default', take_event_positions('default', 1), 'IN_PROGRESS', now(),
                    1, 'square_sum', now())
            """,
            uuid.UUID(job.id),
        )

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _read_to_the_end(stream)

        correlation_id = _grpc_correlation_id(raised.value)
        _logged_once(stack, correlation_id, with_text="NOT_A_STATUS")
    finally:
        await database.execute("DELETE FROM jobs WHERE id = $1", uuid.UUID(job.id))
