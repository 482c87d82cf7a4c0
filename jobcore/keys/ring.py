"""KeyRing: every API key held in memory by its digest, so verifying a call's key costs no I/O.

The ring is re-read in full every API_KEY_REFRESH_SECONDS (one statement), so a key made
or revoked through any server works, or stops working, on every server within that time;
the server that made or revoked it applies the change at once (`remember`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final, NoReturn, Protocol

from jobcore.errors import StoreUnavailableError, UnauthenticatedError
from jobcore.identity import Principal
from jobcore.keys.material import KEY_PATTERN, key_digest
from jobcore.keys.records import ApiKeyRecord, StoredApiKey
from jobcore.supervision import run_periodically

# The supervised task that keeps each server's ring fresh.
API_KEYS_TASK: Final = "api-key-refresh"


class KeySource(Protocol):
    """Where a ring reads the keys from (jobcore.keys.store.KeyStore)."""

    async def all_keys(self) -> list[StoredApiKey]:
        """Every key with its digest, revoked and expired ones too."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _newer(held: StoredApiKey | None, candidate: StoredApiKey) -> bool:
    """Whether `candidate` is news to a ring holding `held`: an unknown key, or a revocation.

    A key changes only by being revoked, once, so a revoked record is never older than an
    active one of the same key.
    """
    return held is None or (
        held.record.revoked_at is None and candidate.record.revoked_at is not None
    )


class KeyRing:
    """Verifies API keys from memory (a server.auth.TokenVerifier) and keeps them fresh."""

    def __init__(self, source: KeySource, *, now: Callable[[], datetime] = _utc_now) -> None:
        self._source = source
        self._now = now
        # Replaced whole by each refresh and each `remember`, never changed in place: a call
        # sees one read of the keys or the next. By digest for `verify`, by id for `remember`.
        self._by_digest: Mapping[bytes, StoredApiKey] = MappingProxyType({})
        self._by_id: Mapping[uuid.UUID, StoredApiKey] = MappingProxyType({})
        self._loaded = False
        # What this server made or revoked since the running refresh began reading; that read
        # may have missed it, so it is applied again on top of what was read.
        self._remembered: dict[uuid.UUID, StoredApiKey] = {}

    @property
    def size(self) -> int:
        """How many keys the ring holds (revoked and expired ones included)."""
        return len(self._by_digest)

    def verify(self, token: str) -> Principal:
        """The principal of an API key; UnauthenticatedError saying whether it is malformed,
        unknown, revoked or expired (naming at most the key's public prefix).

        Before the keys were first read (PostgreSQL unreachable since the server started)
        nobody can be told their key is unknown: StoreUnavailableError, which clients retry.
        """
        if KEY_PATTERN.fullmatch(token) is None:
            raise UnauthenticatedError("invalid credentials: malformed API key")
        if not self._loaded:
            raise StoreUnavailableError(
                "the API keys are not loaded yet: the job store (PostgreSQL) is unavailable"
            )
        stored = self._by_digest.get(key_digest(token))
        if stored is None:
            raise UnauthenticatedError("invalid credentials: unknown API key")
        record = stored.record
        if record.revoked_at is not None:
            raise UnauthenticatedError(f"invalid credentials: API key {record.prefix} is revoked")
        if record.expires_at is not None and record.expires_at <= self._now():
            raise UnauthenticatedError(
                f"invalid credentials: API key {record.prefix} expired at "
                f"{record.expires_at.astimezone(UTC).isoformat()}"
            )
        return record.principal

    def remember(self, record: ApiKeyRecord, *, key: str | None = None) -> None:
        """Apply a key this server just made (with `key`) or revoked, before a refresh reads it.

        A revoked key this ring never held is left to the next refresh.
        """
        if key is not None:
            stored = StoredApiKey(record, key_digest(key))
        else:
            held = self._by_id.get(record.id)
            if held is None:
                return
            stored = StoredApiKey(record, held.digest)
        self._remembered[record.id] = stored
        if _newer(self._by_id.get(record.id), stored):
            self._swap({**self._by_id, record.id: stored})

    async def refresh(self) -> None:
        """Re-read every key and swap them in at once; on an error the previous keys stay."""
        self._remembered = {}
        read = {stored.record.id: stored for stored in await self._source.all_keys()}
        for key_id, stored in self._remembered.items():
            if _newer(read.get(key_id), stored):
                read[key_id] = stored
        self._swap(read)
        self._loaded = True

    def _swap(self, by_id: dict[uuid.UUID, StoredApiKey]) -> None:
        self._by_id = MappingProxyType(by_id)
        self._by_digest = MappingProxyType({stored.digest: stored for stored in by_id.values()})

    async def run(self, interval: timedelta) -> NoReturn:
        """Refresh every `interval` forever (the supervised task API_KEYS_TASK).

        A TransientError (PostgreSQL unreachable) keeps the keys last read and is retried
        with backoff; anything else ends the task, and with it the process.
        """
        await run_periodically(API_KEYS_TASK, self.refresh, interval=interval)
