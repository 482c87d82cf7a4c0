"""WatchJobs against the real stack: every change of many jobs exactly once, in commit order,
across a resume and a LISTEN reconnect; filters and job ids; tenants apart; heartbeats; refused
cursors and ids."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.database import asyncpg_dsn
from jobcore.events import LISTENER_APPLICATION_NAME
from jobcore.ids import new_job_id
from tests.credentials import aio_channel
from tests.eventually import eventually
from tests.status_details import field_violations

FINAL = (pb.SUCCESS, pb.FAILED, pb.CANCELLED)
# A message that is due arrives within this; it only guards against a hang.
GUARD_SECONDS = 30


@dataclass
class Tenant:
    """A tenant of its own for one test: its name, a key with jobs.write, a client."""

    name: str
    key: str
    jobs: pb_grpc.JobServiceAsyncStub


@pytest.fixture
async def new_tenant(stack: Stack) -> AsyncIterator[Callable[[], asyncio.Future[Tenant]]]:
    """Makes tenants with a key each through AdminService, presenting the stack's key."""
    async with contextlib.AsyncExitStack() as opened:
        admin_channel = await opened.enter_async_context(
            aio_channel(stack.grpc_target, stack.api_key)
        )
        admin = pb_grpc.AdminServiceStub(admin_channel)

        async def make() -> Tenant:
            name = f"watch-{uuid.uuid4().hex[:10]}"
            created = await admin.CreateApiKey(
                pb.CreateApiKeyRequest(tenant=name, scopes=["jobs.write"], name="watch-jobs")
            )
            channel = await opened.enter_async_context(aio_channel(stack.grpc_target, created.key))
            return Tenant(name, created.key, pb_grpc.JobServiceStub(channel))

        yield lambda: asyncio.ensure_future(make())


@dataclass
class Watch:
    """One WatchJobs call read in the background: its messages as they come."""

    call: grpc.aio.UnaryStreamCall[pb.WatchJobsRequest, pb.WatchJobsResponse]
    messages: list[pb.WatchJobsResponse] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def changes(self) -> list[pb.WatchJobsResponse]:
        return [message for message in self.messages if not message.heartbeat]

    @property
    def cursor(self) -> str:
        return self.messages[-1].cursor

    async def until(
        self, done: Callable[[list[pb.WatchJobsResponse]], bool]
    ) -> list[pb.WatchJobsResponse]:
        """Wait until `done(changes)` holds; the changes so far."""
        return await eventually(
            lambda: asyncio.sleep(0, result=self.changes), until=done, timeout_seconds=60
        )

    async def close(self) -> None:
        self.call.cancel()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self.reader


@contextlib.asynccontextmanager
async def watching(
    jobs: pb_grpc.JobServiceAsyncStub, request: pb.WatchJobsRequest
) -> AsyncIterator[Watch]:
    """A WatchJobs stream being read, once its first message has come (it is subscribed)."""
    watch = Watch(jobs.WatchJobs(request))

    async def read() -> None:
        async for message in watch.call:
            watch.messages.append(message)

    watch.reader = asyncio.create_task(read())
    try:
        await eventually(
            lambda: asyncio.sleep(0, result=len(watch.messages)),
            until=bool,
            timeout_seconds=GUARD_SECONDS,
        )
        yield watch
    finally:
        await watch.close()


def _all_final(ids: set[str]) -> Callable[[list[pb.WatchJobsResponse]], bool]:
    return lambda changes: {m.job.id for m in changes if m.job.status in FINAL} >= ids


async def _history(stack: Stack, tenant: str) -> list[tuple[str, int]]:
    """The tenant's changes as the database has them, in position (commit) order."""
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        rows = await connection.fetch(
            "SELECT job_id, sequence FROM job_events WHERE tenant = $1 ORDER BY position",
            tenant,
        )
    finally:
        await connection.close()
    return [(str(row["job_id"]), row["sequence"]) for row in rows]


def _received(*watches: Watch) -> list[tuple[str, int]]:
    return [(m.job.id, m.sequence) for watch in watches for m in watch.changes]


async def _submit(
    tenant: Tenant, count: int, *, operation: pb.Operation.ValueType = pb.square_sum
) -> list[pb.Job]:
    return list(
        await asyncio.gather(
            *(
                tenant.jobs.SubmitJob(pb.SubmitJobRequest(data=[n], operation=operation))
                for n in range(count)
            )
        )
    )


