"""Per-credential request rates, counted in Redis so that every server process and replica shares
them (RATE_LIMIT_PER_CREDENTIAL, in the `limits` library's notation).

The rule when Redis cannot count: a call never fails because of the limiter. Redis down, slow
(no answer within TIMEOUT_SECONDS) or refusing the command: the call goes through uncounted, one
warning is logged when such an outage starts and one info line when it ends, and for
PAUSE_SECONDS after each failure no call asks Redis at all (then one batch tries again), so an
outage adds no latency to the calls that follow it. A limit is a defence against a client
flooding the service, not a reason to turn everyone away while its store is away.

The limiter is on every call's path, and a Redis round trip costs the calling process about a
fifth of what a whole SubmitJob costs it, so concurrent calls share round trips
(jobcore.batching): while calls keep coming, they are counted in batches at most every
MIN_BATCH_INTERVAL_SECONDS, each credential's calls in a batch as one hit of that many. A lone
call is counted at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import limits
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from jobcore.batching import Coalescer
from jobcore.errors import RateLimitedError
from jobcore.identity import Principal
from jobcore.settings import Settings
from jobcore.supervision import TransientEpisode

logger = logging.getLogger(__name__)

# How long a batch of calls waits for the limiter's answer (connection and scripts together).
# A round trip takes well under a millisecond; the margin is for an event loop busy with load,
# whose lateness would otherwise read as an outage and switch counting off for a pause.
TIMEOUT_SECONDS: Final = 0.2
# After a failure, calls pass uncounted this long before Redis is asked again.
PAUSE_SECONDS: Final = 1.0
# A batch counts each credential in it with one round trip, at most this many at once (each
# over a connection of its own).
MAX_CONNECTIONS: Final = 32
MAX_BATCH: Final = 1024
# While calls come together, a batch at most this often: a busy server then makes a few hundred
# round trips a second instead of one per call, and a call waits a few milliseconds at most
# (SubmitJob's own statements wait for up to 20 ms).
MIN_BATCH_INTERVAL_SECONDS: Final = 0.005
# The counters' TTLs are in milliseconds.
RESOLUTION_SECONDS: Final = 0.001
# Every counter's Redis key starts with this (the broker's keys share the database).
KEY_PREFIX: Final = "jobs:rate"

# (tenant, actor): whose calls a counter counts.
_Caller = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SlidingWindow:
    """One credential's two counters as Redis holds them, and the rule the `limits` library's
    Lua script applies to them (acquire_sliding_window.lua), times in seconds.

    A window's counter lives 2 x `expiry` from its first call; once less than `expiry` is left it
    becomes the previous window's counter, and a new one starts. A call is admitted while
    floor(previous_count x previous_ttl / expiry) + current_count + 1 <= limit: the previous
    window's calls fade out as its counter's TTL runs down.
    """

    limit: int
    expiry: float
    previous_count: int
    previous_ttl: float
    current_count: int
    current_ttl: float

    @property
    def remaining(self) -> int:
        """How many more calls would be admitted now."""
        return max(0, self.limit - self._previous_weight - self.current_count)

    def counted(self, calls: int) -> SlidingWindow:
        """The window once `calls` more calls are counted in it."""
        return dataclasses.replace(self, current_count=self.current_count + calls)

    def seconds_until_one_more(self) -> float:
        """How long until one more call is admitted, if no other call is counted meanwhile.

        Never less than the counters' resolution (a millisecond), so a refused caller is never
        told to retry at once. The library's own estimate (WindowStats.reset_time) is the moment
        the current window turns, which is 0 s for a counter made within the same millisecond
        and too early whenever the calls of the turned window still fill the limit.
        """
        room = self.limit - self.current_count - 1  # what the previous window may still weigh
        if room >= 0:
            if self._previous_weight <= room:
                return RESOLUTION_SECONDS
            # The previous window's weight falls below room + 1 when its TTL does this.
            ttl = (room + 1) * self.expiry / self.previous_count
            return self.previous_ttl - ttl + RESOLUTION_SECONDS
        # The current window must turn into the previous one (which keeps its counter's TTL) and
        # fade until its calls weigh less than the limit: never before it turns, as ttl <= expiry.
        ttl = self.limit * self.expiry / self.current_count
        return self.current_ttl - ttl + RESOLUTION_SECONDS

    @property
    def _previous_weight(self) -> int:
        """What the previous window's calls count for now."""
        return math.floor(self.previous_count * self.previous_ttl / self.expiry)


