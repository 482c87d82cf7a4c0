"""Session fixtures: the real stack (embedded PostgreSQL and Redis, a Celery worker process,
the gRPC server and Envoy), started once on free loopback ports and stopped at the end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack, StackConfig, StackPorts
from tests.credentials import aio_channel

# Short enough to keep the suite quick, long enough to observe IN_PROGRESS.
TEST_DELAY_SECONDS = 0.5
TEST_MAX_JOB_NUMBERS = 1000
TEST_MAX_MESSAGE_BYTES = 64 * 1024


@contextlib.contextmanager
def stack_data_dir(name: str) -> Iterator[Path]:
    """A temporary folder for a test stack; with KEEP_TEST_LOGS=1 it is kept for reading logs."""
    if os.environ.get("KEEP_TEST_LOGS") == "1":
        kept = Path(tempfile.mkdtemp(prefix=f"jobs-{name}-"))
        print(f"\n{name} stack data and logs kept in {kept}")
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix=f"jobs-{name}-") as data_dir:
        yield Path(data_dir)


def own_stack_config(
    data_dir: Path,
    *,
    env: Mapping[str, str],
    workers: int = 1,
    metrics: bool = False,
    ca_file: Path | None = None,
) -> StackConfig:
    """A stack of its own in `data_dir`: free ports, ENVIRONMENT=test and `env`, no Flower."""
    return StackConfig(
        data_dir=data_dir,
        ports=StackPorts.free(metrics=metrics),
        env={"ENVIRONMENT": "test", **env},
        workers=workers,
        flower=False,
        ca_file=ca_file,
    )


@contextlib.contextmanager
def second_server(
    stack: Stack,
    name: str,
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """A gRPC server and gateway of their own, with no worker, on `stack`'s PostgreSQL and Redis.

    For tests that need a server configured unlike the session's (message limits, database
    settings, rate limits in `env`) without a second database and broker.
    """
    with stack_data_dir(name) as data_dir:
        config = own_stack_config(
            data_dir,
            # One deployment: page tokens of either server are good at both.
            env={"PAGE_TOKEN_SECRET": stack.env["PAGE_TOKEN_SECRET"], **(env or {})},
            workers=0,
        )
        shared = replace(
            config,
            database_url=database_url or stack.database_url,
            database_migration_url=stack.migration_database_url,
            redis_url=stack.redis_url,
        )
        with Stack(shared) as second:
            yield second


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The whole service, as `make run` starts it, on free ports in a temporary folder."""
    with stack_data_dir("test") as data_dir:
        config = own_stack_config(
            data_dir,
            env={
                "SIMULATED_DELAY_SECONDS": str(TEST_DELAY_SECONDS),
                "MAX_JOB_NUMBERS": str(TEST_MAX_JOB_NUMBERS),
                # Small size limits, so the tests can cross them cheaply.
                "GRPC_MAX_MESSAGE_BYTES": str(TEST_MAX_MESSAGE_BYTES),
                "GATEWAY_MAX_REQUEST_BYTES": str(TEST_MAX_MESSAGE_BYTES),
                # The one origin whose pages may call the API cross-origin (CORS).
                "GATEWAY_CORS_ORIGINS": "http://app.example.test",
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
                "WORKER_CONCURRENCY": "50",
                # Fast recovery and keep-alives, so the tests see them happen.
                "JOB_LEASE_SECONDS": "3",
                "MAINTENANCE_INTERVAL_SECONDS": "0.5",
                "WATCH_HEARTBEAT_SECONDS": "1",
                # Spans as JSON lines in the process logs, so tests can follow a trace.
                "OTEL_TRACES_EXPORTER": "console",
            },
            metrics=True,
        )
        with Stack(config) as running:
            yield running


@pytest.fixture
def workers_stopped(stack: Stack) -> Iterator[None]:
    """No worker runs, so submitted jobs stay PENDING until the test's end (or it starts them)."""
    for worker in stack.workers:
        worker.stop()
    try:
        yield
    finally:
        for worker in stack.workers:
            if not worker.is_running():
                worker.start()


@pytest.fixture(scope="session")
def isolated_database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of its own on the stack's PostgreSQL, which no server or worker uses.

    Store tests that need full control (expired leases, retention) run here. With
    JOBS_TEST_DATABASE_URL set (to an already migrated database, as `make mutation` does
    for each mutant), they run there instead and the stack is not started.
    """
    given = os.environ.get("JOBS_TEST_DATABASE_URL")
    if given:
        return given
    stack: Stack = request.getfixturevalue("stack")
    assert stack.postgres is not None
    url = stack.postgres.create_database("jobs_isolated")
    subprocess.run(
        [sys.executable, "-m", "jobcore.migrate"],
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


@pytest.fixture(scope="session")
async def grpc_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A channel straight to the gRPC server, presenting the stack's API key."""
    async with aio_channel(stack.grpc_target, stack.api_key) as channel:
        yield channel


@pytest.fixture(scope="session")
async def gateway_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A native gRPC channel through Envoy, presenting the stack's API key."""
    async with aio_channel(stack.gateway_target, stack.api_key) as channel:
        yield channel


@pytest.fixture(scope="session")
def jobs_stub(grpc_channel: grpc.aio.Channel) -> pb_grpc.JobServiceAsyncStub:
    """JobService client on the direct channel."""
    return pb_grpc.JobServiceStub(grpc_channel)


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A REST client for the Envoy gateway, presenting the stack's API key."""
    async with httpx.AsyncClient(
        base_url=stack.http_base, headers=stack.auth_headers(), timeout=30
    ) as client:
        yield client