async def _refused(
    jobs: pb_grpc.JobServiceAsyncStub,
    request: pb.WatchJobsRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> dict[str, str]:
    """The field violations of a WatchJobs call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in jobs.WatchJobs(request, metadata=metadata, timeout=GUARD_SECONDS):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    return field_violations(raised.value)


async def test_every_change_of_many_concurrent_jobs_arrives_once_in_commit_order_across_a_resume(
    stack: Stack, new_tenant: Callable[[], asyncio.Future[Tenant]]
) -> None:
    tenant = await new_tenant()
    request = pb.WatchJobsRequest()
    async with watching(tenant.jobs, request) as first:
        start = first.messages[0]
        jobs = await _submit(tenant, 40)
        ids = {job.id for job in jobs}
        # Cut the stream mid-way, between changes.
        await first.until(lambda changes: len(changes) >= len(ids))
    resumed_request = pb.WatchJobsRequest(after_cursor=first.cursor)
    async with watching(tenant.jobs, resumed_request) as second:
        await second.until(_all_final(ids))

    assert start.heartbeat
    assert start.cursor
    assert not start.HasField("job")
    history = await _history(stack, tenant.name)
    assert len(history) == 3 * len(ids)  # PENDING, IN_PROGRESS, SUCCESS
    assert _received(first, second) == history
    squares = {job.id: float(n * n) for n, job in enumerate(jobs)}
    finals = [m for m in first.changes + second.changes if m.job.status in FINAL]
    assert sorted(m.job.id for m in finals) == sorted(ids)
    assert all(m.job.status == pb.SUCCESS for m in finals)
    assert all(m.job.result.result == squares[m.job.id] for m in finals)
    assert all(m.cursor for m in first.messages + second.messages)


@pytest.mark.usefixtures("workers_stopped")
async def test_a_filter_and_job_ids_select_the_changes_sent(
    new_tenant: Callable[[], asyncio.Future[Tenant]],
) -> None:
    tenant = await new_tenant()
    [a] = await _submit(tenant, 1, operation=pb.square_sum)
    b, c = await _submit(tenant, 2, operation=pb.cube_sum)
    cubes = pb.WatchJobsRequest(filter='operation = "cube_sum"')
    by_ids = pb.WatchJobsRequest(job_ids=[a.id, c.id])
    both = pb.WatchJobsRequest(filter="operation = cube_sum", job_ids=[c.id, a.id])
    pending = pb.WatchJobsRequest(filter='status = "PENDING"')
    async with (
        watching(tenant.jobs, cubes) as watch_cubes,
        watching(tenant.jobs, by_ids) as watch_ids,
        watching(tenant.jobs, both) as watch_both,
        watching(tenant.jobs, pending) as watch_pending,
    ):
        for job in (a, b, c):
            await tenant.jobs.CancelJob(pb.CancelJobRequest(job_id=job.id))
        [d] = await _submit(tenant, 1)
        await tenant.jobs.CancelJob(pb.CancelJobRequest(job_id=d.id))
        # Every stream has covered every change once its cursor is past d's cancellation: a
        # stream that resumes from it gets nothing more.
        await watch_ids.until(lambda changes: len(changes) == 2)
        await watch_pending.until(lambda changes: len(changes) == 1)
        await watch_cubes.until(lambda changes: len(changes) == 2)
        await watch_both.until(lambda changes: len(changes) == 1)

    def shown(watch: Watch) -> list[tuple[str, int]]:
        return [(m.job.id, m.job.status) for m in watch.changes]

    assert shown(watch_cubes) == [(b.id, pb.CANCELLED), (c.id, pb.CANCELLED)]
    assert shown(watch_ids) == [(a.id, pb.CANCELLED), (c.id, pb.CANCELLED)]
    assert shown(watch_both) == [(c.id, pb.CANCELLED)]
    assert shown(watch_pending) == [(d.id, pb.PENDING)]
    assert watch_ids.changes[0].job.result.error == "cancelled by request"
    assert [m.sequence for m in watch_ids.changes] == [2, 2]


async def test_another_tenants_jobs_and_cursors_never_cross_over(
    new_tenant: Callable[[], asyncio.Future[Tenant]],
) -> None:
    mine, theirs = await new_tenant(), await new_tenant()
    async with (
        watching(mine.jobs, pb.WatchJobsRequest()) as my_watch,
        watching(theirs.jobs, pb.WatchJobsRequest()) as their_watch,
    ):
        my_jobs = await _submit(mine, 3)
        their_jobs = await _submit(theirs, 3)
        # Their job ids in my stream select nothing of theirs: their jobs are not there for me.
        async with watching(
            mine.jobs, pb.WatchJobsRequest(job_ids=[job.id for job in their_jobs])
        ) as peeking:
            await my_watch.until(_all_final({job.id for job in my_jobs}))
            await their_watch.until(_all_final({job.id for job in their_jobs}))
            their_jobs += await _submit(theirs, 1)
            await their_watch.until(_all_final({job.id for job in their_jobs}))
        their_cursor = their_watch.cursor

    assert {m.job.id for m in my_watch.changes} == {job.id for job in my_jobs}
    assert {m.job.id for m in their_watch.changes} == {job.id for job in their_jobs}
    assert peeking.changes == []
    violations = await _refused(mine.jobs, pb.WatchJobsRequest(after_cursor=their_cursor))
    assert "not returned by WatchJobs" in violations["after_cursor"]


async def test_a_new_stream_starts_with_a_heartbeat_and_beats_while_idle(
    new_tenant: Callable[[], asyncio.Future[Tenant]],
) -> None:
    tenant = await new_tenant()  # WATCH_HEARTBEAT_SECONDS is 1 in the test stack
    async with watching(tenant.jobs, pb.WatchJobsRequest()) as watch:
        await eventually(
            lambda: asyncio.sleep(0, result=len(watch.messages)),
            until=lambda count: count >= 3,
            timeout_seconds=GUARD_SECONDS,
        )

    assert all(m.heartbeat and not m.HasField("job") for m in watch.messages)
    assert all(m.cursor for m in watch.messages)
    # The stream covered nothing new, and resuming from any of its cursors works.
    async with watching(
        tenant.jobs, pb.WatchJobsRequest(after_cursor=watch.messages[-1].cursor)
    ) as resumed:
        [job] = await _submit(tenant, 1)
        await resumed.until(lambda changes: len(changes) >= 1)
    assert resumed.changes[0].job.id == job.id
    assert resumed.changes[0].job.status == pb.PENDING


async def test_forged_foreign_and_altered_cursors_and_bad_ids_are_invalid_arguments(
    new_tenant: Callable[[], asyncio.Future[Tenant]],
) -> None:
    tenant = await new_tenant()
    async with watching(tenant.jobs, pb.WatchJobsRequest(filter="status = PENDING")) as watch:
        cursor = watch.cursor
    payload, mac = cursor.split(".")
    altered = f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"
    good_id = str(new_job_id())

    refusals = {
        "garbage": await _refused(tenant.jobs, pb.WatchJobsRequest(after_cursor="garbage")),
        "another filter": await _refused(tenant.jobs, pb.WatchJobsRequest(after_cursor=cursor)),
        "added job ids": await _refused(
            tenant.jobs,
            pb.WatchJobsRequest(filter="status = PENDING", job_ids=[good_id], after_cursor=cursor),
        ),
        "altered": await _refused(
            tenant.jobs, pb.WatchJobsRequest(filter="status = PENDING", after_cursor=altered)
        ),
        "huge": await _refused(tenant.jobs, pb.WatchJobsRequest(after_cursor="x" * 10_000)),
        "Last-Event-ID": await _refused(
            tenant.jobs, pb.WatchJobsRequest(), metadata=(("last-event-id", "12"),)
        ),
        "bad ids": await _refused(
            tenant.jobs, pb.WatchJobsRequest(job_ids=[good_id, "nope", good_id, ""])
        ),
        "too many ids": await _refused(
            tenant.jobs, pb.WatchJobsRequest(job_ids=[str(uuid.uuid4()) for _ in range(1001)])
        ),
        "bad filter": await _refused(tenant.jobs, pb.WatchJobsRequest(filter="status > FAILED")),
    }

    for name in ("garbage", "another filter", "added job ids", "altered", "huge"):
        assert list(refusals[name]) == ["after_cursor"], name
    assert "for this filter and these job ids" in refusals["another filter"]["after_cursor"]
    assert list(refusals["Last-Event-ID"]) == ["Last-Event-ID"]
    assert list(refusals["bad ids"]) == ["job_ids[1]", "job_ids[3]"]
    assert "at most 1000" in refusals["too many ids"]["job_ids"]
    assert list(refusals["bad filter"]) == ["filter"]


async def test_a_listen_reconnect_misses_nothing(
    stack: Stack, new_tenant: Callable[[], asyncio.Future[Tenant]]
) -> None:
    tenant = await new_tenant()
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        listeners = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
        before = {
            row["pid"] for row in await connection.fetch(listeners, LISTENER_APPLICATION_NAME)
        }
        assert before, "no LISTEN connection found"
        async with watching(tenant.jobs, pb.WatchJobsRequest()) as watch:
            first = await _submit(tenant, 20)
            await watch.until(lambda changes: len(changes) >= 5)
            # Every listener of the stack (this server's, the worker's) loses its connection
            # while jobs keep changing; the streams read back what they missed.
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1",
                LISTENER_APPLICATION_NAME,
            )
            second = await _submit(tenant, 20)
            ids = {job.id for job in first + second}
            await watch.until(_all_final(ids))
            after = await eventually(
                lambda: connection.fetch(listeners, LISTENER_APPLICATION_NAME),
                until=lambda rows: bool(rows) and not {row["pid"] for row in rows} & before,
            )
    finally:
        await connection.close()

    assert after
    assert _received(watch) == await _history(stack, tenant.name)
