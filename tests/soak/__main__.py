"""Soak: the real stack for SOAK_MINUTES (default 30) at half its capacity, a worker killed every 5 minutes.

Capacity is derived, not measured: the stack's job slots over the simulated delay
(2 workers x WORKER_CONCURRENCY / SIMULATED_DELAY_SECONDS); the run reports the rate it
sustained beside it. Careful clients (tests/faults/harness.py) submit with idempotency keys.
Finished jobs are deleted after a short retention, so each job is audited as soon as it is
final, long before it can be purged.

At the end it checks: 0 lost, duplicated or wrong jobs; every process that lived from the
end of warm-up to the end grew its RSS by less than 10 %; the database's size stayed flat
after warm-up; no ERROR log line that a kill does not explain. It prints a summary, writes
it as JSON (SOAK_JSON, default .data/soak/summary.json) and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.processes import ManagedProcess, wait_for
from devstack.stack import ROOT, Stack, StackConfig
from jobcore.database import asyncpg_dsn
from tests.conftest import own_stack_config
from tests.credentials import aio_channel
from tests.faults.harness import FINAL, Audit, LoadRecord, Submitted, audit, run_load, submit_grpc

logger = logging.getLogger("soak")

DELAY_SECONDS = 2.0
WORKERS = 2
SLOTS_PER_WORKER = 100
LOAD_SHARE = 0.5
KILL_EVERY_SECONDS = 300.0
# Short, so a killed worker's jobs come back quickly.
LEASE_SECONDS = 10.0
RSS_GROWTH_LIMIT = 0.10
DB_GROWTH_LIMIT = 0.10
AUDIT_EVERY_SECONDS = 5.0
# How long jobs still open when the load stops may take to finish.
SETTLE_SECONDS = 150.0
# An ERROR line this soon after a kill, matching a consequence below, is explained by it.
EXPLAIN_SECONDS = 60.0
# What a SIGKILLed worker leaves for others to log: none is known to be needed so far.
KILL_CONSEQUENCES: tuple[re.Pattern[str], ...] = ()
MEBIBYTE = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """The run's length and pace, derived from its minutes."""

    minutes: float
    rate_per_second: float
    retention_seconds: float
    warmup_seconds: float
    kill_every_seconds: float
    sample_every_seconds: float

    @classmethod
    def for_minutes(cls, minutes: float) -> Plan:
        """Half the derived capacity; retention a tenth of the run (1 to 5 minutes); warm-up a third.

        Warm-up also outlasts the retention, so the database has started deleting by then. A run
        shorter than two kill intervals gets one kill, in its middle.
        """
        seconds = minutes * 60
        retention = min(max(seconds / 10, 60.0), 300.0)
        return cls(
            minutes=minutes,
            rate_per_second=LOAD_SHARE * capacity_per_second(),
            retention_seconds=retention,
            warmup_seconds=max(seconds / 3, retention + 30),
            kill_every_seconds=KILL_EVERY_SECONDS
            if seconds >= 2 * KILL_EVERY_SECONDS
            else seconds / 2,
            sample_every_seconds=min(10.0, max(seconds / 60, 2.0)),
        )

    @property
    def seconds(self) -> float:
        """The load's duration."""
        return self.minutes * 60


def capacity_per_second() -> float:
    """Jobs a second the stack's slots can hold at the simulated delay."""
    return WORKERS * SLOTS_PER_WORKER / DELAY_SECONDS


