"""ListJobs and WatchJobs: the filter language (a subset of Google AIP-160), evaluated by
PostgreSQL for a listing and here for a watch, and opaque signed tokens (AIP-158 page tokens,
watch cursors)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import operator
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.models import Job, JobStatus
from jobcore.operations import Operation

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A filter is a few conditions a person writes. These caps bound the work one request can make
# the server do (parsing, the statement's shape, the query plan), and they are checked before
# the text is parsed, so an oversized filter costs no more than its length.
MAX_FILTER_BYTES = 1024
MAX_FILTER_CLAUSES = 10
# A token this server makes holds one time, one UUID and a short digest; anything longer was not
# made here and is refused before it is decoded.
MAX_PAGE_TOKEN_CHARS = 256
# The job ids one WatchJobs stream may name.
MAX_WATCH_JOB_IDS = 1000
# Watch cursors are signed with a key derived for them alone (TokenSigner.derive).
WATCH_CURSOR_PURPOSE: Final = "jobs.v1.JobService/WatchJobs cursor"
# Positions are bigint in PostgreSQL.
_MAX_POSITION = 2**63 - 1

Field = Literal["status", "operation", "create_time"]
Operator = Literal["=", "!=", "<", "<=", ">", ">="]

_EQUALITY: tuple[Operator, ...] = ("=", "!=")
_ALL_OPERATORS: tuple[Operator, ...] = ("=", "!=", "<", "<=", ">", ">=")
_ALLOWED: dict[str, tuple[Operator, ...]] = {
    "status": _EQUALITY,
    "operation": _EQUALITY,
    "create_time": _ALL_OPERATORS,
}
# One token after optional whitespace: a quoted value, an operator, or a word (a field, AND or a
# bare value). Possessive quantifiers never backtrack, so a filter is scanned in linear time.
_TOKEN = re.compile(
    r"""\s*+(?:"(?P<quoted>[^"]*+)"|(?P<op>!=|<=|>=|=|<|>)|(?P<word>[^\s"!=<>]++))"""
)
_FIELD_NAME = re.compile(r"[A-Za-z_]+")
_AND_WORD = re.compile(r"\bAND\b")
_CLAUSE_SHAPES = {("word", "op", "word"), ("word", "op", "quoted")}
_SYNTAX = 'expected `field operator "value"` clauses joined by AND'
# RFC 3339 (section 5.6) with ASCII digits only; the zone is optional here so that a missing one
# gets its own message.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


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


@dataclass(frozen=True)
class JobSelection:
    """Which changes a WatchJobs stream sends: those whose job, as it is after the change,
    meets every condition of the filter and is one of the job ids (None: any job)."""

    conditions: Sequence[Condition]
    job_ids: frozenset[uuid.UUID] | None = None

    def selects(self, job: Job) -> bool:
        """Whether the stream sends this state of the job."""
        if self.job_ids is not None and job.id not in self.job_ids:
            return False
        return all(_holds(condition, job) for condition in self.conditions)


# The same comparisons the list_jobs statement makes (jobcore.store), on the job's fields.
_COMPARE: Final[Mapping[Operator, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _holds(condition: Condition, job: Job) -> bool:
    actual: str | datetime
    if condition.field == "status":
        actual = job.status.value
    elif condition.field == "operation":
        actual = job.operation.value
    else:
        actual = job.created_at
    return _COMPARE[condition.operator](actual, condition.value)


@dataclass(frozen=True)
class WatchCursor:
    """Where a WatchJobs stream stood: every change of its tenant up to `position` was covered
    (sent, or not selected) when the cursor was made at `issued_at`. `field` is the request
    field it came in, for error messages."""

    position: int
    issued_at: datetime
    field: str = "after_cursor"


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
        return utc_time(text)
    except ValueError as error:
        raise _invalid("filter", f"create_time {error}, got {_shown(text)}") from None


def utc_time(text: str) -> datetime:
    """An RFC 3339 time as a UTC datetime; ValueError saying what is wrong with it.

    Converting to UTC here keeps every time the store receives within years 1 to 9999 UTC,
    which both Python and PostgreSQL can hold (a year-1 time at +14:00 is not).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("needs an RFC 3339 time such as 2026-11-01T00:00:00Z")
    if match["zone"] is None:
        raise ValueError("needs a time zone (e.g. Z)")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("needs a valid date, time and offset") from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie within the years 1 to 9999 in UTC") from None


