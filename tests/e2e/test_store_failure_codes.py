"""PostgreSQL failures provoked for real reach clients as their documented codes, over gRPC and
REST: a statement past `statement_timeout` is DEADLINE_EXCEEDED (504), a serialization failure
ABORTED (409), each with RetryInfo and without the driver's text.

This module starts a second server and gateway on the session stack's PostgreSQL and Redis,
whose connections carry `statement_timeout` and `repeatable read` as server settings (asyncpg
passes unknown DSN parameters on), so that a held row lock makes a CancelJob fail either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.database import asyncpg_dsn
from tests.conftest import second_server
from tests.credentials import aio_channel
from tests.eventually import eventually

STATEMENT_TIMEOUT_MS = 2000
DRIVER_WORDS = ("asyncpg", "SQLSTATE", "serialize", "statement timeout", "canceling", "UPDATE")


@pytest.fixture(scope="module")
def strict(stack: Stack) -> Iterator[Stack]:
    """A server and gateway whose statements time out and run in repeatable read."""
    settings = (
        f"statement_timeout={STATEMENT_TIMEOUT_MS}&default_transaction_isolation=repeatable%20read"
    )
    separator = "&" if "?" in stack.database_url else "?"
    with second_server(
        stack, "store-failures", database_url=stack.database_url + separator + settings
    ) as second:
        yield second


@pytest.fixture
async def connections(stack: Stack) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """A connection that holds row locks, and one that watches who waits for them."""
    blocker = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    watcher = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    yield blocker, watcher
    await blocker.close()
    await watcher.close()


async def _pending_job(strict: Stack) -> str:
    async with aio_channel(strict.grpc_target, strict.api_key) as channel:
        job = await pb_grpc.JobServiceStub(channel).SubmitJob(
            pb.SubmitJobRequest(data=[1, 2], operation=pb.square_sum)
        )
    return job.id


async def _until_someone_waits_for(
    watcher: asyncpg.Connection, blocker: asyncpg.Connection
) -> None:
    pid = blocker.get_server_pid()
    await eventually(
        lambda: watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        ),
        until=bool,
        timeout_seconds=10,
        interval_seconds=0.01,
    )


def _retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no RetryInfo in {status}")


def _assert_no_driver_text(text: str) -> None:
    for word in DRIVER_WORDS:
        assert word not in text, text


@pytest.mark.usefixtures("workers_stopped")
async def test_a_statement_past_statement_timeout_is_deadline_exceeded_and_504(
    strict: Stack, connections: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    blocker, _ = connections
    job_id = await _pending_job(strict)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    try:
        async with aio_channel(strict.gateway_target, strict.api_key) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await pb_grpc.JobServiceStub(channel).CancelJob(
                    pb.CancelJobRequest(job_id=job_id), timeout=30
                )
        async with httpx.AsyncClient(
            base_url=strict.http_base, headers=strict.auth_headers(), timeout=30
        ) as http:
            answer = await http.post(f"/api/v1/jobs/{job_id}:cancel")
    finally:
        await blocker.execute("ROLLBACK")

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _retry_info(raised.value).retry_delay.ToTimedelta().total_seconds() > 0
    _assert_no_driver_text(raised.value.details() or "")
    assert answer.status_code == 504, answer.text
    assert answer.json()["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    _assert_no_driver_text(answer.text)


@pytest.mark.usefixtures("workers_stopped")
@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_a_serialization_failure_is_aborted_and_409(
    strict: Stack, connections: tuple[asyncpg.Connection, asyncpg.Connection], transport: str
) -> None:
    """The cancel's snapshot predates a concurrent change of its job that then commits."""
    blocker, watcher = connections
    job_id = await _pending_job(strict)
    await blocker.execute("BEGIN")
    await blocker.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", job_id)

    async def cancel() -> grpc.aio.AioRpcError | httpx.Response:
        if transport == "rest":
            async with httpx.AsyncClient(
                base_url=strict.http_base, headers=strict.auth_headers(), timeout=30
            ) as http:
                return await http.post(f"/api/v1/jobs/{job_id}:cancel")
        async with aio_channel(strict.gateway_target, strict.api_key) as channel:
            try:
                await pb_grpc.JobServiceStub(channel).CancelJob(
                    pb.CancelJobRequest(job_id=job_id), timeout=30
                )
            except grpc.aio.AioRpcError as error:
                return error
        raise AssertionError("CancelJob succeeded despite the concurrent change")

    cancelling = asyncio.create_task(cancel())
    try:
        await _until_someone_waits_for(watcher, blocker)
    finally:
        await blocker.execute("COMMIT")
    answer = await cancelling

    if isinstance(answer, httpx.Response):
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == grpc.StatusCode.ABORTED.value[0]
        _assert_no_driver_text(answer.text)
    else:
        assert answer.code() == grpc.StatusCode.ABORTED
        assert _retry_info(answer).retry_delay.ToTimedelta().total_seconds() > 0
        _assert_no_driver_text(answer.details() or "")
