"""What an API key is made of: `jobs_<prefix id>_<secret>`, and the digest the service keeps.

A key is `jobs_` and 8 lower-case hex digits (its public prefix, shown in lists, logs and job
histories), `_`, then 43 base64url characters: 32 random bytes from the OS CSPRNG. The service
stores only the SHA-256 of the whole key. A 256-bit secret cannot be guessed, so a plain hash
(no salt, no slow KDF) is enough, and looking a key up by its digest needs no secret compare:
whatever timing a lookup shows is about a digest, from which no key can be worked out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

# Every key starts with this (server.auth tells keys from JWTs by it).
KEY_PREFIX: Final = "jobs_"
_PREFIX_ID_BYTES = 4  # 8 hex digits
_SECRET_BYTES = 32  # 256 bits; token_urlsafe(32) is 43 characters
# The whole key; tokens of another shape are unknown without being hashed.
KEY_PATTERN: Final = re.compile(r"jobs_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True, repr=False)
class NewKey:
    """A freshly drawn key: the whole key (shown once), its public prefix and its digest."""

    key: str
    prefix: str
    digest: bytes

    def __repr__(self) -> str:
        return f"NewKey(prefix={self.prefix!r}, key=<secret>)"  # never the secret in a log


def key_digest(key: str) -> bytes:
    """The SHA-256 of the whole key: what `api_keys.secret_hash` holds."""
    return hashlib.sha256(key.encode()).digest()


def new_key() -> NewKey:
    """A new random key."""
    prefix = KEY_PREFIX + secrets.token_hex(_PREFIX_ID_BYTES)
    key = f"{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewKey(key=key, prefix=prefix, digest=key_digest(key))
