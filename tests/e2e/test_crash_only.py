"""Crash-only processes: a background task that fails ends its process loudly, the process is
restarted, and every acknowledged job still finishes exactly once.

A stack of its own, started with JOBS_FAULT_DIR: a file `<dir>/<process>/<task>` makes that
task of one such process raise an unexpected error once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.processes import ManagedProcess
from devstack.stack import Stack
from jobcore.supervision import FAILED_TASK_EXIT_STATUS, FAULT_DIR_ENV
from tests.conftest import own_stack_config, stack_data_dir
from tests.credentials import aio_channel
from tests.eventually import eventually
from tests.faults.harness import LoadRecord, audit, run_load, submit_grpc

pytestmark = pytest.mark.timeout(240)

# Every long-lived task of each process, by the name of its fault file.
TASKS = [
    ("server", "health-monitor"),
    ("server", "dispatcher"),
    ("server", "maintenance"),
    ("server", "job-event-listener"),
    ("worker", "lease-keeper"),
    ("worker", "job-event-listener"),
]


@pytest.fixture(scope="module")
def crash_stack() -> Iterator[tuple[Stack, Path]]:
    """The service with the fault hook on, two server processes sharing the port, one worker."""
    with stack_data_dir("crash") as data_dir:
        fault_dir = data_dir / "faults"
        config = own_stack_config(
            data_dir,
            env={
                FAULT_DIR_ENV: str(fault_dir),
                "SIMULATED_DELAY_SECONDS": "0.5",
                "WORKER_CONCURRENCY": "50",
                "JOB_LEASE_SECONDS": "3",
                "MAX_ATTEMPTS": "10",
                "MAINTENANCE_INTERVAL_SECONDS": "0.5",
                # Wake-ups a dying process took with it are sent again soon.
                "REDISPATCH_AFTER_SECONDS": "3",
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
                "SHUTDOWN_GRACE_SECONDS": "2",
                # A failure in one server process must end (and restart) the pair.
                "SERVER_PROCESSES": "2",
            },
        )
        with Stack(config) as stack:
            yield stack, fault_dir


@pytest.fixture
async def stub(crash_stack: tuple[Stack, Path]) -> AsyncIterator[pb_grpc.JobServiceAsyncStub]:
    async with aio_channel(crash_stack[0].grpc_target, crash_stack[0].api_key) as channel:
        yield pb_grpc.JobServiceStub(channel)


def _serving(stack: Stack) -> bool:
    try:
        return stack.server_serving()
    except grpc.RpcError:
        return False


@pytest.mark.parametrize(("process", "task"), TASKS)
async def test_a_failed_background_task_restarts_its_process_and_loses_no_job(
    crash_stack: tuple[Stack, Path],
    stub: pb_grpc.JobServiceAsyncStub,
    process: str,
    task: str,
) -> None:
    stack, fault_dir = crash_stack
    managed: ManagedProcess = stack.server if process == "server" else stack.workers[0]
    restarts_before = len(managed.revived_exits)
    log_start = managed.log_path.stat().st_size
    record, rng = LoadRecord(), random.Random(f"{process}/{task}")
    load = asyncio.create_task(
        run_load(lambda: submit_grpc(stub, record, rng), rate_per_second=10, duration_seconds=8)
    )

    fault = fault_dir / process / task
    fault.parent.mkdir(parents=True, exist_ok=True)
    fault.touch()

    # The task failed, its process exited non-zero, and the stack's supervisor restarted it.
    await eventually(
        lambda: asyncio.sleep(0, result=len(managed.revived_exits)),
        until=lambda restarts: restarts > restarts_before,
        timeout_seconds=60,
    )
    assert not fault.exists()
    assert managed.revived_exits[-1] == FAILED_TASK_EXIT_STATUS
    with managed.log_path.open("rb") as log_file:
        log_file.seek(log_start)
        log = log_file.read().decode(errors="replace")
    assert f"background task {task} failed" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: injected fault" in log

    # The restarted process serves again, and every job acknowledged around the crash
    # reaches exactly one final state with the right result.
    await eventually(lambda: asyncio.to_thread(_serving, stack), until=bool, timeout_seconds=60)
    await load
    result = await audit(stack.database_url, record)
    result.assert_clean()
