"""ListJobs: the filter language (a subset of Google AIP-160) and opaque page tokens (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.models import JobStatus
from jobcore.operations import Operation

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Field = Literal["status", "operation", "create_time"]
Operator = Literal["=", "!=", "<", "<=", ">", ">="]

_EQUALITY: tuple[Operator, ...] = ("=", "!=")
_ALL_OPERATORS: tuple[Operator, ...] = ("=", "!=", "<", "<=", ">", ">=")
_ALLOWED: dict[str, tuple[Operator, ...]] = {
    "status": _EQUALITY,
    "operation": _EQUALITY,
    "create_time": _ALL_OPERATORS,
}
_CONDITION = re.compile(
    r"""\s*(?P<field>[A-Za-z_]+)\s*(?P<op>!=|<=|>=|=|<|>)\s*
        (?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+))\s*""",
    re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+")


@dataclass(frozen=True)
class Condition:
    """One `field operator value` clause of a filter."""

    field: Field
    operator: Operator
    value: str | datetime


@dataclass(frozen=True)
class PageCursor:
    """Where the previous page ended: jobs are ordered by (created_at, id), newest first."""

    created_at: datetime
    job_id: uuid.UUID


def _invalid(field: str, description: str) -> InvalidJobError:
    return InvalidJobError([FieldViolation(field, description)])


def _value(field: str, text: str) -> str | datetime:
    if field == "status":
        if text not in JobStatus.__members__:
            raise _invalid("filter", f"status must be one of {', '.join(JobStatus)}, got {text!r}")
        return text
    if field == "operation":
        if text not in {operation.value for operation in Operation}:
            raise _invalid(
                "filter", f"operation must be one of {', '.join(Operation)}, got {text!r}"
            )
        return text
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid("filter", f"create_time needs an RFC 3339 time, got {text!r}") from None
    if moment.tzinfo is None:
        raise _invalid("filter", f"create_time needs a time zone (e.g. Z), got {text!r}")
    return moment


def parse_filter(text: str) -> list[Condition]:
    """The conditions of a filter such as `status = "FAILED" AND create_time > "2026-11-01T00:00:00Z"`."""
    if not text.strip():
        return []
    conditions = []
    for clause in _AND.split(text.strip()):
        match = _CONDITION.fullmatch(clause)
        if match is None:
            raise _invalid(
                "filter",
                f'cannot parse {clause!r}: expected `field operator "value"` clauses joined by AND',
            )
        field, operator = match["field"], match["op"]
        if field not in _ALLOWED:
            raise _invalid(
                "filter", f"unknown field {field!r}: filter on status, operation or create_time"
            )
        if operator not in _ALLOWED[field]:
            raise _invalid("filter", f"{field} supports {' and '.join(_ALLOWED[field])} only")
        raw = match["quoted"] if match["quoted"] is not None else match["bare"]
        conditions.append(Condition(field, operator, _value(field, raw)))  # type: ignore[arg-type]
    return conditions


def page_size_of(requested: int) -> int:
    """The page size to use; InvalidJobError outside 0..MAX_PAGE_SIZE."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise _invalid(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    return requested or DEFAULT_PAGE_SIZE


def _filter_digest(filter_text: str) -> str:
    return hashlib.sha256(filter_text.encode()).hexdigest()[:16]


def encode_page_token(cursor: PageCursor, *, filter_text: str) -> str:
    """An opaque token for the page after `cursor`, bound to the filter it was made for."""
    payload = {
        "t": cursor.created_at.isoformat(),
        "i": str(cursor.job_id),
        "f": _filter_digest(filter_text),
    }
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_page_token(token: str, *, filter_text: str) -> PageCursor | None:
    """The cursor inside a token (None for the first page); InvalidJobError if it is not ours."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = PageCursor(datetime.fromisoformat(payload["t"]), uuid.UUID(payload["i"]))
        digest = payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _invalid("page_token", "is not a token returned by ListJobs") from None
    if digest != _filter_digest(filter_text):
        raise _invalid("page_token", "was made for a different filter; start again without it")
    return cursor
