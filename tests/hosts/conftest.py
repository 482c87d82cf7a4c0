"""The cluster of hosts (network namespaces) that tests/hosts breaks, and its report."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from devstack.stack import ROOT
from tests.conftest import stack_data_dir
from tests.faults.harness import Audit, ReportSection, current_commit, write_audit_section
from tests.hosts.cluster import Cluster, ClusterSettings, cluster_of_hosts, unavailable_reason

REPORT = ROOT / "docs" / "RELIABILITY.md"
DELAY_SECONDS = 2.0
LEASE_SECONDS = 4.0
SETTINGS = ClusterSettings(
    env={
        "SIMULATED_DELAY_SECONDS": str(DELAY_SECONDS),
        "JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        # Several faults in a row may hit one job; it must still finish, not give up.
        "MAX_ATTEMPTS": "10",
        "MAINTENANCE_INTERVAL_SECONDS": "0.5",
        "REDISPATCH_AFTER_SECONDS": "5",
        "WATCH_HEARTBEAT_SECONDS": "2",
        "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
    },
    server_env={"SHUTDOWN_GRACE_SECONDS": "5", "DB_POOL_SIZE": "10"},
    worker_env={"WORKER_CONCURRENCY": "200", "DB_POOL_SIZE": "10"},
)
HOSTS_SECTION = ReportSection(
    start="<!-- cluster suite: the section below is written by tests/hosts/conftest.py -->",
    end="<!-- end of the cluster suite's section -->",
)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """db, broker, edge, two servers, two workers and a client, each a namespace of its own."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"cannot build the cluster of hosts: {reason}")
    with stack_data_dir("hosts") as data_dir, cluster_of_hosts(data_dir, SETTINGS) as built:
        yield built


@pytest.fixture(scope="package")
def cluster_report() -> Iterator[dict[str, tuple[str, float, Audit]]]:
    """Scenario name -> (description, fault seconds, audit); written to docs/RELIABILITY.md."""
    results: dict[str, tuple[str, float, Audit]] = {}
    yield results
    if results:
        intro = [
            "## The cluster suite's last run",
            "",
            "Written by `tests/hosts/` (`make test-hosts`) each time it runs. The service runs",
            "across hosts (Linux network namespaces on one bridge: `db`, `broker`, `edge`,",
            "`server-a`, `server-b`, `worker-a`, `worker-b`, `client`), each with the entry points",
            "and environment of docker-compose.yml; Envoy on `edge` balances over both servers.",
            "Clients on `client` submit through `edge` with idempotency keys and watch every job",
            "with resume while a host loses power, a link drops packets silently, or hosts",
            "restart; the audit is the fault suite's.",
            "",
            f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {current_commit()}, "
            f"{platform.machine()} with {os.cpu_count()} cores; simulated delay "
            f"{DELAY_SECONDS:g} s, one server and one worker process per host, lease "
            f"{LEASE_SECONDS:g} s.",
        ]
        write_audit_section(REPORT, HOSTS_SECTION, intro, results)
