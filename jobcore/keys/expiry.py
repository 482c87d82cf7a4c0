"""`--expires` of the key commands: a lifetime from now (`90d`, `12h`) or a moment (ISO 8601).

Both `python -m jobcore.keys create` and `jobs keys create` read it, so this module imports
nothing but the standard library.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

_LIFETIME = re.compile(r"(?P<count>[0-9]{1,6})(?P<unit>[smhdw])")
_UNITS: Final = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
EXPIRES_HELP: Final = (
    "when the key stops working: a lifetime such as 90d, 12h, 30m or 2w, or a moment "
    "with its UTC offset such as 2027-01-01T00:00:00Z (default: never)"
)


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """The moment `text` names (a lifetime counts from `now`); ValueError saying what is wrong.

    A moment without a UTC offset is refused rather than guessed.
    """
    lifetime = _LIFETIME.fullmatch(text.strip())
    if lifetime is not None:
        count = int(lifetime["count"])
        if count == 0:
            raise ValueError(f"{text!r} is no lifetime: give at least 1{lifetime['unit']}")
        try:
            return (now or datetime.now(UTC)) + count * _UNITS[lifetime["unit"]]
        except OverflowError:
            raise ValueError(f"{text!r} ends after the year 9999") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither a lifetime (90d, 12h, 30m, 2w) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no UTC offset: add one, e.g. Z or +02:00")
    return moment.astimezone(UTC)
