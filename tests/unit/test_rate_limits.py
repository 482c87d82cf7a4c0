"""RATE_LIMIT_PER_CREDENTIAL: one rate in the `limits` notation, refused at start when malformed."""

from __future__ import annotations

import pytest

from jobcore.rate_limits import parse_rate, rate_limiter
from jobcore.settings import Settings


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [("10000/second", 10000, 1), ("50000 per minute", 50000, 60), ("3/2 seconds", 3, 2)],
)
def test_a_rate_in_the_limits_notation_is_accepted(text: str, amount: int, seconds: int) -> None:
    rate = parse_rate(text)

    assert (rate.amount, rate.get_expiry()) == (amount, seconds)


@pytest.mark.parametrize(
    "text", ["lots", "10", "10/fortnight", "0/second", "-1/second", "10/second;100/minute"]
)
def test_a_malformed_rate_stops_the_server_at_start_with_the_setting_named(text: str) -> None:
    settings = Settings(rate_limit_per_credential=text)

    with pytest.raises(ValueError, match="RATE_LIMIT_PER_CREDENTIAL=") as refused:
        rate_limiter(settings)

    assert repr(text) in str(refused.value)


@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_rate_means_no_limiter(text: str) -> None:
    assert rate_limiter(Settings(rate_limit_per_credential=text)) is None


def test_the_default_rate_is_generous_and_needs_no_connection_to_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RATE_LIMIT_PER_CREDENTIAL", raising=False)

    limiter = rate_limiter(Settings(redis_url="redis://127.0.0.1:1/0"))

    assert limiter is not None
    assert str(limiter.limit) == "10000 per 1 second"
