"""What the service keeps of an API key (never the key itself), and the checks a new key passes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.identity import Principal, Scope

MAX_NAME_CHARS: Final = 100

KeyState = Literal["active", "expired", "revoked"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One key as stored, without its secret: whose it is, what it may do, and until when."""

    id: uuid.UUID
    # `jobs_<8 hex>`: the public start of the key, to recognise it by.
    prefix: str
    tenant: str
    scopes: frozenset[Scope]
    # A label chosen by its creator, such as `ci`; may be empty.
    name: str
    created_at: datetime
    # None: the key never expires.
    expires_at: datetime | None
    # None while the key is not revoked.
    revoked_at: datetime | None

    @property
    def principal(self) -> Principal:
        """The caller this key stands for; its changes are recorded as made by `key:<prefix>`."""
        return Principal(self.tenant, self.scopes, actor=f"key:{self.prefix}")

    def state(self, now: datetime) -> KeyState:
        """Whether the key works at `now`; a revoked key is revoked, whatever its expiry."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True, repr=False)
class StoredApiKey:
    """A key as the key ring holds it: its record and the SHA-256 of the whole key."""

    record: ApiKeyRecord
    digest: bytes

    def __repr__(self) -> str:
        return f"StoredApiKey({self.record!r})"  # a digest in a log helps nobody


def parse_key_id(text: str, *, field: str = "key_id") -> uuid.UUID:
    """The id of a key as a caller wrote it; InvalidJobError naming `field` if it is no UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise InvalidJobError(
            [FieldViolation(field, f"must be the id of an API key, got {shown!r}")]
        ) from None


def check_name(name: str, *, field: str = "name") -> str:
    """`name` if it is a valid key label: at most 100 printable characters (empty is fine)."""
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidJobError(
            [FieldViolation(field, f"must be at most {MAX_NAME_CHARS} printable characters")]
        )
    return name


def check_expiry(
    expires_at: datetime | None, *, now: datetime, field: str = "expires_at"
) -> datetime | None:
    """`expires_at` if it is None (never) or a time with a zone after `now`; InvalidJobError
    naming `field` otherwise."""
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidJobError([FieldViolation(field, "must carry a UTC offset")])
    if expires_at <= now:
        raise InvalidJobError([FieldViolation(field, "must be in the future")])
    return expires_at


def rfc3339(moment: datetime | None) -> str | None:
    """A time as the API's JSON writes it (UTC, `Z`), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_to_json(record: ApiKeyRecord, *, key: str | None = None) -> dict[str, object]:
    """A key as JSON with the field names of the API's ApiKey, and `key` when it was just made
    (the only time it is shown)."""
    described: dict[str, object] = {"id": str(record.id)}
    if key is not None:
        described["key"] = key
    return described | {
        "prefix": record.prefix,
        "tenant": record.tenant,
        "scopes": sorted(scope.value for scope in record.scopes),
        "name": record.name,
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
        "revoked_at": rfc3339(record.revoked_at),
    }
