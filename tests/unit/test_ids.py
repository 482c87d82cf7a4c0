"""Job ids are UUIDv7: time-ordered, random, and recognised when parsed back."""

from __future__ import annotations

import time
import uuid

from jobcore.ids import new_job_id, parse_job_id


def test_ids_are_version_7_with_the_rfc_variant() -> None:
    job_id = new_job_id()

    assert job_id.version == 7
    assert job_id.variant == uuid.RFC_4122


def test_ids_carry_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    job_id = new_job_id()
    after = time.time_ns() // 1_000_000

    assert before <= job_id.int >> 80 <= after


def test_ids_sort_by_creation_time_and_never_repeat() -> None:
    first = new_job_id()
    time.sleep(0.002)
    later = [new_job_id() for _ in range(10_000)]

    assert all(first < job_id for job_id in later)
    assert len(set(later)) == len(later)


def test_parse_accepts_only_ids_the_service_could_issue() -> None:
    job_id = new_job_id()

    assert parse_job_id(str(job_id)) == job_id
    assert parse_job_id(str(job_id).upper()) == job_id
    assert parse_job_id("1") is None
    assert parse_job_id("") is None
    assert parse_job_id(str(uuid.uuid4())) is None
