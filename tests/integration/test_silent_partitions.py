"""Partitions that fail by silence (issue 17): a TCP proxy in front of the real PostgreSQL or
Redis that, frozen, stops forwarding bytes without closing any socket, as a network that
drops packets does. Connections through it stay open and get no answer.

Each test checks what a user of the service relies on: a worker cut off from PostgreSQL
stops its attempt and cannot record it, the job runs again elsewhere; store calls end; a
server cut off from Redis still stores and acknowledges submissions, and the jobs run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from sqlalchemy.engine import make_url

from devstack.stack import Stack
from jobcore.database import TCP_USER_TIMEOUT_SECONDS, BoundedConnection, asyncpg_dsn
from jobcore.errors import StoreUnavailableError, TransientError
from jobcore.ids import new_job_id
from jobcore.models import Claim, Job, JobStatus, Outcome
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.conftest import second_server
from tests.credentials import aio_channel
from tests.eventually import eventually
from tests.owners import TEST_OWNER
from worker.leases import LeaseKeeper

LEASE = timedelta(seconds=1.5)
# Far above any call on a live connection; a call that takes longer hangs.
CALL_BOUND_SECONDS = 30.0


class FreezableProxy:
    """Forwards TCP connections to `target` from a loopback port, on a thread of its own (so a
    blocking test and the processes it starts can use it alike); `freeze()` stops every byte in
    both directions, new connections included, and `thaw()` lets them flow again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freezable-proxy", daemon=True)
        self.port = 0

    def __enter__(self) -> FreezableProxy:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    async def _close(self) -> None:
        """End every forwarded connection (the proxy's own tasks)."""
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connected, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _connected(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        await self._flowing.wait()  # a frozen network answers no SYN either
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, upstream_writer),
            self._pump(upstream_reader, client_writer),
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                # Frozen: nothing is read, so bytes wait in the kernel's buffers, unanswered.
                await self._flowing.wait()
                data = await reader.read(65536)
                await self._flowing.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()


def _through(url: str, proxy: FreezableProxy) -> str:
    """The same URL with its host and port replaced by the proxy's."""
    return (
        make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )


@pytest.fixture
def postgres_proxy(isolated_database_url: str) -> Iterator[FreezableProxy]:
    url = make_url(isolated_database_url)
    with FreezableProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def direct_store(isolated_database_url: str) -> AsyncIterator[JobStore]:
    """Another worker's view of the same database, over a network that stays up."""
    store = await JobStore.connect(isolated_database_url, pool_size=2)
    yield store
    await store.close()


@pytest.fixture
async def cut_off_store(
    isolated_database_url: str, postgres_proxy: FreezableProxy
) -> AsyncIterator[JobStore]:
    """A worker's store whose every connection goes through the proxy."""
    store = await JobStore.connect(_through(isolated_database_url, postgres_proxy), pool_size=2)
    yield store
    postgres_proxy.thaw()
    await store.close()


async def _new_job(store: JobStore) -> Job:
    job, _ = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([3.0]),
    )
    return job


