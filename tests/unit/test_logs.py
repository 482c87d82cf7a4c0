"""Log records are JSON lines off a terminal and carry the job id of the task that wrote them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from jobcore.logs import JsonFormatter, configure_logging, current_job_id


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_id_of_their_own_task(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO")
    logger = logging.getLogger("test.jobs")

    async def work(job_id: str) -> None:
        current_job_id.set(job_id)
        await asyncio.sleep(0)
        logger.info("working on it")

    async def both() -> None:
        await asyncio.gather(work("job-a"), work("job-b"))

    asyncio.run(both())
    logger.warning("no job here")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line.get("job_id")) for line in lines] == [
        ("working on it", "job-a"),
        ("working on it", "job-b"),
        ("no job here", None),
    ]
    assert lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "test.jobs"


def test_exceptions_are_kept_in_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )

    line = JsonFormatter().format(record)

    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]