@dataclass
class Samples:
    """RSS of every process of the stack and the database's size, over time (seconds from start)."""

    # 'role pid' -> (seconds, RSS, the figure checked: see memory_now)
    rss: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    database_bytes: list[tuple[float, int]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def stack_processes(stack: Stack) -> Iterator[tuple[str, ManagedProcess]]:
    """Each supervised process of the stack with its role."""
    yield "server", stack.server
    yield "envoy", stack.envoy
    for worker in stack.workers:
        yield worker.name, worker
    if stack.redis is not None:
        yield "redis", stack.redis.process
    if stack.postgres is not None:
        yield "postgres", stack.postgres.process


def memory_now(stack: Stack) -> dict[str, tuple[int, int]]:
    """'role pid' -> (RSS, checked bytes) for every process of the stack and their children.

    The checked figure is the RSS, except for PostgreSQL's processes: each maps the one
    shared buffer cache and counts its pages in its RSS as it touches them, so theirs
    leaves out shared pages (a backend's own memory is what could leak).
    """
    found: dict[str, tuple[int, int]] = {}
    for role, managed in stack_processes(stack):
        if managed.pid is None:
            continue
        try:
            parent = psutil.Process(managed.pid)
            processes = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                memory = process.memory_info()
                label = role if process is parent else f"{role}/{' '.join(process.cmdline())[:40]}"
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            checked = memory.rss - memory.shared if role == "postgres" else memory.rss
            found[f"{label.strip()} {process.pid}"] = (memory.rss, checked)
    return found


async def sample(stack: Stack, connection: asyncpg.Connection, samples: Samples, at: float) -> None:
    """One sample of every process's RSS and of the database's size."""
    for key, (rss, checked) in (await asyncio.to_thread(memory_now, stack)).items():
        samples.rss.setdefault(key, []).append((at, rss, checked))
    size = await connection.fetchval("SELECT pg_database_size(current_database())")
    samples.database_bytes.append((at, int(size)))
    samples.times.append(at)


class RollingAudit:
    """Audits each acknowledged job once it is final, with the fault suite's audit."""

    def __init__(self, database_url: str, record: LoadRecord) -> None:
        self._database_url = database_url
        self._record = record
        self._seen = 0
        self.pending: dict[str, Submitted] = {}
        self.total: Audit | None = None

    async def check(self, connection: asyncpg.Connection, *, final_pass: bool = False) -> None:
        """Audit the jobs that are final (or missing: lost) now; all that are left if `final_pass`."""
        fresh = self._record.acknowledged[self._seen :]
        self._seen += len(fresh)
        self.pending.update((submitted.job_id, submitted) for submitted in fresh)
        if not self.pending:
            return
        rows = await connection.fetch(
            "SELECT id::text AS id, status FROM jobs WHERE id = ANY($1::uuid[])",
            [uuid.UUID(job_id) for job_id in self.pending],
        )
        status = {row["id"]: row["status"] for row in rows}
        ready = [
            submitted
            for job_id, submitted in self.pending.items()
            if final_pass or status.get(job_id, "SUCCESS") in FINAL
        ]
        if not ready:
            return
        result = await audit(self._database_url, LoadRecord(acknowledged=ready), settle_seconds=0)
        for submitted in ready:
            del self.pending[submitted.job_id]
        self.total = result if self.total is None else _added(self.total, result)


def _added(total: Audit, more: Audit) -> Audit:
    values = {
        name: max(value, getattr(more, name))
        if name == "max_attempts"
        else value + getattr(more, name)
        for name, value in asdict(total).items()
    }
    return Audit(**values)


async def kill_workers(stack: Stack, plan: Plan, started: float, kills: list[float]) -> None:
    """SIGKILL the last worker every interval; the stack's supervisor starts it again."""
    worker = stack.workers[-1]
    at = plan.kill_every_seconds
    while at < plan.seconds:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        worker.send(signal.SIGKILL)
        kills.append(time.time())
        logger.warning("killed %s (SIGKILL) at %.0f s", worker.name, at)
        at += plan.kill_every_seconds


async def sample_until(
    stack: Stack, plan: Plan, samples: Samples, started: float, done: asyncio.Event
) -> None:
    """Sample every `plan.sample_every_seconds` until `done`, then once more."""
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        while not done.is_set():
            await sample(stack, connection, samples, time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), plan.sample_every_seconds)
        await sample(stack, connection, samples, time.monotonic() - started)
    finally:
        await connection.close()


async def audit_until(stack: Stack, auditor: RollingAudit, done: asyncio.Event) -> None:
    """Audit what is final every few seconds while the load runs, then until all settled."""
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        while not done.is_set():
            await auditor.check(connection)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), AUDIT_EVERY_SECONDS)
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            await auditor.check(connection)
            if not auditor.pending:
                break
            await asyncio.sleep(1)
        await auditor.check(connection, final_pass=True)
    finally:
        await connection.close()


_POSTGRES_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] (ERROR|FATAL|PANIC):"
)


