"""Job ids: UUIDv7, so they sort by creation time, need no central counter and cannot be guessed."""

from __future__ import annotations

import secrets
import time
import uuid

_VERSION_7 = 0x7
_VARIANT_RFC4122 = 0b10


def new_job_id() -> uuid.UUID:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 bits from the OS CSPRNG."""
    unix_ms = time.time_ns() // 1_000_000
    random_bits = secrets.randbits(74)
    rand_a = random_bits >> 62  # 12 bits
    rand_b = random_bits & ((1 << 62) - 1)
    value = (
        (unix_ms << 80) | (_VERSION_7 << 76) | (rand_a << 64) | (_VARIANT_RFC4122 << 62) | rand_b
    )
    return uuid.UUID(int=value)


def parse_job_id(text: str) -> uuid.UUID | None:
    """The UUID a client sent, or None when it is not a job id this service could have issued."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if parsed.version == _VERSION_7 else None