class RedisRateLimiter:
    """Counts each credential's calls against one limit; implements server.auth.RateLimiter.

    The strategy is the sliding window counter: two counters per credential, updated by one Lua
    script in one round trip, so each count costs the same small amount whatever the limit. A
    fixed window would be as cheap but lets a client send twice the limit across a window
    boundary; a moving window is exact but keeps one entry per call (10,000 per credential at the
    default rate) and trims them on every call.
    """

    def __init__(
        self,
        limit: limits.RateLimitItem,
        *,
        redis_url: str,
        timeout_seconds: float = TIMEOUT_SECONDS,
        pause_seconds: float = PAUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """No I/O: the first call connects, so a server starts while Redis is away."""
        self.limit = limit
        self._timeout = timeout_seconds
        self._pause = pause_seconds
        self._clock = clock
        # No retries: a call that cannot be counted at once goes through uncounted. The pool
        # never needs more connections than the semaphore lets round trips run at once.
        self._pool = ConnectionPool.from_url(
            redis_url,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        self._connections = asyncio.Semaphore(MAX_CONNECTIONS)
        # The storage takes the pool among its client options (typed too narrowly for it).
        options: dict[str, Any] = {"connection_pool": self._pool}
        self._storage = RedisStorage(
            _async_uri(redis_url), implementation="redispy", key_prefix=KEY_PREFIX, **options
        )
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._batches: Coalescer[Principal, None] = Coalescer(
            self._count_batch,
            max_batch=MAX_BATCH,
            max_in_flight=1,
            min_interval=MIN_BATCH_INTERVAL_SECONDS,
        )
        self._episode = TransientEpisode(
            "rate limiter: Redis cannot count calls",
            meanwhile="calls pass uncounted until it answers again",
        )
        self._skip_until = 0.0

    async def hit(self, principal: Principal) -> None:
        """Count one call of `principal`; RateLimitedError once its credential is over the rate."""
        if self._clock() < self._skip_until:
            return
        await self._batches(principal)

    async def close(self) -> None:
        """Close the connections to Redis."""
        await self._pool.aclose()

    async def _count_batch(self, principals: list[Principal]) -> Sequence[BaseException | None]:
        """Count a batch, one round trip per credential in it: None (admitted) or the error."""
        if self._clock() < self._skip_until:
            return [None] * len(principals)
        if self._episode.failures:
            # During an outage only this batch asks again; the calls after it pass meanwhile.
            self._skip_until = self._clock() + self._pause
        calls = collections.Counter((p.tenant, p.actor) for p in principals)
        try:
            async with asyncio.timeout(self._timeout):
                counted = await asyncio.gather(
                    *(self._count(caller, n) for caller, n in calls.items()),
                    return_exceptions=True,
                )
        except TimeoutError:
            self._failed(TimeoutError(f"no answer within {self._timeout:g} s"))
            return [None] * len(principals)
        verdicts: dict[_Caller, tuple[int, float]] = {}
        for (caller, n), outcome in zip(calls.items(), counted, strict=True):
            if isinstance(outcome, RedisError | OSError):
                verdicts[caller] = (n, 0.0)  # uncounted, so admitted
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug: every call of the batch fails with it, loudly
            else:
                verdicts[caller] = outcome
        unavailable = [o for o in counted if isinstance(o, RedisError | OSError)]
        if unavailable:
            self._failed(unavailable[0])
        elif self._episode.recovered():
            self._skip_until = 0.0
        return [self._verdict(verdicts, (p.tenant, p.actor)) for p in principals]

    async def _count(self, caller: _Caller, calls: int) -> tuple[int, float]:
        """Count `calls` calls of `caller`: how many are admitted, and when the others may retry."""
        async with self._connections:
            if await self._strategy.hit(self.limit, *caller, cost=calls):
                return calls, 0.0
            # Not all of them: as many as still fit, the first to come first.
            window = SlidingWindow(
                self.limit.amount,
                self.limit.get_expiry(),
                *await self._storage.get_sliding_window(
                    self.limit.key_for(*caller), self.limit.get_expiry()
                ),
            )
            admitted = min(window.remaining, calls - 1)
            if admitted > 0:
                if await self._strategy.hit(self.limit, *caller, cost=admitted):
                    window = window.counted(admitted)
                else:
                    admitted = 0
        return admitted, window.seconds_until_one_more()

    def _verdict(
        self, verdicts: dict[_Caller, tuple[int, float]], caller: _Caller
    ) -> RateLimitedError | None:
        """Hand out a caller's admissions in the batch's order; the others get an error each."""
        admitted, retry_after = verdicts[caller]
        if admitted > 0:
            verdicts[caller] = (admitted - 1, retry_after)
            return None
        return RateLimitedError(str(self.limit), retry_after)

    def _failed(self, error: BaseException) -> None:
        self._episode.failed(error)
        self._skip_until = self._clock() + self._pause


def _async_uri(redis_url: str) -> str:
    """The `limits` storage URI of a Redis URL (`async+redis://...`)."""
    return redis_url if redis_url.startswith("async+") else f"async+{redis_url}"


def parse_rate(text: str) -> limits.RateLimitItem:
    """One rate in the `limits` notation ("1000/second", "50000 per minute"); ValueError if not."""
    try:
        items = limits.parse_many(text)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ValueError(
            f"RATE_LIMIT_PER_CREDENTIAL={text!r} is not one request rate such as "
            '"1000/second" or "50000 per minute" (at least 1 request; empty: no limit)'
        )
    return items[0]


def rate_limiter(settings: Settings) -> RedisRateLimiter | None:
    """The limiter RATE_LIMIT_PER_CREDENTIAL asks for, on REDIS_URL; None when it is empty.

    A malformed rate is refused here, at start, with ValueError.
    """
    text = settings.rate_limit_per_credential.strip()
    if not text:
        logger.info("RATE_LIMIT_PER_CREDENTIAL is empty: no request rate limit")
        return None
    return RedisRateLimiter(parse_rate(text), redis_url=settings.redis_url)