def _shown(text: str) -> str:
    """A value quoted in an error message, cut short: the message must stay small."""
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _check_filter_size(text: str) -> None:
    """InvalidJobError if the filter exceeds the caps; costs no more than the text's length."""
    # Characters never outnumber UTF-8 bytes, so a long text is refused without encoding it.
    if len(text) > MAX_FILTER_BYTES or len(text.encode()) > MAX_FILTER_BYTES:
        raise _invalid("filter", f"must be at most {MAX_FILTER_BYTES} bytes (UTF-8)")
    clauses = len(_AND_WORD.findall(text)) + 1
    if clauses > MAX_FILTER_CLAUSES:
        raise _invalid("filter", f"has {clauses} clauses; at most {MAX_FILTER_CLAUSES} are allowed")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """The filter's tokens as (kind, text, where it starts), in one linear pass."""
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise _invalid("filter", f"cannot parse {_shown(text[position:].strip())}: {_SYNTAX}")
        tokens.append((match.lastgroup, match[match.lastgroup], match.start(match.lastgroup)))
        position = match.end()
    return tokens


def parse_filter(text: str) -> list[Condition]:
    """The conditions of a filter such as `status = "FAILED" AND create_time > "2026-11-01T00:00:00Z"`."""
    _check_filter_size(text)
    text = text.strip()
    if not text:
        return []
    tokens = _tokens(text)
    conditions = []
    # Each clause is three tokens (field, operator, value), and clauses are joined by AND.
    for start in range(0, len(tokens), 4):
        clause = tokens[start : start + 3]
        joint = tokens[start + 3 : start + 4]
        well_formed = (
            tuple(kind for kind, _, _ in clause) in _CLAUSE_SHAPES
            and _FIELD_NAME.fullmatch(clause[0][1]) is not None
            and (not joint or (joint[0][:2] == ("word", "AND") and start + 4 < len(tokens)))
        )
        if not well_formed:
            raise _invalid("filter", f"cannot parse {_shown(text[clause[0][2] :][:64])}: {_SYNTAX}")
        (_, field, _), (_, operator, _), (_, raw, _) = clause
        if field not in _ALLOWED:
            raise _invalid(
                "filter", f"unknown field {field!r}: filter on status, operation or create_time"
            )
        if operator not in _ALLOWED[field]:
            raise _invalid("filter", f"{field} supports {' and '.join(_ALLOWED[field])} only")
        conditions.append(Condition(field, operator, _value(field, raw)))  # type: ignore[arg-type]
    return conditions


def page_size_of(requested: int) -> int:
    """The page size to use; InvalidJobError outside 0..MAX_PAGE_SIZE."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise _invalid(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    return requested or DEFAULT_PAGE_SIZE


class TokenSigner:
    """Opaque tokens this service hands out and takes back (ListJobs page tokens, WatchJobs
    cursors): a small JSON payload, signed with HMAC-SHA256 together with what it is bound to
    (the tenant, the request it was made for), so a token cannot be forged, altered, or
    replayed in another context. Every replica needs the same secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def derive(self, purpose: str) -> TokenSigner:
        """A signer with a key of its own for another kind of token, so no token of one kind
        ever passes for one of another, whatever the two are bound to."""
        return TokenSigner(hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest())

    def bind(self, *context: str) -> BoundSigner:
        """The signer of tokens bound to `context`; its share of the MAC is computed once here,
        so a stream that hands out a token per message does not hash its context each time."""
        prefix = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in context:
            prefix.update(part.encode())
            prefix.update(b"\0")
        return BoundSigner(prefix)


