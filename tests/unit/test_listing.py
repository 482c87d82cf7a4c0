"""The ListJobs filter language and page tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from jobcore.errors import InvalidJobError
from jobcore.listing import (
    Condition,
    PageCursor,
    decode_page_token,
    encode_page_token,
    page_size_of,
    parse_filter,
)


def test_the_documented_example_parses() -> None:
    conditions = parse_filter('status = "FAILED" AND create_time > "2026-11-01T00:00:00Z"')

    assert conditions == [
        Condition("status", "=", "FAILED"),
        Condition("create_time", ">", datetime(2026, 11, 1, tzinfo=UTC)),
    ]


def test_bare_values_and_every_operator() -> None:
    assert parse_filter("operation != cube_sum") == [Condition("operation", "!=", "cube_sum")]
    assert parse_filter("") == []
    for operator in ("=", "!=", "<", "<=", ">", ">="):
        [condition] = parse_filter(f'create_time {operator} "2026-01-02T03:04:05+01:00"')
        assert condition.operator == operator


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('priority = "high"', "unknown field 'priority'"),
        ('status > "FAILED"', "status supports = and != only"),
        ('status = "DONE"', "status must be one of"),
        ('operation = "mean"', "operation must be one of"),
        ('create_time > "yesterday"', "RFC 3339"),
        ('create_time > "2026-11-01T00:00:00"', "time zone"),
        ('status = "FAILED" OR status = "SUCCESS"', "cannot parse"),
        ("status =", "cannot parse"),
    ],
)
def test_bad_filters_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        parse_filter(text)

    [violation] = raised.value.violations
    assert violation.field == "filter"
    assert fragment in violation.description


def test_page_size_defaults_and_bounds() -> None:
    assert page_size_of(0) == 50
    assert page_size_of(1000) == 1000
    for bad in (-1, 1001):
        with pytest.raises(InvalidJobError, match="page_size"):
            page_size_of(bad)


def test_page_tokens_round_trip_and_are_bound_to_their_filter() -> None:
    cursor = PageCursor(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), uuid.uuid4())

    token = encode_page_token(cursor, filter_text='status = "FAILED"')

    assert decode_page_token(token, filter_text='status = "FAILED"') == cursor
    assert decode_page_token("", filter_text="") is None
    with pytest.raises(InvalidJobError, match="different filter"):
        decode_page_token(token, filter_text="")
    for forged in ("garbage", token[:-3], "eyJ0IjogMX0"):
        with pytest.raises(InvalidJobError, match="page_token"):
            decode_page_token(forged, filter_text='status = "FAILED"')
