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


async def test_6_broker_host_down_then_back_empty(cluster: Cluster, cluster_report: Report) -> None:
    async def outage() -> None:
        await asyncio.to_thread(cluster.broker_down)
        await asyncio.sleep(30)
        await asyncio.to_thread(cluster.broker_up_empty)

    result, lasted = await _load_with_fault(
        cluster, outage, seed=6, rate_per_second=8, load_seconds=20, fault_after_seconds=3
    )

    cluster_report["6. broker host down, back empty"] = (
        "the broker host is down 30 s, then Redis starts again with its data lost",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched == result.acknowledged


async def test_5_rolling_restart(cluster: Cluster, cluster_report: Report) -> None:
    async def rolling_restart() -> None:
        for host in ("server-a", "server-b", "worker-a", "worker-b"):
            await asyncio.to_thread(cluster.stop, host)
            await asyncio.to_thread(cluster.start, host)

    result, lasted = await _load_with_fault(
        cluster, rolling_restart, seed=5, rate_per_second=10, load_seconds=25, fault_after_seconds=3
    )

    cluster_report["5. rolling restart"] = (
        "SIGTERM and start again server-a, server-b, worker-a, worker-b, one at a time",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched == result.acknowledged


async def test_3_server_partitioned_from_broker(cluster: Cluster, cluster_report: Report) -> None:
    async def partition() -> None:
        cluster.partition("server-a", "broker")
        try:
            await asyncio.sleep(15)
        finally:
            cluster.heal()

    result, lasted = await _load_with_fault(
        cluster, partition, seed=3, rate_per_second=10, load_seconds=20, fault_after_seconds=3
    )

    cluster_report["3. server cut from broker"] = (
        "drop every packet between server-a and the broker for 15 s",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched == result.acknowledged


def _log_since(cluster: Cluster, host: str, offset: int) -> str:
    with cluster.processes[host].log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


async def test_2_worker_partitioned_from_db_beyond_its_lease(
    cluster: Cluster, cluster_report: Report
) -> None:
    log_offset = cluster.processes["worker-a"].log_path.stat().st_size

    async def partition() -> None:
        cluster.partition("worker-a", "db")
        try:
            # Three leases: worker-b must take worker-a's jobs over meanwhile.
            await asyncio.sleep(3 * 4.0)
        finally:
            cluster.heal()

    result, lasted = await _load_with_fault(
        cluster, partition, seed=2, rate_per_second=10, load_seconds=16, fault_after_seconds=3
    )

    cluster_report["2. worker cut from db"] = (
        "drop every packet between worker-a and PostgreSQL for 3 leases while it runs jobs",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.rerun_jobs > 0, "expected worker-a's jobs to run again on worker-b"
    # worker-a noticed on its own that it could not hold its jobs, and gave them up: an attempt
    # still computing is stopped when the lease it last confirmed runs out, and one that had
    # finished computing gives up recording its outcome after a lease (or, once the partition
    # heals, finds the outcome refused by the fencing). None of it is an unexpected error.
    log = _log_since(cluster, "worker-a", log_offset)
    gave_up = ("could not renew its lease", "gave it up", "lost its claim; outcome discarded")
    assert any(line in log for line in gave_up), log[-4000:]
    assert "unexpected error" not in log, log[-4000:]


async def test_4_server_black_holed_from_db_with_watchers(
    cluster: Cluster, cluster_report: Report
) -> None:
    out_of_rotation_after: list[float] = []

    async def black_hole() -> None:
        cluster.partition("server-a", "db")
        started = time.monotonic()
        try:
            # Its LISTEN connection and health probe notice the silence; Envoy then stops
            # routing to it. Bound: 15 s (see docs/RELIABILITY.md).
            while "server-a" in await asyncio.to_thread(cluster.servers_in_rotation):
                if time.monotonic() - started > 15:
                    break
                await asyncio.sleep(0.2)
            else:
                out_of_rotation_after.append(time.monotonic() - started)
            await asyncio.sleep(max(0.0, 18 - (time.monotonic() - started)))
        finally:
            cluster.heal()
        await asyncio.to_thread(cluster.wait_in_rotation, {"server-a"}, timeout_seconds=30)

    result, lasted = await _load_with_fault(
        cluster, black_hole, seed=4, rate_per_second=10, load_seconds=22, fault_after_seconds=3
    )

    cluster_report["4. server cut from db"] = (
        "drop every packet between server-a and PostgreSQL for 18 s while clients watch on it",
        lasted,
        result,
    )
    assert out_of_rotation_after, (
        "server-a stayed in Envoy's rotation for 15 s without its database"
    )
    result.assert_clean()
    assert result.watched == result.acknowledged
