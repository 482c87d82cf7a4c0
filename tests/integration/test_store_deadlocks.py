"""Batched statements lock rows in one order: several processes changing overlapping jobs at
once for a while never deadlock (PostgreSQL's log says so, and no call is aborted)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import TypeVar

import asyncpg
import pytest

from devstack.stack import Stack
from jobcore.database import asyncpg_dsn
from jobcore.errors import JobAlreadyFinishedError, StoreConflictError
from jobcore.ids import new_job_id
from jobcore.models import Claim, Outcome
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.owners import TEST_OWNER

T = TypeVar("T")

# How long the processes run; shorter while developing, 60 s in the suite.
STRESS_SECONDS = float(os.environ.get("STRESS_SECONDS", "60"))
PROCESSES = 4
# Concurrent loops in each process: their calls share batched statements.
LOOPS_PER_PROCESS = 3
# Unfinished jobs the processes keep around, so their batches overlap.
LIVE_JOBS = 40
# Jobs one loop claims, renews or finishes together.
BATCH = 12


async def _tally(call: Awaitable[T], counts: Counter[str]) -> T | None:
    """The call's answer; a conflict or a refused cancel is counted instead of raised."""
    try:
        return await call
    except StoreConflictError:
        counts["conflicts"] += 1
    except JobAlreadyFinishedError:
        counts["cancels_refused"] += 1
    return None


async def _live_job_ids(reader: asyncpg.Connection) -> list[uuid.UUID]:
    rows = await reader.fetch("SELECT id FROM jobs WHERE status IN ('PENDING', 'IN_PROGRESS')")
    return [row["id"] for row in rows]


async def _create_jobs(store: JobStore, rng: random.Random, counts: Counter[str]) -> None:
    # Keys shared by every process for a quarter of a second, in each caller's own order:
    # concurrent inserts of the same keys.
    window = int(time.time() * 4)
    keys = [f"stress-{window}-{n}" for n in rng.sample(range(BATCH), BATCH)]
    results = await asyncio.gather(
        *(
            _tally(
                store.create(
                    owner=TEST_OWNER,
                    job_id=new_job_id(),
                    operation=Operation.SQUARE_SUM,
                    numbers=pack_numbers([1.0, 2.0]),
                    request_id=key,
                ),
                counts,
            )
            for key in keys
        )
    )
    counts["created"] += sum(1 for result in results if result is not None and result[1])


async def _loop(
    store: JobStore,
    reader: asyncpg.Connection,
    reader_lock: asyncio.Lock,
    *,
    rng: random.Random,
    deadline: float,
    counts: Counter[str],
) -> None:
    held: list[Claim] = []  # this loop's claims, current or since lost
    while time.monotonic() < deadline:
        async with reader_lock:
            live = await _live_job_ids(reader)
        if len(live) < LIVE_JOBS:
            await _create_jobs(store, rng, counts)
            continue

        wanted = rng.sample(live, BATCH)
        claims = await asyncio.gather(
            *(
                _tally(
                    store.claim(job_id, lease=timedelta(milliseconds=rng.choice((50, 500)))), counts
                )
                for job_id in wanted
            )
        )
        held.extend(claim for claim in claims if claim is not None)
        counts["claimed"] += sum(claim is not None for claim in claims)
        held = held[-3 * BATCH :]

        renewing = rng.sample(held, min(len(held), BATCH))
        finishing = rng.sample(held, min(len(held), BATCH // 2))
        cancelling = rng.sample(live, 2)
        finishes = asyncio.gather(
            *(
                _tally(store.finish(claim, Outcome(result=float(claim.attempt))), counts)
                for claim in finishing
            )
        )
        await asyncio.gather(
            finishes,
            _tally(store.renew(renewing, lease=timedelta(milliseconds=500)), counts),
            *(_tally(store.cancel(job_id, by=TEST_OWNER), counts) for job_id in cancelling),
            _tally(store.requeue_expired(max_attempts=1_000_000, limit=BATCH), counts),
        )
        finished = finishes.result()
        counts["finished"] += sum(result is True for result in finished)
        counts["rounds"] += 1


async def _stress(database_url: str, *, seconds: float, seed: int) -> Counter[str]:
    store = await JobStore.connect(database_url, pool_size=2 * LOOPS_PER_PROCESS + 2)
    reader = await asyncpg.connect(asyncpg_dsn(database_url))
    counts: Counter[str] = Counter()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    reader_lock = asyncio.Lock()
    try:
        await asyncio.gather(
            *(
                _loop(
                    store,
                    reader,
                    reader_lock,
                    rng=random.Random(rng.random()),
                    deadline=deadline,
                    counts=counts,
                )
                for _ in range(LOOPS_PER_PROCESS)
            )
        )
    finally:
        await reader.close()
        await store.close()
    return counts


def _stress_process(database_url: str, seconds: float, seed: int) -> Counter[str]:
    """One OS process of the stress test (spawned, so it starts with nothing shared)."""
    return asyncio.run(_stress(database_url, seconds=seconds, seed=seed))


@pytest.fixture(scope="module")
def stress_database_url(stack: Stack) -> str:
    """A migrated database that only this stress test changes."""
    assert stack.postgres is not None
    url = stack.postgres.create_database("jobs_deadlock_stress")
    subprocess.run(
        [sys.executable, "-m", "jobcore.migrate"],
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


@pytest.mark.timeout(STRESS_SECONDS + 120)
async def test_concurrent_batches_of_overlapping_jobs_never_deadlock(
    stack: Stack, stress_database_url: str
) -> None:
    postgres_log = stack.log_dir / "postgres.log"
    log_start = postgres_log.stat().st_size

    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(
        max_workers=PROCESSES, mp_context=multiprocessing.get_context("spawn")
    ) as processes:
        counts = sum(
            await asyncio.gather(
                *(
                    loop.run_in_executor(
                        processes, _stress_process, stress_database_url, STRESS_SECONDS, seed
                    )
                    for seed in range(PROCESSES)
                )
            ),
            Counter[str](),
        )

    with postgres_log.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    deadlocks = [line for line in logged.splitlines() if "deadlock detected" in line]
    print(f"\nstress: {dict(counts)}; deadlocks logged: {len(deadlocks)}")
    assert deadlocks == []
    assert counts["conflicts"] == 0
    # The processes did change jobs together all along, or the test proves nothing.
    assert counts["rounds"] >= PROCESSES * STRESS_SECONDS
    assert min(counts["created"], counts["claimed"], counts["finished"]) > 0
