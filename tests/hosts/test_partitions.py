"""Break hosts and the network between them while clients submit and watch, then audit."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from devstack.processes import netns_argv
from devstack.stack import ROOT
from tests.faults.harness import Audit
from tests.hosts.client import API_KEY_VARIABLE, DATABASE_URL_VARIABLE
from tests.hosts.cluster import Cluster

Report = dict[str, tuple[str, float, Audit]]

pytestmark = pytest.mark.timeout(240)


async def _load_with_fault(
    cluster: Cluster,
    fault: Callable[[], Awaitable[None]],
    *,
    seed: int,
    rate_per_second: float,
    load_seconds: float,
    fault_after_seconds: float,
) -> tuple[Audit, float]:
    """Clients on `client` submit and watch for `load_seconds`; `fault` runs meanwhile.

    Returns the clients' audit and how long the fault lasted.
    """
    client = await asyncio.create_subprocess_exec(
        *netns_argv(
            cluster.netns("client"),
            [
                sys.executable,
                "-m",
                "tests.hosts.client",
                f"--target={cluster.gateway_target}",
                f"--rate={rate_per_second}",
                f"--seconds={load_seconds}",
                f"--seed={seed}",
                "--watch",
            ],
        ),
        cwd=ROOT,
        env={
            **os.environ,
            API_KEY_VARIABLE: cluster.api_key,
            DATABASE_URL_VARIABLE: cluster.database_url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicated = asyncio.ensure_future(client.communicate())
    await asyncio.sleep(fault_after_seconds)
    started = time.monotonic()
    try:
        await fault()
    finally:
        lasted = time.monotonic() - started
        stdout, stderr = await communicated
    assert client.returncode == 0, f"the clients failed:\n{stderr.decode()[-4000:]}"
    return Audit(**json.loads(stdout.decode().splitlines()[-1])), lasted


async def test_1_worker_host_power_loss(cluster: Cluster, cluster_report: Report) -> None:
    async def power_loss() -> None:
        await asyncio.to_thread(cluster.power_off, "worker-a")
        # The host stays dark well past the lease, then boots again.
        await asyncio.sleep(8)
        await asyncio.to_thread(cluster.start, "worker-a")

    result, lasted = await _load_with_fault(
        cluster, power_loss, seed=1, rate_per_second=15, load_seconds=12, fault_after_seconds=4
    )

    cluster_report["1. host power loss"] = (
        "SIGKILL every process of worker-a at once mid-job; it boots 8 s later",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched == result.acknowledged
    assert result.rerun_jobs > 0, "expected worker-a's jobs to run again elsewhere"