async def test_a_worker_cut_off_from_postgresql_stops_its_attempt_and_the_job_runs_elsewhere(
    cut_off_store: JobStore,
    direct_store: JobStore,
    postgres_proxy: FreezableProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.leases")
    job = await _new_job(direct_store)
    claim = await cut_off_store.claim(job.id, lease=LEASE)
    assert claim is not None
    keeper = LeaseKeeper(cut_off_store, lease=LEASE)
    renewing = asyncio.create_task(keeper.run())
    work = asyncio.create_task(asyncio.Event().wait())  # the job's computation, still going

    with keeper.hold(claim, work):
        postgres_proxy.freeze()
        # The worker itself notices it can no longer prove its claim, and stops the attempt.
        async with asyncio.timeout(CALL_BOUND_SECONDS):
            await asyncio.wait({work})
        assert work.cancelled()
        assert "could not renew its lease" in caplog.text
        # Its renewals time out and are retried: the keeper (and so the worker) lives on.
        assert not renewing.done()

        # Meanwhile the lease runs out in the store too, and another worker runs the job.
        async def requeued() -> list[Job]:
            return await direct_store.requeue_expired(max_attempts=3, limit=10)

        await eventually(requeued, until=lambda jobs: [j.id for j in jobs] == [job.id])
        again = await direct_store.claim(job.id, lease=timedelta(minutes=5))
        assert again is not None
        assert again.attempt == claim.attempt + 1
        assert await direct_store.finish(again, Outcome(result=9.0)) is True

    # The partition heals: the cut-off worker's late outcome is refused by the fencing.
    postgres_proxy.thaw()
    late = await eventually(
        lambda: _late_outcome(cut_off_store, claim), until=lambda recorded: recorded is not None
    )
    assert late is False
    renewing.cancel()
    final = await direct_store.get(job.id, tenant=None)
    assert final.status == JobStatus.SUCCESS
    assert final.outcome == Outcome(result=9.0)


async def _late_outcome(store: JobStore, claim: Claim) -> bool | None:
    """The store's answer to a late outcome; None while the pool still reconnects."""
    try:
        return await store.finish(claim, Outcome(error="late"))
    except TransientError:
        return None


async def test_a_call_abandoned_on_a_silent_connection_ends_and_the_pool_recovers(
    cut_off_store: JobStore, postgres_proxy: FreezableProxy
) -> None:
    await cut_off_store.ping()
    postgres_proxy.freeze()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await cut_off_store.ping()
    # The call ended at its caller's deadline: its connection was dropped, not given back.
    postgres_proxy.thaw()
    async with asyncio.timeout(CALL_BOUND_SECONDS):
        await cut_off_store.ping()


async def test_a_call_that_finds_every_connection_held_by_a_silent_network_hears_unavailable(
    isolated_database_url: str, postgres_proxy: FreezableProxy
) -> None:
    # Overloaded (RESOURCE_EXHAUSTED) would tell a client to back off from this replica's
    # load; these connections wait on a network that went silent, which another replica
    # may not share (UNAVAILABLE: retry, elsewhere if need be).
    store = await JobStore.connect(
        _through(isolated_database_url, postgres_proxy),
        pool_size=2,
        pool_wait=timedelta(milliseconds=300),
    )
    try:
        await store.ping()
        postgres_proxy.freeze()
        hanging = asyncio.create_task(store.ping())
        # A call abandoned at its caller's deadline got no answer; its connection is dropped,
        # and the next call takes the slot and waits to connect through the frozen network.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await store.ping()
        reconnecting = asyncio.create_task(store.ping())
        await asyncio.sleep(0.1)  # it holds the slot now
        # Told at the end of the pool wait, not after a connect timeout of its own.
        with pytest.raises(StoreUnavailableError):
            async with asyncio.timeout(5):
                await store.ping()
    finally:
        postgres_proxy.thaw()
        for call in (hanging, reconnecting):
            with contextlib.suppress(TransientError):
                async with asyncio.timeout(CALL_BOUND_SECONDS):
                    await call
        await store.close()


async def test_store_connections_end_on_silence_at_both_ends(isolated_database_url: str) -> None:
    store = await JobStore.connect(isolated_database_url, pool_size=1)
    try:
        async with store.database.transaction() as transaction:
            rows = await transaction.fetch(
                "SELECT current_setting('tcp_user_timeout') AS server_timeout,"
                " current_setting('tcp_keepalives_idle') AS server_idle"
            )
        assert rows[0]["server_timeout"] == str(TCP_USER_TIMEOUT_SECONDS * 1000)
        assert rows[0]["server_idle"] == "5"
    finally:
        await store.close()
    # A connection of the store's own kind, to read its socket's options.
    connection = await asyncpg.connect(
        asyncpg_dsn(isolated_database_url),
        connection_class=BoundedConnection,
    )
    try:
        sock = connection._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            == TCP_USER_TIMEOUT_SECONDS * 1000
        )
    finally:
        await connection.close()


async def test_a_server_cut_off_from_redis_still_stores_and_acknowledges_and_the_jobs_run(
    stack: Stack,
) -> None:
    redis_url = make_url(stack.redis_url)
    with FreezableProxy(redis_url.host or "127.0.0.1", redis_url.port or 6379) as proxy:
        through = redis_url.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        with second_server(stack, "cut-off-from-redis", env={"REDIS_URL": through}) as cut_off:
            proxy.freeze()
            async with aio_channel(cut_off.grpc_target, stack.api_key) as channel:
                stub = pb_grpc.JobServiceStub(channel)
                # Each is answered well before a client would give up, one after the other
                # (the dispatcher's publishes time out meanwhile).
                jobs = [
                    await stub.SubmitJob(
                        pb.SubmitJobRequest(data=[i], operation=pb.square_sum), timeout=5
                    )
                    for i in range(20)
                ]
                assert all(job.status == pb.PENDING for job in jobs)

                # Still cut off: the other server's sweep sends them, and they run.
                async def statuses() -> list[int]:
                    replies = await asyncio.gather(
                        *(stub.GetStatus(pb.GetStatusRequest(job_id=j.id)) for j in jobs)
                    )
                    return [reply.status for reply in replies]

                await eventually(
                    statuses,
                    until=lambda found: all(s == pb.SUCCESS for s in found),
                    timeout_seconds=60,
                )
            # Its health probe of the broker gets no answer: out of rotation until it heals.
            await eventually(
                lambda: asyncio.to_thread(cut_off.server_serving),
                until=lambda serving: not serving,
                timeout_seconds=30,
            )
            proxy.thaw()
            await eventually(
                lambda: asyncio.to_thread(cut_off.server_serving), until=bool, timeout_seconds=30
            )