class BoundSigner:
    """Signs and opens tokens bound to one context (see TokenSigner.bind)."""

    def __init__(self, prefix: hmac.HMAC) -> None:
        self._prefix = prefix

    def mac(self, payload: bytes) -> bytes:
        """The token's signature of `payload` in this context."""
        signed = self._prefix.copy()
        signed.update(payload)
        return signed.digest()[:_MAC_BYTES]

    def sign(self, fields: Mapping[str, object]) -> str:
        """The token that carries `fields` (JSON) in this context."""
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self.mac(payload))}"

    def open(self, token: str, *, field: str, issuer: str, context: str) -> dict[str, object]:
        """The fields a token carries; InvalidJobError naming `field` unless `issuer` made it
        in this context (described by `context`, as in "for this filter")."""
        not_ours = f"is not a {_TOKEN_NOUNS.get(field, 'token')} returned by {issuer}"
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise _invalid(field, f"{not_ours} (too long)")
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except ValueError:
            raise _invalid(field, not_ours) from None
        if not hmac.compare_digest(mac, self.mac(payload)):
            raise _invalid(field, f"was not returned by {issuer} {context}; start again without it")
        try:
            fields = json.loads(payload)
        except (ValueError, RecursionError):
            raise _invalid(field, not_ours) from None
        if not isinstance(fields, dict):
            raise _invalid(field, not_ours)
        return fields


class PageTokenSigner(TokenSigner):
    """Makes and reads ListJobs page tokens: a cursor, bound to the tenant and the filter it
    was made for."""

    def _mac(self, payload: bytes, *, tenant: str, filter_text: str) -> bytes:
        return self.bind(tenant, filter_text).mac(payload)

    def encode(self, cursor: PageCursor, *, tenant: str, filter_text: str) -> str:
        """An opaque token for the page after `cursor`."""
        return self.bind(tenant, filter_text).sign(
            {"t": cursor.created_at.isoformat(), "i": str(cursor.job_id)}
        )

    def decode(self, token: str, *, tenant: str, filter_text: str) -> PageCursor | None:
        """The cursor inside a token (None for the first page); InvalidJobError if this server
        did not make it for this tenant and filter."""
        if not token:
            return None
        fields = self.bind(tenant, filter_text).open(
            token, field="page_token", issuer="ListJobs", context="for this filter"
        )
        try:
            created_at, job_id = fields["t"], fields["i"]
            if not (isinstance(created_at, str) and isinstance(job_id, str)):
                raise TypeError("not text")
            return PageCursor(utc_time(created_at), uuid.UUID(job_id))
        except (ValueError, KeyError, TypeError):
            raise _invalid("page_token", "is not a token returned by ListJobs") from None


# A truncated HMAC-SHA256: 128 bits are far beyond guessing, and keep tokens short.
_MAC_BYTES = 16
# What each token field holds, for its error messages.
_TOKEN_NOUNS = {"page_token": "token", "after_cursor": "cursor", "Last-Event-ID": "cursor"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    """ValueError unless `text` is unpadded base64url."""
    if not text or not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WatchCursors:
    """Makes and reads the cursors of WatchJobs streams with one tenant, filter and set of job
    ids: a cursor made for another of them (or by another deployment) is refused."""

    def __init__(
        self,
        signer: TokenSigner,
        *,
        tenant: str,
        filter_text: str,
        job_ids: frozenset[uuid.UUID] | None,
    ) -> None:
        # The ids in one order, so the same set resumes whatever order a client lists them in.
        ids = ",".join(sorted(str(job_id) for job_id in job_ids or ()))
        self._signer = signer.derive(WATCH_CURSOR_PURPOSE).bind(tenant, filter_text, ids)

    def encode(self, position: int, *, now: datetime) -> str:
        """The cursor of a stream that has covered every change up to `position`."""
        return self._signer.sign({"p": position, "t": int(now.timestamp())})

    def decode(self, token: str, *, field: str = "after_cursor") -> WatchCursor:
        """The cursor a client sent back; InvalidJobError naming `field` if this service did
        not make it for this tenant, filter and job ids."""
        fields = self._signer.open(
            token,
            field=field,
            issuer="WatchJobs",
            context="for this filter and these job ids",
        )
        position, issued = fields.get("p"), fields.get("t")
        # bool is an int to Python, not to JSON's writer of these cursors.
        if not (
            type(position) is int
            and type(issued) is int
            and 0 <= position <= _MAX_POSITION
            and 0 <= issued <= _MAX_UNIX_SECONDS
        ):
            raise _invalid(field, "is not a cursor returned by WatchJobs")
        return WatchCursor(position, datetime.fromtimestamp(issued, UTC), field)


# The end of year 9999 UTC, the last second a datetime holds.
_MAX_UNIX_SECONDS = 253_402_300_799