def _error_at(line: str) -> tuple[bool, float | None]:
    """Whether a log line reports an error, and when (epoch seconds) if the line says."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("level") in {"ERROR", "CRITICAL"}:
                return True, datetime.fromisoformat(entry["time"]).timestamp()
            return False, None
    match = _POSTGRES_LINE.match(line)
    if match:
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        return True, stamp.timestamp()
    if line.startswith("Traceback") or re.search(r"\b(ERROR|FATAL|PANIC|CRITICAL)\b", line):
        return True, None
    return bool(re.search(r"\]\[(error|critical)\]", line)), None


def scan_logs(log_dir: Path, kills: list[float]) -> tuple[list[str], list[str]]:
    """ERROR lines of every process's log: (explained by a kill, not explained)."""
    explained: list[str] = []
    unexplained: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        with path.open(errors="replace") as log:
            for line in log:
                is_error, at = _error_at(line)
                if not is_error:
                    continue
                text = f"{path.name}: {line.strip()[:300]}"
                after_kill = at is not None and any(k <= at <= k + EXPLAIN_SECONDS for k in kills)
                if after_kill and any(pattern.search(line) for pattern in KILL_CONSEQUENCES):
                    explained.append(text)
                else:
                    unexplained.append(text)
    return explained, unexplained


def rss_growth(samples: Samples, plan: Plan) -> list[dict[str, Any]]:
    """Per process alive through warm-up's end until the end: memory then and at the end.

    A process started after warm-up (a killed worker's successor) is still warming up.
    """
    before = [at for at in samples.times if at < plan.warmup_seconds]
    after = [at for at in samples.times if at >= plan.warmup_seconds]
    if not before or not after:
        return []
    rows = []
    for key, series in sorted(samples.rss.items()):
        values = {at: (rss, checked) for at, rss, checked in series}
        if before[-1] in values and after[0] in values and after[-1] in values:
            (warm_rss, warm), (end_rss, end) = values[after[0]], values[after[-1]]
            rows.append(
                {
                    "process": key,
                    "rss_warm_mib": round(warm_rss / MEBIBYTE, 1),
                    "rss_end_mib": round(end_rss / MEBIBYTE, 1),
                    "checked_warm_mib": round(warm / MEBIBYTE, 1),
                    "checked_end_mib": round(end / MEBIBYTE, 1),
                    "growth": round(end / warm - 1, 4),
                }
            )
    return rows


def database_growth(samples: Samples, plan: Plan) -> dict[str, float]:
    """The database's size at the end of warm-up, at the end, and the growth between."""
    after_warmup = [(at, size) for at, size in samples.database_bytes if at >= plan.warmup_seconds]
    if not after_warmup:
        return {"warm_mib": 0.0, "end_mib": 0.0, "max_mib": 0.0, "growth": 0.0}
    warm, end = after_warmup[0][1], after_warmup[-1][1]
    return {
        "warm_mib": round(warm / MEBIBYTE, 1),
        "end_mib": round(end / MEBIBYTE, 1),
        "max_mib": round(max(size for _, size in after_warmup) / MEBIBYTE, 1),
        "growth": round(end / warm - 1, 4),
    }


def soak_config(plan: Plan, data_dir: Path) -> StackConfig:
    """The service with the documented delay, two workers, short leases and a short retention."""
    return own_stack_config(
        data_dir,
        env={
            "SIMULATED_DELAY_SECONDS": str(DELAY_SECONDS),
            "WORKER_CONCURRENCY": str(SLOTS_PER_WORKER),
            "JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            # Settings take fractional days.
            "JOB_RETENTION_DAYS": repr(plan.retention_seconds / 86_400),
        },
        workers=WORKERS,
    )


