"""The ListJobs filter language and page tokens."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from jobcore.errors import InvalidJobError
from jobcore.listing import (
    MAX_FILTER_BYTES,
    MAX_FILTER_CLAUSES,
    MAX_PAGE_TOKEN_CHARS,
    Condition,
    PageCursor,
    PageTokenSigner,
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


SIGNER = PageTokenSigner(b"k" * 32)
TENANT = "acme"


def test_page_tokens_round_trip_and_are_bound_to_their_filter_and_tenant() -> None:
    cursor = PageCursor(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), uuid.uuid4())

    token = SIGNER.encode(cursor, tenant=TENANT, filter_text='status = "FAILED"')

    assert SIGNER.decode(token, tenant=TENANT, filter_text='status = "FAILED"') == cursor
    assert SIGNER.decode("", tenant=TENANT, filter_text="") is None
    for signer, tenant, filter_text in (
        (SIGNER, TENANT, ""),  # another filter
        (SIGNER, "globex", 'status = "FAILED"'),  # another tenant
        (PageTokenSigner(b"x" * 32), TENANT, 'status = "FAILED"'),  # another deployment
    ):
        with pytest.raises(InvalidJobError, match="not returned by ListJobs for this filter"):
            signer.decode(token, tenant=tenant, filter_text=filter_text)
    for forged in ("garbage", token[:-3], "eyJ0IjogMX0", token.replace(".", "")):
        with pytest.raises(InvalidJobError, match="page_token"):
            SIGNER.decode(forged, tenant=TENANT, filter_text='status = "FAILED"')


def test_an_altered_cursor_is_refused_even_with_the_old_signature() -> None:
    cursor = PageCursor(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), uuid.uuid4())
    payload, mac = SIGNER.encode(cursor, tenant=TENANT, filter_text="").split(".")
    later = _b64(json.dumps({"t": "2099-01-01T00:00:00+00:00", "i": str(cursor.job_id)}).encode())

    with pytest.raises(InvalidJobError, match="page_token"):
        SIGNER.decode(f"{later}.{mac}", tenant=TENANT, filter_text="")
    assert payload != later


@pytest.mark.parametrize(
    "text",
    [
        'create_time > "0001-01-01T00:00:00+14:00"',
        'create_time < "9999-12-31T23:59:59-14:00"',
        'create_time > "10000-01-01T00:00:00Z"',
        'create_time > "0000-01-01T00:00:00Z"',
        'create_time > "2026-02-30T00:00:00Z"',
        'create_time > "2026-11-01T24:00:00Z"',
        'create_time > "2026-11-01T00:00:00+24:00"',
        'create_time > "\uff12\uff10\uff12\uff16-11-01T00:00:00Z"',  # full-width digits
        'create_time > "2026-11-01"',
        'create_time > "2026-W44-1T00:00:00Z"',
        'create_time > "20261101T000000Z"',
    ],
)
def test_times_outside_rfc_3339_or_the_storable_range_are_refused(text: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        parse_filter(text)

    [violation] = raised.value.violations
    assert violation.field == "filter"
    assert "create_time" in violation.description


def test_times_become_utc_and_the_extremes_that_fit_are_kept() -> None:
    [early] = parse_filter('create_time > "0001-01-01T00:00:00-14:00"')
    [late] = parse_filter('create_time < "9999-12-31T23:59:59.123456789+14:00"')
    [lower] = parse_filter("create_time >= 2026-11-01t00:00:00z")

    assert early.value == datetime(1, 1, 1, 14, tzinfo=UTC)
    assert late.value == datetime(9999, 12, 31, 9, 59, 59, 123456, tzinfo=UTC)
    assert lower.value == datetime(2026, 11, 1, tzinfo=UTC)


def test_filters_are_capped_in_bytes_and_clauses_before_parsing() -> None:
    clause = 'status = "FAILED"'
    at_the_cap = " AND ".join([clause] * MAX_FILTER_CLAUSES)
    assert len(parse_filter(at_the_cap)) == MAX_FILTER_CLAUSES

    over = {
        "clauses": " AND ".join([clause] * (MAX_FILTER_CLAUSES + 1)),
        # Unparseable as well as too long: the size is what is reported.
        "bytes": "(" * (MAX_FILTER_BYTES + 1),
        # Under the cap in characters, over it in UTF-8 bytes.
        "multibyte": 'status = "' + "é" * (MAX_FILTER_BYTES // 2) + '"',
        "huge": 'status = "FAILED" AND ' * 50_000,
    }
    for name, text in over.items():
        with pytest.raises(InvalidJobError) as raised:
            parse_filter(text)
        [violation] = raised.value.violations
        assert violation.field == "filter", name
        assert "at most" in violation.description, name


@pytest.mark.parametrize(
    "text",
    [
        'status = "FAILED" AND',
        'AND status = "FAILED"',
        'status = "FAILED" AND AND status = "FAILED"',
        'status = "FAILED',
        'status = "FAILED" "CANCELLED"',
        "status",
        "= FAILED",
        'st@tus = "FAILED"',
        " " * 1000 + "x",
        "\u3000status\u3000=\u3000FAILED\u3000x",
    ],
)
def test_malformed_filters_are_refused_naming_the_filter(text: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        parse_filter(text)

    [violation] = raised.value.violations
    assert violation.field == "filter"
    assert len(violation.description) < 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signed(payload: bytes) -> str:
    """A token with a valid signature over a hostile payload: what a holder of the server's
    secret could make. Its cursor is still checked."""
    return f"{_b64(payload)}.{_b64(SIGNER._mac(payload, tenant=TENANT, filter_text=''))}"


def _token(payload: object) -> str:
    return _signed(json.dumps(payload).encode())


def test_forged_page_tokens_are_refused_naming_the_token() -> None:
    digest = "0" * 16
    job_id = str(uuid.uuid4())
    forged = {
        "year 1 at +14:00": _token({"t": "0001-01-01T00:00:00+14:00", "i": job_id, "f": digest}),
        "year 9999 at -14:00": _token({"t": "9999-12-31T23:59:59-14:00", "i": job_id, "f": digest}),
        "no time zone": _token({"t": "2026-11-01T00:00:00", "i": job_id, "f": digest}),
        "a number for a time": _token({"t": 5, "i": job_id, "f": digest}),
        "a number for an id": _token({"t": "2026-11-01T00:00:00Z", "i": 5, "f": digest}),
        "a list": _token(["2026-11-01T00:00:00Z", job_id, digest]),
        "a string": _token("t"),
        "nested": _token([[[[[[]]]]]]),
        "not JSON": _signed(b"\xff\xfe{"),
        "not base64": "%%%%",
        "not ASCII": "\uff45\uff59\uff2a\uff10",  # full-width "eyJ0"
        "oversized": "A" * (MAX_PAGE_TOKEN_CHARS + 1),
        "huge and nested": base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
    }
    for name, token in forged.items():
        with pytest.raises(InvalidJobError) as raised:
            SIGNER.decode(token, tenant=TENANT, filter_text="")
        [violation] = raised.value.violations
        assert violation.field == "page_token", name


def test_a_genuine_token_is_well_under_the_cap() -> None:
    cursor = PageCursor(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), uuid.uuid4())

    token = SIGNER.encode(cursor, tenant="t" * 64, filter_text="x" * MAX_FILTER_BYTES)

    assert len(token) <= MAX_PAGE_TOKEN_CHARS // 2 + 32
    assert SIGNER.decode(token, tenant="t" * 64, filter_text="x" * MAX_FILTER_BYTES) == cursor
