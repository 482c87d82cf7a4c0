"""API keys without I/O: their shape and digest, the checks of a new key, `--expires`, and the
key ring's answers (unknown, malformed, expired, revoked; a refresh that keeps or swaps)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobcore.errors import InvalidJobError, StoreUnavailableError, UnauthenticatedError
from jobcore.identity import Principal, Scope
from jobcore.keys.expiry import parse_expiry
from jobcore.keys.material import KEY_PATTERN, key_digest, new_key
from jobcore.keys.records import (
    ApiKeyRecord,
    StoredApiKey,
    check_expiry,
    check_name,
    key_to_json,
    parse_key_id,
)
from jobcore.keys.ring import KeyRing
from server.auth import API_KEY_PREFIX, CallGuard

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _record(prefix: str, **changes: object) -> ApiKeyRecord:
    record = ApiKeyRecord(
        id=uuid.uuid4(),
        prefix=prefix,
        tenant="acme",
        scopes=frozenset({Scope.JOBS_WRITE}),
        name="ci",
        created_at=NOW - timedelta(days=1),
        expires_at=None,
        revoked_at=None,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def _stored(**changes: object) -> tuple[StoredApiKey, str]:
    """A key and what a store would hold of it."""
    drawn = new_key()
    return StoredApiKey(_record(drawn.prefix, **changes), drawn.digest), drawn.key


class Keys:
    """The keys a ring reads: a list the test changes between refreshes (a KeySource)."""

    def __init__(self, *keys: StoredApiKey) -> None:
        self.keys = list(keys)
        self.failure: Exception | None = None
        self.reads = 0
        # Runs after the read, before the ring has the answer: as if changes committed then.
        self.after_read: Callable[[], None] | None = None

    async def all_keys(self) -> list[StoredApiKey]:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        read = list(self.keys)
        if self.after_read is not None:
            self.after_read()
        return read


async def _ring(*keys: StoredApiKey, now: datetime = NOW) -> tuple[KeyRing, Keys]:
    source = Keys(*keys)
    ring = KeyRing(source, now=lambda: now)
    await ring.refresh()
    return ring, source


def test_a_new_key_has_the_documented_shape_and_is_stored_as_its_sha256() -> None:
    drawn = new_key()

    assert re.fullmatch(r"jobs_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", drawn.key)
    assert KEY_PATTERN.fullmatch(drawn.key)
    assert drawn.key.startswith(drawn.prefix + "_")
    assert re.fullmatch(r"jobs_[0-9a-f]{8}", drawn.prefix)
    assert drawn.key.startswith(API_KEY_PREFIX)  # the call guard sends it to the key ring
    assert drawn.digest == hashlib.sha256(drawn.key.encode()).digest() == key_digest(drawn.key)
    assert drawn.key not in repr(drawn)


def test_keys_are_random() -> None:
    drawn = [new_key() for _ in range(200)]

    assert len({key.key for key in drawn}) == 200
    assert len({key.prefix for key in drawn}) == 200


async def test_the_ring_knows_a_key_and_its_principal() -> None:
    stored, key = _stored(scopes=frozenset({Scope.JOBS_READ, Scope.ADMIN}))
    ring, source = await _ring(stored)

    principal = ring.verify(key)
    for _ in range(100):
        ring.verify(key)

    assert principal == Principal(
        "acme", frozenset({Scope.JOBS_READ, Scope.ADMIN}), actor=f"key:{stored.record.prefix}"
    )
    assert principal == stored.record.principal
    assert source.reads == 1  # verifying reads nothing


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("jobs_0123abcd_" + "A" * 43, "unknown API key"),  # the right shape, never issued
        ("jobs_0123abcd_" + "A" * 42, "malformed API key"),
        ("jobs_0123ABCD_" + "A" * 43, "malformed API key"),
        ("jobs_", "malformed API key"),
    ],
)
async def test_an_unknown_or_malformed_key_is_refused_without_echoing_it(
    token: str, reason: str
) -> None:
    stored, _ = _stored()
    ring, _ = await _ring(stored)

    with pytest.raises(UnauthenticatedError) as refused:
        ring.verify(token)

    assert reason in str(refused.value)
    assert token not in str(refused.value)


async def test_an_expired_key_is_refused_from_its_expiry_on() -> None:
    stored, key = _stored(expires_at=NOW + timedelta(minutes=1))
    clock = [NOW]
    ring = KeyRing(Keys(stored), now=lambda: clock[0])
    await ring.refresh()

    assert ring.verify(key).tenant == "acme"
    clock[0] = NOW + timedelta(minutes=1)
    with pytest.raises(UnauthenticatedError) as refused:
        ring.verify(key)

    message = str(refused.value)
    assert f"API key {stored.record.prefix} expired" in message
    assert key not in message


async def test_a_revoked_key_is_refused_as_revoked() -> None:
    stored, key = _stored(revoked_at=NOW - timedelta(seconds=1), expires_at=NOW - timedelta(1))
    ring, _ = await _ring(stored)

    with pytest.raises(UnauthenticatedError) as refused:
        ring.verify(key)

    assert f"API key {stored.record.prefix} is revoked" in str(refused.value)
    assert key not in str(refused.value)


async def test_a_refresh_sees_new_and_revoked_keys() -> None:
    first, first_key = _stored()
    second, second_key = _stored()
    ring, source = await _ring(first)

    source.keys = [StoredApiKey(replace(first.record, revoked_at=NOW), first.digest), second]
    await ring.refresh()

    assert ring.verify(second_key).tenant == "acme"
    with pytest.raises(UnauthenticatedError, match="revoked"):
        ring.verify(first_key)
    assert ring.size == 2


async def test_a_failed_refresh_keeps_the_keys_read_before() -> None:
    stored, key = _stored()
    ring, source = await _ring(stored)
    source.keys = []
    source.failure = StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        await ring.refresh()

    assert ring.verify(key).tenant == "acme"


async def test_before_the_first_read_a_key_is_unavailable_not_unknown() -> None:
    stored, key = _stored()
    source = Keys(stored)
    source.failure = StoreUnavailableError("down")
    ring = KeyRing(source, now=lambda: NOW)
    with pytest.raises(StoreUnavailableError):
        await ring.refresh()

    with pytest.raises(StoreUnavailableError):
        ring.verify(key)
    with pytest.raises(UnauthenticatedError, match="malformed"):
        ring.verify("jobs_garbage")


async def test_the_server_that_made_or_revoked_a_key_applies_it_at_once() -> None:
    ring, _ = await _ring()
    drawn = new_key()
    record = _record(drawn.prefix)

    ring.remember(record, key=drawn.key)
    assert ring.verify(drawn.key).tenant == "acme"

    ring.remember(replace(record, revoked_at=NOW))
    with pytest.raises(UnauthenticatedError, match="revoked"):
        ring.verify(drawn.key)


async def test_a_refresh_that_read_before_a_change_does_not_undo_it() -> None:
    stored, key = _stored()
    ring, source = await _ring(stored)
    drawn = new_key()
    made = _record(drawn.prefix)

    def change() -> None:
        ring.remember(made, key=drawn.key)
        ring.remember(replace(stored.record, revoked_at=NOW))

    source.after_read = change
    await ring.refresh()

    assert ring.verify(drawn.key).tenant == "acme"
    with pytest.raises(UnauthenticatedError, match="revoked"):
        ring.verify(key)


async def test_a_revocation_is_not_undone_by_a_remembered_active_record() -> None:
    stored, key = _stored()
    ring, _ = await _ring(StoredApiKey(replace(stored.record, revoked_at=NOW), stored.digest))

    ring.remember(stored.record, key=key)  # an older view of the same key

    with pytest.raises(UnauthenticatedError, match="revoked"):
        ring.verify(key)


async def test_the_call_guard_verifies_keys_with_the_ring() -> None:
    stored, key = _stored()
    ring, _ = await _ring(stored)
    guard = CallGuard(api_keys=ring, jwts=None, rate_limiter=None)

    assert guard.authenticate(f"Bearer {key}") == stored.record.principal
    with pytest.raises(UnauthenticatedError, match="unknown API key"):
        guard.authenticate(f"Bearer {new_key().key}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", NOW + timedelta(days=90)),
        ("12h", NOW + timedelta(hours=12)),
        ("30m", NOW + timedelta(minutes=30)),
        (" 2w ", NOW + timedelta(weeks=2)),
        ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T02:00:00+02:00", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_expires_takes_a_lifetime_or_a_zoned_time(text: str, expected: datetime) -> None:
    assert parse_expiry(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("2027-01-01T00:00:00", "UTC offset"),
        ("0d", "at least"),
        ("soon", "neither a lifetime"),
        ("999999w", "9999"),
    ],
)
def test_expires_refuses_what_it_would_have_to_guess(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_expiry(text, now=NOW)


def test_a_new_key_needs_a_future_zoned_expiry_and_a_short_printable_name() -> None:
    assert check_expiry(None, now=NOW) is None
    assert check_expiry(NOW + timedelta(seconds=1), now=NOW) == NOW + timedelta(seconds=1)
    for bad in (NOW, NOW - timedelta(days=1), datetime(2030, 1, 1)):  # noqa: DTZ001
        with pytest.raises(InvalidJobError) as refused:
            check_expiry(bad, now=NOW)
        assert refused.value.violations[0].field == "expires_at"
    assert check_name("") == ""
    assert check_name("x" * 100) == "x" * 100
    for bad_name in ("x" * 101, "line\nbreak"):
        with pytest.raises(InvalidJobError) as refused:
            check_name(bad_name)
        assert refused.value.violations[0].field == "name"


def test_a_key_id_must_be_a_uuid() -> None:
    key_id = uuid.uuid4()

    assert parse_key_id(str(key_id)) == key_id
    with pytest.raises(InvalidJobError) as refused:
        parse_key_id("jobs_0123abcd")
    assert refused.value.violations[0].field == "key_id"


def test_a_key_as_json_shows_the_secret_only_when_given() -> None:
    record = _record("jobs_0123abcd", scopes=frozenset({Scope.JOBS_WRITE, Scope.ADMIN}))

    listed = key_to_json(record)
    made = key_to_json(record, key="jobs_0123abcd_secret")

    assert listed == {
        "id": str(record.id),
        "prefix": "jobs_0123abcd",
        "tenant": "acme",
        "scopes": ["admin", "jobs.write"],
        "name": "ci",
        "created_at": "2026-12-05T12:00:00Z",
        "expires_at": None,
        "revoked_at": None,
    }
    assert made == {**listed, "key": "jobs_0123abcd_secret"}
    assert list(made)[:2] == ["id", "key"]


def test_a_record_says_whether_it_works() -> None:
    record = _record("jobs_0123abcd", expires_at=NOW)

    assert record.state(NOW - timedelta(seconds=1)) == "active"
    assert record.state(NOW) == "expired"
    assert replace(record, revoked_at=NOW).state(NOW - timedelta(days=1)) == "revoked"
