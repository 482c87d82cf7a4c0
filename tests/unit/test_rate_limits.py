"""RATE_LIMIT_PER_CREDENTIAL: one rate in the `limits` notation, refused at start when malformed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobcore.rate_limits import RESOLUTION_SECONDS, SlidingWindow, parse_rate, rate_limiter
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


def _admits(window: SlidingWindow, calls: int, after: float = 0.0) -> bool:
    """What acquire_sliding_window.lua decides for `calls` calls counted together `after`
    seconds later, no call counted meanwhile: the current counter turns into the previous one
    (keeping its TTL) once less than `expiry` of it is left, and a counter whose TTL ran out is
    gone."""
    previous, previous_ttl = window.previous_count, window.previous_ttl - after
    current, current_ttl = window.current_count, window.current_ttl - after
    if 0 < current_ttl < window.expiry:
        previous, previous_ttl, current = current, current_ttl, 0
    if previous_ttl <= 0:
        previous = 0
    if current_ttl <= 0:
        current = 0
    return math.floor(previous * previous_ttl / window.expiry) + current + calls <= window.limit


@st.composite
def _windows(draw: st.DrawFn) -> SlidingWindow:
    """Counters as the script leaves them: neither over the limit, the previous one's TTL what
    was left of it when it turned, so `expiry` less than the current one's."""
    limit = draw(st.integers(1, 50))
    expiry = draw(st.sampled_from([1, 2, 60, 3600]))
    current_ttl = expiry * (1 + draw(st.floats(0.001, 1)))
    previous_count = draw(st.integers(0, limit))
    return SlidingWindow(
        limit=limit,
        expiry=expiry,
        previous_count=previous_count,
        previous_ttl=current_ttl - expiry if previous_count else 0.0,
        current_count=draw(st.integers(0, limit)),
        current_ttl=current_ttl,
    )


@given(_windows())
def test_the_time_to_retry_is_when_the_counters_admit_one_more_call(window: SlidingWindow) -> None:
    wait = window.seconds_until_one_more()

    assert wait >= RESOLUTION_SECONDS
    assert _admits(window, 1, after=wait)
    if wait > 3 * RESOLUTION_SECONDS:
        assert not _admits(window, 1, after=wait - 2 * RESOLUTION_SECONDS)


@given(_windows())
def test_the_calls_remaining_are_as_many_as_the_counters_admit_now(window: SlidingWindow) -> None:
    assert window.remaining == 0 or _admits(window, window.remaining)
    assert not _admits(window, window.remaining + 1)


def test_a_full_window_made_this_millisecond_says_retry_in_a_whole_window() -> None:
    """The `limits` library's estimate was 0 s here (the counter's TTL, 2 minutes, modulo one)."""
    window = SlidingWindow(
        5, 60, previous_count=0, previous_ttl=0, current_count=5, current_ttl=120
    )

    assert window.remaining == 0
    assert window.seconds_until_one_more() == pytest.approx(60.001)


def test_calls_of_the_previous_window_fade_out_in_proportion() -> None:
    """10 calls a minute, all 10 in the window that just turned: with 5 calls in the new one,
    one more once half of the previous window has faded; with 8, once 80 % has."""
    window = SlidingWindow(
        10, 60, previous_count=10, previous_ttl=60, current_count=5, current_ttl=120
    )

    assert window.seconds_until_one_more() == pytest.approx(30.001)
    assert window.counted(3).seconds_until_one_more() == pytest.approx(48.001)
