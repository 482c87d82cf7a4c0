"""Clients that behave like careful users under faults, and the audit of everything they submitted.

Submitters retry with the same idempotency key until the service acknowledges
the job; watchers resume after the last sequence they saw. The audit then reads
PostgreSQL directly: every acknowledged job must exist, be final exactly once,
have the exact result, and every watcher must have seen each change once.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.database import asyncpg_dsn

# What a careful client retries: UNAVAILABLE (an outage or a draining server), DEADLINE_EXCEEDED,
# and CANCELLED that the client did not ask for (a server stopping mid-call). Retrying a
# submit is safe because it carries the same request_id.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
FINAL = {"SUCCESS", "FAILED", "CANCELLED"}
SUBMIT_GIVE_UP_SECONDS = 60.0


@dataclass(frozen=True)
class Submitted:
    """One acknowledged job and what its result must be."""

    job_id: str
    expected: float


def random_job(rng: random.Random) -> tuple[list[int], str, float]:
    """Integer data (so the reference is exact integer arithmetic), operation, expected result."""
    data = [rng.randint(-1000, 1000) for _ in range(rng.randint(1, 8))]
    operation = rng.choice(["square_sum", "cube_sum"])
    power = 2 if operation == "square_sum" else 3
    return data, operation, float(sum(x**power for x in data))


@dataclass
class LoadRecord:
    """What the clients saw."""

    acknowledged: list[Submitted] = field(default_factory=list)
    given_up: int = 0
    retries: int = 0
    watched: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


async def submit_grpc(
    stub: pb_grpc.JobServiceAsyncStub, record: LoadRecord, rng: random.Random
) -> Submitted | None:
    """Submit one job, retrying retryable failures with the same request_id."""
    data, operation, expected = random_job(rng)
    request = pb.SubmitJobRequest(
        data=data,
        operation=pb.Operation.Value(operation),
        request_id=str(uuid.uuid4()),
    )
    deadline = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
    while True:
        try:
            job = await stub.SubmitJob(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or time.monotonic() > deadline:
                record.given_up += 1
                return None
            record.retries += 1
            await asyncio.sleep(0.2)
            continue
        submitted = Submitted(job_id=job.id, expected=expected)
        record.acknowledged.append(submitted)
        return submitted


async def submit_rest(
    http: httpx.AsyncClient, record: LoadRecord, rng: random.Random
) -> Submitted | None:
    """Submit one job over REST, retrying 5xx and connection errors with the same Idempotency-Key."""
    data, operation, expected = random_job(rng)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    deadline = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
    while True:
        try:
            response = await http.post(
                "/api/v1/jobs/", json={"data": data, "operation": operation}, headers=headers
            )
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 201:
            submitted = Submitted(job_id=response.json()["id"], expected=expected)
            record.acknowledged.append(submitted)
            return submitted
        if (response is not None and response.status_code < 500) or time.monotonic() > deadline:
            record.given_up += 1
            return None
        record.retries += 1
        await asyncio.sleep(0.2)


async def watch_grpc(
    stub: pb_grpc.JobServiceAsyncStub, job_id: str, seen: list[tuple[int, str]]
) -> None:
    """Follow a job to its final state, resuming after the last sequence on any stream failure."""
    while True:
        after = seen[-1][0] if seen else 0
        try:
            async for update in stub.WatchJob(
                pb.WatchJobRequest(job_id=job_id, after_sequence=after)
            ):
                if not update.heartbeat:
                    seen.append((update.sequence, pb.JobStatus.Name(update.job.status)))
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE:
                raise
            await asyncio.sleep(0.2)
            continue
        if seen and seen[-1][1] in FINAL:
            return
        await asyncio.sleep(0.2)  # the stream ended early (e.g. a proxy restart): resume


async def watch_sse(http: httpx.AsyncClient, job_id: str, seen: list[tuple[int, str]]) -> None:
    """The same over REST: Server-Sent Events, resuming with the Last-Event-ID header."""
    while True:
        headers = {"Last-Event-ID": str(seen[-1][0])} if seen else {}
        try:
            async with http.stream(
                "GET", f"/api/v1/jobs/{job_id}/watch", headers=headers
            ) as response:
                if response.status_code == 200:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            frame = json.loads(line.removeprefix("data: "))
                            if not frame.get("heartbeat"):
                                seen.append((frame["sequence"], frame["job"]["status"]))
                elif response.status_code < 500:
                    raise AssertionError(f"watch {job_id}: HTTP {response.status_code}")
        except (httpx.TransportError, json.JSONDecodeError):
            pass
        if seen and seen[-1][1] in FINAL:
            return
        await asyncio.sleep(0.2)


async def run_load(
    submit: Callable[[], Awaitable[Submitted | None]],
    *,
    rate_per_second: float,
    duration_seconds: float,
    watch: Callable[[Submitted], Awaitable[None]] | None = None,
) -> None:
    """Start `rate_per_second` submissions a second for the duration; wait for all to settle."""
    tasks: list[asyncio.Task[Any]] = []

    async def one() -> None:
        submitted = await submit()
        if submitted is not None and watch is not None:
            await watch(submitted)

    end = time.monotonic() + duration_seconds
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate_per_second)
    await asyncio.gather(*tasks)


@dataclass
class Audit:
    """The audit of one scenario."""

    acknowledged: int
    lost: int
    not_final: int
    duplicated_outcomes: int
    wrong_results: int
    max_attempts: int
    rerun_jobs: int
    watched: int
    watch_missed: int
    watch_repeated: int
    given_up: int
    retries: int

    def assert_clean(self) -> None:
        """Nothing lost, nothing done twice, nothing wrong, every watcher complete."""
        problems = {
            "lost": self.lost,
            "not_final": self.not_final,
            "duplicated_outcomes": self.duplicated_outcomes,
            "wrong_results": self.wrong_results,
            "watch_missed": self.watch_missed,
            "watch_repeated": self.watch_repeated,
            # A careful client is never refused with a non-retryable error because of a fault.
            "given_up": self.given_up,
        }
        assert not any(problems.values()), f"audit failed: {problems} ({self})"
        assert self.acknowledged > 0


async def audit(database_url: str, record: LoadRecord, *, settle_seconds: float = 120) -> Audit:
    """Wait until every acknowledged job is final (or the deadline passes), then check them all."""
    ids = [uuid.UUID(s.job_id) for s in record.acknowledged]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        deadline = time.monotonic() + settle_seconds
        while True:
            open_jobs = await connection.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status NOT IN "
                "('SUCCESS', 'FAILED', 'CANCELLED')",
                ids,
            )
            if open_jobs == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        rows = {
            str(row["id"]): row
            for row in await connection.fetch(
                "SELECT id, status, result, attempt, last_sequence FROM jobs WHERE id = ANY($1::uuid[])",
                ids,
            )
        }
        finals = {
            str(row["job_id"]): row["finals"]
            for row in await connection.fetch(
                "SELECT job_id, count(*) AS finals FROM job_events WHERE job_id = ANY($1::uuid[]) "
                "AND status IN ('SUCCESS', 'FAILED', 'CANCELLED') GROUP BY job_id",
                ids,
            )
        }
    finally:
        await connection.close()

    lost = sum(1 for s in record.acknowledged if s.job_id not in rows)
    present = [s for s in record.acknowledged if s.job_id in rows]
    not_final = sum(1 for s in present if rows[s.job_id]["status"] not in FINAL)
    wrong = sum(
        1
        for s in present
        if rows[s.job_id]["status"] in FINAL
        and (rows[s.job_id]["status"] != "SUCCESS" or rows[s.job_id]["result"] != s.expected)
    )
    duplicated = sum(1 for s in present if finals.get(s.job_id, 0) > 1)
    attempts = [rows[s.job_id]["attempt"] for s in present]
    missed = repeated = 0
    for job_id, seen in record.watched.items():
        sequences = [sequence for sequence, _ in seen]
        repeated += len(sequences) - len(set(sequences))
        last = rows[job_id]["last_sequence"] if job_id in rows else 0
        expected = set(range(sequences[0], last + 1)) if sequences else {last}
        missed += len(expected - set(sequences))
    return Audit(
        acknowledged=len(record.acknowledged),
        lost=lost,
        not_final=not_final,
        duplicated_outcomes=duplicated,
        wrong_results=wrong,
        max_attempts=max(attempts, default=0),
        rerun_jobs=sum(1 for a in attempts if a > 1),
        watched=len(record.watched),
        watch_missed=missed,
        watch_repeated=repeated,
        given_up=record.given_up,
        retries=record.retries,
    )


# The audit's columns in the report, in this order.
REPORT_COLUMNS = (
    "acknowledged",
    "lost",
    "duplicated_outcomes",
    "wrong_results",
    "not_final",
    "rerun_jobs",
    "max_attempts",
    "watched",
    "watch_missed",
    "watch_repeated",
    "retries",
    "given_up",
)


@dataclass(frozen=True)
class ReportSection:
    """The markers around a section of docs/RELIABILITY.md that a suite rewrites on each run."""

    start: str
    end: str


def current_commit() -> str:
    """The checkout's short commit, for the report's run line."""
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).resolve().parent.parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stdout.strip() or "unknown"


def write_audit_section(
    report: Path,
    section: ReportSection,
    intro: list[str],
    results: dict[str, tuple[str, float, Audit]],
) -> None:
    """Rewrite `section` of `report`: `intro`, then one row per scenario and the columns' key.

    Scenario name -> (what was broken, how long the fault lasted, the audit). Only the text
    between the section's markers changes; a report without them gets the section at its end.
    """
    lines = [
        *intro,
        "",
        "| scenario | what was broken | fault lasted (s) | " + " | ".join(REPORT_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(REPORT_COLUMNS),
    ]
    for name, (description, seconds, result) in results.items():
        values = asdict(result)
        lines.append(
            f"| {name} | {description} | {seconds:.1f} | "
            + " | ".join(str(values[c]) for c in REPORT_COLUMNS)
            + " |"
        )
    lines += [
        "",
        "Columns: *acknowledged* jobs the clients got an OK for; *lost* acknowledged but missing;",
        "*duplicated_outcomes* jobs with more than one final event; *wrong_results* final but not",
        "SUCCESS with the exact value; *not_final* still open after the settle deadline;",
        "*rerun_jobs* jobs that needed more than one attempt (their worker was lost);",
        "*watch_missed* / *watch_repeated* state changes a watcher never saw / saw twice;",
        "*retries* client retries of retryable errors; *given_up* submissions never acknowledged.",
        "",
    ]
    text = report.read_text() if report.exists() else "# Reliability\n\n"
    block = f"{section.start}\n" + "\n".join(lines) + section.end
    if section.start in text and section.end in text:
        before, rest = text.split(section.start, 1)
        text = before + block + rest.split(section.end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    report.parent.mkdir(exist_ok=True)
    report.write_text(text)
