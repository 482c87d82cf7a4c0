"""A stack of its own for fault injection: the seed's 2 s delay, two workers, short leases."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from devstack.stack import ROOT, Stack
from tests.conftest import own_stack_config, stack_data_dir
from tests.faults.harness import Audit, ReportSection, current_commit, write_audit_section

FAULT_DELAY_SECONDS = 2.0
REPORT = ROOT / "docs" / "RELIABILITY.md"


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[Stack]:
    """The whole service with the documented 2 s delay, two worker and two server processes."""
    with stack_data_dir("faults") as data_dir:
        config = own_stack_config(
            data_dir,
            env={
                "SIMULATED_DELAY_SECONDS": str(FAULT_DELAY_SECONDS),
                "WORKER_CONCURRENCY": "200",
                "JOB_LEASE_SECONDS": "4",
                # Several kills in a row may hit one job; it must still finish, not give up.
                "MAX_ATTEMPTS": "10",
                "MAINTENANCE_INTERVAL_SECONDS": "0.5",
                "REDISPATCH_AFTER_SECONDS": "5",
                "WATCH_HEARTBEAT_SECONDS": "2",
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
                "SHUTDOWN_GRACE_SECONDS": "5",
                # Faults hit a supervised pair of servers sharing the port.
                "SERVER_PROCESSES": "2",
            },
            workers=2,
        )
        with Stack(config) as stack:
            yield stack


@pytest.fixture(scope="package")
def reliability_report() -> Iterator[dict[str, tuple[str, float, Audit]]]:
    """Scenario name -> (description, fault seconds, audit); written to docs/RELIABILITY.md."""
    results: dict[str, tuple[str, float, Audit]] = {}
    yield results
    if results:
        _write_report(results)


def _write_report(results: dict[str, tuple[str, float, Audit]]) -> None:
    intro = [
        "## The fault-injection suite's last run",
        "",
        "Written by `tests/faults/` (part of `make test`) each time it runs. Each scenario breaks a",
        "real process while clients submit (retrying with the same idempotency key until",
        "acknowledged) and watch (resuming after the last sequence they saw), then audits every",
        "acknowledged job in PostgreSQL: it must exist, be final exactly once, and hold the exact",
        "result; every watcher must have seen each state change once.",
        "",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {current_commit()}, "
        f"{platform.machine()} with {os.cpu_count()} cores; "
        f"simulated delay {FAULT_DELAY_SECONDS:g} s, 2 worker and 2 server processes, lease 4 s.",
    ]
    write_audit_section(REPORT, FAULT_SECTION, intro, results)


# The fault suite rewrites only its own section of the report; the rest is written by hand
# (or by make soak and make mutation, whose figures are pasted in).
FAULT_SECTION = ReportSection(
    start="<!-- fault suite: the section below is written by tests/faults/conftest.py -->",
    end="<!-- end of the fault suite's section -->",
)
