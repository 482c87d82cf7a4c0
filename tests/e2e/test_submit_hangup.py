"""REST submits whose client hangs up mid-call: every job that was stored still gets its wake-up."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from datetime import timedelta

import asyncpg

from devstack.stack import Stack
from jobcore.database import asyncpg_dsn
from tests.eventually import eventually
from tests.redispatch import START_WITHIN, redispatch_after

HANGUPS = 120
HANGUP_SPREAD = timedelta(milliseconds=200).total_seconds()


async def _post_and_hang_up(
    stack: Stack,
    path: str,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    after_seconds: float,
) -> None:
    """POST `body` as JSON through Envoy and close the connection `after_seconds` after sending it."""
    content = json.dumps(body).encode()
    fields = {
        **stack.auth_headers(),
        "Content-Type": "application/json",
        **(headers or {}),
        "Content-Length": str(len(content)),
    }
    request = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {stack.gateway_target}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        + "\r\n"
    ).encode() + content
    host, port = stack.gateway_target.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(after_seconds)
    writer.close()
    await writer.wait_closed()


async def _submit_and_hang_up(stack: Stack, key: str, *, after_seconds: float) -> None:
    """POST a job through Envoy and close the connection `after_seconds` after sending it."""
    await _post_and_hang_up(
        stack,
        "/api/v1/jobs",
        {"data": [1, 2, 3], "operation": "square_sum"},
        headers={"Idempotency-Key": key},
        after_seconds=after_seconds,
    )


async def _stored(database_url: str, prefix: str) -> list[asyncpg.Record]:
    """The jobs stored for keys with `prefix`: status, and how long each waited to start."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetch(
            """
            SELECT jobs.request_id, jobs.status,
                   (SELECT started.occurred_at - jobs.created_at FROM job_events AS started
                     WHERE started.job_id = jobs.id AND started.status = 'IN_PROGRESS'
                     ORDER BY started.sequence LIMIT 1) AS waited
              FROM jobs
             WHERE jobs.request_id LIKE $1
            """,
            f"{prefix}%",
        )
    finally:
        await connection.close()


async def _all_started_in_time(stack: Stack, prefix: str) -> list[asyncpg.Record]:
    """The jobs stored for keys with `prefix`, once none is PENDING; each started in time."""
    rows = await eventually(
        lambda: _stored(stack.database_url, prefix),
        until=lambda rows: bool(rows) and all(row["status"] != "PENDING" for row in rows),
        timeout_seconds=START_WITHIN.total_seconds(),
    )
    assert all(row["waited"] < START_WITHIN for row in rows), sorted(
        (row["waited"], row["request_id"]) for row in rows
    )
    return rows


async def test_jobs_of_clients_that_hung_up_start_without_the_sweep(stack: Stack) -> None:
    assert redispatch_after(stack) >= 3 * START_WITHIN
    prefix = f"hangup-{uuid.uuid4()}-"

    # Hang-ups spread over the first moments of the call, so some come while the job is stored.
    await asyncio.gather(
        *(
            _submit_and_hang_up(stack, f"{prefix}{i}", after_seconds=i * HANGUP_SPREAD / HANGUPS)
            for i in range(HANGUPS)
        )
    )

    await _all_started_in_time(stack, prefix)


BATCH_HANGUPS = 40
JOBS_PER_BATCH = 5


async def _batch_and_hang_up(stack: Stack, prefix: str, *, after_seconds: float) -> None:
    """POST a batch through Envoy and close the connection `after_seconds` after sending it."""
    requests = [
        {"data": [1, 2, 3], "operation": "square_sum", "request_id": f"{prefix}{index}"}
        for index in range(JOBS_PER_BATCH)
    ]
    await _post_and_hang_up(
        stack, "/api/v1/jobs:batchSubmit", {"requests": requests}, after_seconds=after_seconds
    )


async def test_batches_of_clients_that_hung_up_are_whole_and_start_without_the_sweep(
    stack: Stack,
) -> None:
    assert redispatch_after(stack) >= 3 * START_WITHIN
    prefix = f"batch-hangup-{uuid.uuid4()}-"

    await asyncio.gather(
        *(
            _batch_and_hang_up(
                stack, f"{prefix}{i}-", after_seconds=i * HANGUP_SPREAD / BATCH_HANGUPS
            )
            for i in range(BATCH_HANGUPS)
        )
    )

    rows = await _all_started_in_time(stack, prefix)
    # Each batch was stored whole or not at all.
    per_batch: dict[str, int] = {}
    for row in rows:
        batch = row["request_id"].removeprefix(prefix).split("-")[0]
        per_batch[batch] = per_batch.get(batch, 0) + 1
    assert set(per_batch.values()) == {JOBS_PER_BATCH}
