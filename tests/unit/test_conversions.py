"""Protobuf -> domain conversions of request fields: WatchJobs' job ids."""

from __future__ import annotations

import pytest

from jobcore.errors import InvalidJobError
from jobcore.ids import new_job_id
from server.conversions import job_ids_from_proto


def test_job_ids_are_read_once_each_and_none_means_any_job() -> None:
    first, second = new_job_id(), new_job_id()

    assert job_ids_from_proto([str(first), str(second), str(first)], max_count=3) == frozenset(
        {first, second}
    )
    assert job_ids_from_proto([], max_count=3) is None


def test_too_many_job_ids_are_refused_before_any_is_read() -> None:
    with pytest.raises(InvalidJobError) as raised:
        job_ids_from_proto(["not an id"] * 4, max_count=3)

    [violation] = raised.value.violations
    assert violation.field == "job_ids"
    assert "lists 4 ids; at most 3" in violation.description


def test_bad_job_ids_are_named_by_place_the_first_ten_then_counted() -> None:
    texts = [str(new_job_id()), *(f"bad-{n}" for n in range(12))]

    with pytest.raises(InvalidJobError) as raised:
        job_ids_from_proto(texts, max_count=1000)

    fields = [violation.field for violation in raised.value.violations]
    assert fields == [f"job_ids[{n}]" for n in range(1, 11)] + ["job_ids"]
    assert "'bad-0'" in raised.value.violations[0].description
    assert raised.value.violations[-1].description == "2 more of its ids are not job ids either"
