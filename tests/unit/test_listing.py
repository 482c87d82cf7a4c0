"""The ListJobs filter language and page tokens; WatchJobs selections and cursors."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime

import pytest

from jobcore.errors import InvalidJobError
from jobcore.listing import (
    MAX_FILTER_BYTES,
    MAX_FILTER_CLAUSES,
    MAX_PAGE_TOKEN_CHARS,
    WATCH_CURSOR_PURPOSE,
    Condition,
    JobSelection,
    PageCursor,
    PageTokenSigner,
    WatchCursor,
    WatchCursors,
    page_size_of,
    parse_filter,
)
from jobcore.models import Job, JobStatus
from jobcore.operations import Operation


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


# --- WatchJobs: selection and cursors ----------------------------------------------------------

ISSUED = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
IDS = frozenset({uuid.UUID(int=1), uuid.UUID(int=2)})


def _cursors(
    *,
    signer: PageTokenSigner = SIGNER,
    tenant: str = TENANT,
    filter_text: str = 'status = "FAILED"',
    job_ids: frozenset[uuid.UUID] | None = IDS,
) -> WatchCursors:
    return WatchCursors(signer, tenant=tenant, filter_text=filter_text, job_ids=job_ids)


def test_watch_cursors_round_trip_whatever_order_the_ids_came_in() -> None:
    cursor = _cursors().encode(41, now=ISSUED)

    again = WatchCursors(
        SIGNER, tenant=TENANT, filter_text='status = "FAILED"', job_ids=frozenset(sorted(IDS))
    )
    assert again.decode(cursor) == WatchCursor(41, ISSUED)
    assert _cursors().decode(cursor, field="Last-Event-ID") == WatchCursor(
        41, ISSUED, "Last-Event-ID"
    )
    assert len(cursor) < MAX_PAGE_TOKEN_CHARS // 2


def test_a_watch_cursor_is_bound_to_its_tenant_filter_and_job_ids() -> None:
    cursor = _cursors().encode(41, now=ISSUED)

    for name, other in {
        "another tenant": _cursors(tenant="globex"),
        "another filter": _cursors(filter_text=""),
        "fewer ids": _cursors(job_ids=frozenset({uuid.UUID(int=1)})),
        "any job": _cursors(job_ids=None),
        "another deployment": _cursors(signer=PageTokenSigner(b"x" * 32)),
    }.items():
        with pytest.raises(InvalidJobError) as raised:
            other.decode(cursor)
        [violation] = raised.value.violations
        assert violation.field == "after_cursor", name
        assert "not returned by WatchJobs for this filter and these job ids" in (
            violation.description
        ), name


def test_page_tokens_and_watch_cursors_never_pass_for_each_other() -> None:
    token = SIGNER.encode(PageCursor(ISSUED, uuid.uuid4()), tenant=TENANT, filter_text="")
    cursor = _cursors(filter_text="", job_ids=None).encode(41, now=ISSUED)

    with pytest.raises(InvalidJobError, match="after_cursor"):
        _cursors(filter_text="", job_ids=None).decode(token)
    with pytest.raises(InvalidJobError, match="page_token"):
        SIGNER.decode(cursor, tenant=TENANT, filter_text="")


def test_forged_watch_cursors_are_refused_naming_the_field() -> None:
    bound = SIGNER.derive(WATCH_CURSOR_PURPOSE).bind(TENANT, "", "")

    def signed(payload: object) -> str:
        return bound.sign(payload) if isinstance(payload, dict) else _raw(payload)

    def _raw(payload: object) -> str:
        data = json.dumps(payload).encode()
        return f"{_b64(data)}.{_b64(bound.mac(data))}"

    forged = {
        "negative": signed({"p": -1, "t": 0}),
        "too large": signed({"p": 2**63, "t": 0}),
        "a boolean": signed({"p": True, "t": 0}),
        "a float": signed({"p": 1.0, "t": 0}),
        "text": signed({"p": "1", "t": 0}),
        "no time": signed({"p": 1}),
        "a time past 9999": signed({"p": 1, "t": 10**12}),
        "a list": signed([1, 0]),
        "nested": signed([[[[[[]]]]]]),
        "not base64": "%%%%.%%%%",
        "no signature": "eyJwIjoxfQ",
        "oversized": "A" * (MAX_PAGE_TOKEN_CHARS + 1),
    }
    for name, token in forged.items():
        with pytest.raises(InvalidJobError) as raised:
            _cursors(filter_text="", job_ids=None).decode(token)
        [violation] = raised.value.violations
        assert violation.field == "after_cursor", name


def _a_job(**changes: object) -> Job:
    job = Job(
        id=uuid.UUID(int=1),
        status=JobStatus.IN_PROGRESS,
        operation=Operation.CUBE_SUM,
        created_at=datetime(2026, 11, 15, tzinfo=UTC),
        updated_at=datetime(2026, 11, 15, tzinfo=UTC),
        sequence=2,
        outcome=None,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", True),
        ('status = "IN_PROGRESS"', True),
        ('status != "IN_PROGRESS"', False),
        ("operation = cube_sum", True),
        ("operation != cube_sum", False),
        ('create_time >= "2026-11-15T00:00:00Z"', True),
        ('create_time > "2026-11-15T00:00:00Z"', False),
        ('create_time < "2026-11-15T01:00:00+01:00"', False),
        ('create_time <= "2026-11-15T01:00:00+01:00"', True),
        ('create_time = "2026-11-15T00:00:00Z"', True),
        ('create_time != "2026-11-15T00:00:00Z"', False),
        ('status = "IN_PROGRESS" AND operation = "square_sum"', False),
    ],
)
def test_a_selection_evaluates_the_filter_as_list_jobs_does(text: str, selected: bool) -> None:
    assert JobSelection(parse_filter(text)).selects(_a_job()) is selected


def test_a_selection_by_job_ids_and_filter_needs_both() -> None:
    selection = JobSelection(parse_filter('status = "SUCCESS"'), IDS)

    assert selection.selects(_a_job(status=JobStatus.SUCCESS))
    assert not selection.selects(_a_job(status=JobStatus.FAILED))
    assert not selection.selects(_a_job(id=uuid.UUID(int=3), status=JobStatus.SUCCESS))