async def soak(plan: Plan, stack: Stack) -> dict[str, Any]:
    """Run the load with kills, sampling and auditing; the summary."""
    record, rng = LoadRecord(), random.Random(20261206)
    samples, kills = Samples(), list[float]()
    auditor = RollingAudit(stack.database_url, record)
    load_done = asyncio.Event()
    started = time.monotonic()
    async with aio_channel(stack.grpc_target, stack.api_key) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        sampler = asyncio.create_task(sample_until(stack, plan, samples, started, load_done))
        auditing = asyncio.create_task(audit_until(stack, auditor, load_done))
        killer = asyncio.create_task(kill_workers(stack, plan, started, kills))
        await run_load(
            lambda: submit_grpc(stub, record, rng),
            rate_per_second=plan.rate_per_second,
            duration_seconds=plan.seconds,
        )
        load_seconds = time.monotonic() - started
        load_done.set()
        killer.cancel()
        await asyncio.gather(sampler, auditing)
    revived = await asyncio.to_thread(_all_running, stack.workers)
    assert auditor.total is not None
    result = auditor.total
    result.given_up, result.retries = record.given_up, record.retries
    explained, unexplained = scan_logs(stack.log_dir, kills)
    rss = rss_growth(samples, plan)
    database = database_growth(samples, plan)
    checks = {
        "lost": (result.lost, 0),
        "duplicated": (result.duplicated_outcomes, 0),
        "wrong": (result.wrong_results, 0),
        "not_final": (result.not_final, 0),
        "given_up": (result.given_up, 0),
        "workers_running_after_kills": (int(not revived), 0),
        "max_rss_growth": (max((row["growth"] for row in rss), default=0.0), RSS_GROWTH_LIMIT),
        "database_growth": (database["growth"], DB_GROWTH_LIMIT),
        "unexplained_error_lines": (len(unexplained), 0),
    }
    passed = {
        name: value < limit if limit else value == 0 for name, (value, limit) in checks.items()
    }
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count()},
        "plan": asdict(plan)
        | {
            "capacity_per_second": capacity_per_second(),
            "capacity_from": f"{WORKERS} workers x {SLOTS_PER_WORKER} slots / {DELAY_SECONDS:g} s delay",
        },
        "load": {
            "seconds": round(load_seconds, 1),
            "acknowledged": result.acknowledged,
            "rate_per_second": round(result.acknowledged / load_seconds, 1),
            "kills": len(kills),
        },
        "audit": asdict(result),
        "rss": rss,
        "rss_not_measured": sorted(
            key for key in samples.rss if key not in {row["process"] for row in rss}
        ),
        "database": database,
        "database_series_mib": [
            (round(at), round(size / MEBIBYTE, 1)) for at, size in samples.database_bytes
        ],
        "error_lines": {"explained": explained, "unexplained": unexplained[:50]},
        "checks": {
            name: {"value": value, "limit": limit, "passed": passed[name]}
            for name, (value, limit) in checks.items()
        },
        "passed": all(passed.values()),
    }


def _all_running(workers: list[ManagedProcess]) -> bool:
    """Whether every worker runs again (the supervisor revives a killed one within seconds)."""
    try:
        wait_for(
            lambda: all(worker.is_running() for worker in workers),
            timeout_seconds=30,
            what="the workers to run again",
        )
    except TimeoutError:
        return False
    return True


def print_summary(summary: dict[str, Any]) -> None:
    """The checks, then every measured process's RSS, as plain tables."""
    plan, load = summary["plan"], summary["load"]
    print(
        f"\nsoak: {plan['minutes']:g} min at {plan['rate_per_second']:g} jobs/s "
        f"(half of {plan['capacity_per_second']:g}/s = {plan['capacity_from']}); "
        f"sustained {load['rate_per_second']:g}/s, {load['acknowledged']} jobs, "
        f"{load['kills']} worker kills; retention {plan['retention_seconds']:g} s, "
        f"warm-up {plan['warmup_seconds']:g} s"
    )
    print(f"\n{'check':<30} {'value':>10} {'limit':>8}  result")
    for name, check in summary["checks"].items():
        limit = f"< {check['limit']:g}" if check["limit"] else "0"
        verdict = "ok" if check["passed"] else "FAILED"
        print(f"{name:<30} {check['value']:>10g} {limit:>8}  {verdict}")
    database = summary["database"]
    print(
        f"\ndatabase: {database['warm_mib']} MiB after warm-up, {database['end_mib']} MiB at the "
        f"end (max {database['max_mib']} MiB)"
    )
    print(
        f"\n{'process (alive from warm-up to end)':<50} {'RSS warm':>9} {'RSS end':>8} "
        f"{'checked':>8} {'growth':>7}"
    )
    for row in summary["rss"]:
        print(
            f"{row['process']:<50} {row['rss_warm_mib']:>9} {row['rss_end_mib']:>8} "
            f"{row['checked_end_mib']:>8} {row['growth']:>7.1%}"
        )
    for line in summary["error_lines"]["unexplained"][:10]:
        print(f"unexplained: {line}")
    print(f"\n{'PASSED' if summary['passed'] else 'FAILED'}")


def main() -> int:
    """Parse the arguments, run the soak, report; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30"))
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(os.environ.get("SOAK_JSON", ROOT / ".data" / "soak" / "summary.json")),
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    plan = Plan.for_minutes(args.minutes)
    data_dir = ROOT / ".data" / "soak" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    logger.info("plan: %s; stack data and logs in %s", plan, data_dir)
    try:
        with Stack(soak_config(plan, data_dir)) as stack:
            summary = asyncio.run(soak(plan, stack))
    finally:
        # Keep the logs, not the databases.
        for store in ("postgres", "redis"):
            shutil.rmtree(data_dir / store, ignore_errors=True)
    summary["logs"] = str(stack.log_dir)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    print(f"summary written to {args.json}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
