"""Job events as they commit: one LISTEN connection per process, fanned out to in-memory inboxes.

The server feeds WatchJob streams (one job each) and WatchJobs streams (every event of one
tenant) from it: a thousand watchers cost one PostgreSQL subscription. The worker learns from it
that a running job was cancelled. Events arrive at least once and in commit order; after a
reconnect every inbox gets RESYNC and re-reads what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any, Final, NoReturn, TypeVar

import asyncpg

from jobcore.database import BoundedConnection, asyncpg_dsn, server_socket_settings
from jobcore.errors import ServiceShuttingDownError, TransientError
from jobcore.models import JobEvent
from jobcore.rows import event_from_row
from jobcore.schema import JOB_EVENTS_CHANNEL
from jobcore.supervision import Backoff, Supervisor, TransientEpisode, inject_fault

logger = logging.getLogger(__name__)


class _Signal:
    """A control message for inboxes, distinct from any JobEvent."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The listener reconnected: notifications may have been missed, so re-read from the database.
RESYNC: Final = _Signal("RESYNC")
# The server is draining: end the stream so the client reconnects elsewhere.
SHUTDOWN: Final = _Signal("SHUTDOWN")
# Nothing arrived for the subscription's heartbeat interval: repeat the latest state.
HEARTBEAT: Final = _Signal("HEARTBEAT")

InboxItem = JobEvent | _Signal
# What inboxes are filed under: a job's id, or a tenant's name.
_Key = TypeVar("_Key", uuid.UUID, str)

# The supervised task that holds the LISTEN connection (and the name of its fault file).
LISTENER_TASK = "job-event-listener"
# How the LISTEN connection shows in pg_stat_activity.
LISTENER_APPLICATION_NAME = "jobs-event-listener"
# Events a tenant subscription holds unread. A reader that falls further behind gets RESYNC
# instead of more (it re-reads them from the database, a page at a time), so a slow client
# of a busy tenant costs the server a bounded amount of memory.
TENANT_INBOX_CAPACITY = 1000

_RECONNECT_FIRST_DELAY_SECONDS = 0.2
_RECONNECT_MAX_DELAY_SECONDS = 5.0
# How often a quiet LISTEN connection is probed, so a silent network loss is noticed.
_PROBE_INTERVAL_SECONDS = 5.0
_CLOSE_TIMEOUT_SECONDS = 2.0
# What a refused, lost or half-dead LISTEN connection raises: reconnect. Anything else is a
# bug and ends the task, and with it the process.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TransientError,
)
# Heartbeats come due within this fraction of the interval late. Many ticks, each with few
# streams due, keep heartbeats flowing at an even rate rather than in bursts.
_HEARTBEAT_TICKS_PER_INTERVAL = 64

# A tick wakes this many streams, then lets the loop run them and read the LISTEN socket
# before the next ones. An event's delivery crosses a few loop iterations (notification,
# reader, write), and every one of them may also run one step's heartbeats: so a step is a
# handful of streams, and an event waits behind a few heartbeats, never behind a crowd.
_HEARTBEATS_PER_STEP = 8
# row_to_json writes the job_events columns in table order, job_id first, without spaces.
_JOB_ID_KEY = '"job_id":"'
_UUID_CHARS = 36
_TENANT_KEY = '"tenant":"'


def _parse_notification(payload: str) -> JobEvent:
    row: dict[str, Any] = json.loads(payload)
    row["job_id"] = uuid.UUID(row["job_id"])
    row["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    row["job_created_at"] = datetime.fromisoformat(row["job_created_at"])
    return event_from_row(row)


def _peek_job_id(payload: str) -> uuid.UUID | None:
    """The job id of a notification without parsing all of it (None if it is not where expected).

    Most notifications are for jobs nobody in this process watches; those cost a find, not a
    json.loads. A quote inside a JSON string is escaped, so the key cannot be faked by a value.
    """
    start = payload.find(_JOB_ID_KEY)
    if start < 0:
        return None
    start += len(_JOB_ID_KEY)
    try:
        return uuid.UUID(payload[start : start + _UUID_CHARS])
    except ValueError:
        return None


def _peek_tenant(payload: str) -> str | None:
    """The tenant of a notification without parsing all of it (None if it cannot be told so).

    As with the job id, the key cannot be faked by a value; a name with an escaped character
    is not read here (None: the caller parses the notification).
    """
    start = payload.find(_TENANT_KEY)
    if start < 0:
        return None
    start += len(_TENANT_KEY)
    end = payload.find('"', start)
    if end < 0:
        return None
    tenant = payload[start:end]
    return None if "\\" in tenant else tenant


class LoopClock:
    """What heartbeats are timed by: now() and sleep(), on the event loop's clock.

    The hub's default. A test passes a subclass whose time moves only when the test says, so
    heartbeat timing is checked exactly instead of against a loaded host's scheduling.
    """

    # asyncio's loops read time.monotonic() (BaseEventLoop.time); it is read directly because
    # every event put into an inbox reads the clock, and looking up the running loop first
    # would cost that hot path more than the read itself.
    now = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds` on this clock."""
        await asyncio.sleep(seconds)


class Inbox(asyncio.Queue[InboxItem]):
    """One job's queue for code that waits on it as an asyncio.Queue (the worker's attempts);
    it notes when it last received anything, for heartbeats."""

    def __init__(self, clock: LoopClock, *, tenant: str | None = None) -> None:
        super().__init__()
        self._now = clock.now
        self.quiet_since = self._now()
        self.closed = False
        # Events of another tenant never reach this inbox (None: the service's own, any tenant).
        self.tenant = tenant

    def put_nowait(self, item: InboxItem) -> None:
        """Queue the item; the quiet interval starts again."""
        self.quiet_since = self._now()
        super().put_nowait(item)


class StreamInbox:
    """One open stream's inbox: what Inbox does for one reader, at a fraction of its memory.

    A server holds one per open stream, tens of thousands of them, nearly all empty and
    waiting; an asyncio.Queue carries three deques and an Event for uses a stream never has.
    Items wait in a list (an empty one is a fraction of an empty deque; it never holds more
    than the capacity), and a future exists only while the reader waits.
    """

    __slots__ = (
        "_capacity",
        "_items",
        "_now",
        "_overflowing",
        "_waiter",
        "closed",
        "quiet_since",
        "tenant",
    )

    def __init__(
        self, clock: LoopClock, *, tenant: str | None = None, capacity: int | None = None
    ) -> None:
        self._now = clock.now
        self.quiet_since: float = self._now()
        self.closed = False
        # Events of another tenant never reach this inbox (None: the service's own, any tenant).
        self.tenant = tenant
        # Events held unread at most (None: no limit); see put_nowait.
        self._capacity = capacity
        self._overflowing = False
        self._items: list[InboxItem] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: InboxItem) -> None:
        """Queue the item and wake the reader; the quiet interval starts again.

        An event that finds the inbox full is dropped and RESYNC queued in its place, and so
        are the events after it until the reader takes that RESYNC: everything dropped had
        committed by then, so the re-read it makes covers it.
        """
        self.quiet_since = self._now()
        if self._capacity is not None and isinstance(item, JobEvent):
            if self._overflowing:
                return
            if len(self._items) >= self._capacity:
                self._overflowing = True
                item = RESYNC
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> InboxItem:
        """The next item; asyncio.QueueEmpty if there is none."""
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        if item is RESYNC:
            self._overflowing = False
        return item

    async def get(self) -> InboxItem:
        """The next item, once there is one (a cancelled wait takes nothing)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether no item waits."""
        return not self._items


# What the hub files and the heartbeat clock beats: either kind of inbox.
Subscriber = Inbox | StreamInbox
_InboxT = TypeVar("_InboxT", bound=Subscriber)


class _HeartbeatClock:
    """Puts HEARTBEAT into every inbox that stayed quiet for the interval, from one timer.

    A timer per stream (asyncio.wait_for around each read) costs a Task, a timer handle and
    their garbage per message, and with many streams that garbage reaches the oldest
    generation, whose full collections stop the whole server (BENCHMARKS.md, item 5). Here an
    inbox is filed under the tick its heartbeat falls due; a change only moves its
    quiet_since, and the tick files it again if it turns out not to have been quiet.
    """

    def __init__(self, interval: timedelta, *, clock: LoopClock) -> None:
        self._clock = clock
        self._interval_seconds = interval.total_seconds()
        self._tick_seconds = self._interval_seconds / _HEARTBEAT_TICKS_PER_INTERVAL
        self._due: dict[int, list[Subscriber]] = {}
        self._next_tick = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, inbox: Subscriber) -> None:
        """Send this inbox heartbeats until it is closed.

        Streams opened together (a burst of clients, all of them reconnecting after a
        restart) would beat together every interval for as long as they stay open, and
        events would wait behind each burst. The first heartbeat comes at a random point of
        the first interval instead, which spreads them for good: their heartbeats come at an
        even rate through every interval, never all at once (BENCHMARKS.md, item 8).
        """
        inbox.quiet_since -= self._interval_seconds * random.random()  # noqa: S311
        self._file(inbox, inbox.quiet_since + self._interval_seconds)
        if self._task is None or self._task.done():
            self._next_tick = math.floor(self._clock.now() / self._tick_seconds)
            self._task = asyncio.create_task(self._run(), name="watch-heartbeats")

    async def stop(self) -> None:
        """Stop the timer (inboxes still filed get no more heartbeats)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _file(self, inbox: Subscriber, due: float) -> None:
        # Ceiling: the tick that finds it is never earlier than its due time.
        self._due.setdefault(math.ceil(due / self._tick_seconds), []).append(inbox)

    async def _run(self) -> None:
        while self._due:
            await self._clock.sleep(self._tick_seconds)
            now = self._clock.now()
            last = math.floor(now / self._tick_seconds)
            beaten = 0
            for tick in range(self._next_tick, last + 1):
                for inbox in self._due.pop(tick, ()):
                    if beaten == _HEARTBEATS_PER_STEP:
                        beaten = 0
                        await asyncio.sleep(0)
                    beaten += self._beat(inbox, now)
            self._next_tick = last + 1

    def _beat(self, inbox: Subscriber, now: float) -> bool:
        """File the inbox under its next due tick; whether it got a heartbeat now."""
        if inbox.closed:
            return False
        due = inbox.quiet_since + self._interval_seconds
        beat = False
        if due <= now:
            # A reader that has not caught up gets no pile of heartbeats behind its events.
            beat = inbox.empty()
            if beat:
                inbox.put_nowait(HEARTBEAT)
            due = now + self._interval_seconds
        self._file(inbox, due)
        return beat


class JobEventHub:
    """Owns the LISTEN connection (reconnecting as needed) and the inboxes of open streams."""

    def __init__(self, database_url: str, *, clock: LoopClock | None = None) -> None:
        self._dsn = asyncpg_dsn(database_url)
        # The store's rules for a silently lost connection, at both ends (jobcore.database).
        self._server_settings = {
            **server_socket_settings(database_url),
            "application_name": LISTENER_APPLICATION_NAME,
        }
        self._clock = clock or LoopClock()
        self._inboxes: defaultdict[uuid.UUID, set[Subscriber]] = defaultdict(set)
        self._tenant_inboxes: defaultdict[str, set[StreamInbox]] = defaultdict(set)
        self._clocks: dict[timedelta, _HeartbeatClock] = {}
        self._connected = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[Any] | None = None
        self._supervised = False

    @property
    def clock(self) -> LoopClock:
        """What heartbeats are timed by; streams that time heartbeats of their own use it too."""
        return self._clock

    @property
    def connected(self) -> bool:
        """Whether notifications are flowing right now (part of the server's health)."""
        return self._connected.is_set()

    @property
    def watcher_count(self) -> int:
        """How many streams are open."""
        return sum(len(inboxes) for inboxes in self._all_inboxes())

    def _all_inboxes(self) -> Iterator[AbstractSet[Subscriber]]:
        yield from self._inboxes.values()
        yield from self._tenant_inboxes.values()

    async def start(self, *, timeout_seconds: float, supervisor: Supervisor | None = None) -> None:
        """Start listening, as a task of `supervisor` if given; wait up to `timeout_seconds` for
        the first connection."""
        if supervisor is None:
            self._task = asyncio.create_task(self._listen_forever(), name=LISTENER_TASK)
        else:
            self._task = supervisor.start(LISTENER_TASK, self._listen_forever())
            self._supervised = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_seconds)

    async def stop(self) -> None:
        """End every open stream and close the LISTEN connection."""
        self._closing = True
        self._broadcast(SHUTDOWN)
        for clock in self._clocks.values():
            await clock.stop()
        if self._task is not None:
            self._task.cancel()
            # Never raises, so the drain goes on: a failure of the listener is reported by
            # its supervisor, or here when it has none.
            await asyncio.wait({self._task})
            if not self._supervised and not self._task.cancelled():
                error = self._task.exception()
                if error is not None:
                    logger.error("the job event listener had failed", exc_info=error)

    @contextlib.contextmanager
    def subscribe(
        self,
        job_id: uuid.UUID,
        *,
        tenant: str | None = None,
        heartbeat: timedelta | None = None,
    ) -> Iterator[Inbox]:
        """An inbox that receives every event of this job committed from now on.

        With `tenant`, only the events of that tenant's job: a stream never carries another
        tenant's event, whatever id it was opened for.

        With `heartbeat`, HEARTBEAT arrives whenever nothing else did for that long (the
        first one sooner, at a random point of the interval, so streams opened together
        beat apart).
        """
        inbox = Inbox(self._clock, tenant=tenant)
        with self._subscription(self._inboxes, job_id, inbox, heartbeat):
            yield inbox

    @contextlib.contextmanager
    def watch_job(
        self, job_id: uuid.UUID, *, tenant: str, heartbeat: timedelta | None = None
    ) -> Iterator[StreamInbox]:
        """As `subscribe`, in the inbox an open stream holds (a StreamInbox)."""
        inbox = StreamInbox(self._clock, tenant=tenant)
        with self._subscription(self._inboxes, job_id, inbox, heartbeat):
            yield inbox

    @contextlib.contextmanager
    def subscribe_tenant(
        self, tenant: str, *, heartbeat: timedelta | None = None
    ) -> Iterator[StreamInbox]:
        """An inbox that receives every event of this tenant's jobs committed from now on, in
        commit order (positions ascending); heartbeats as for `subscribe`.

        It holds at most TENANT_INBOX_CAPACITY unread events, then RESYNC (see StreamInbox).
        """
        inbox = StreamInbox(self._clock, tenant=tenant, capacity=TENANT_INBOX_CAPACITY)
        with self._subscription(self._tenant_inboxes, tenant, inbox, heartbeat):
            yield inbox

    @contextlib.contextmanager
    def _subscription(
        self,
        registry: defaultdict[_Key, set[_InboxT]],
        key: _Key,
        inbox: _InboxT,
        heartbeat: timedelta | None,
    ) -> Iterator[None]:
        """File the inbox under `key` in `registry`, with heartbeats, until the block ends."""
        if self._closing:
            raise ServiceShuttingDownError("the server is shutting down")
        registry[key].add(inbox)
        if heartbeat is not None:
            clock = self._clocks.get(heartbeat)
            if clock is None:
                clock = self._clocks[heartbeat] = _HeartbeatClock(heartbeat, clock=self._clock)
            clock.add(inbox)
        try:
            yield
        finally:
            inbox.closed = True
            inboxes = registry.get(key)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del registry[key]

    def _on_notification(
        self, _connection: Any, _pid: int, _channel: str, payload: object, /
    ) -> None:
        text = str(payload)
        job_id = _peek_job_id(text)
        if job_id is not None and job_id not in self._inboxes:
            if not self._tenant_inboxes:
                return  # nobody here watches this job
            tenant = _peek_tenant(text)
            if tenant is not None and tenant not in self._tenant_inboxes:
                return  # nor its tenant
        # Parsed once, however many streams receive it.
        try:
            event = _parse_notification(text)
        except (ValueError, KeyError, TypeError):
            logger.exception("ignoring malformed job event notification: %.200s", payload)
            return
        for inbox in self._inboxes.get(event.job_id, ()):
            if inbox.tenant is None or inbox.tenant == event.tenant:
                inbox.put_nowait(event)
        if event.tenant is not None:
            for inbox in self._tenant_inboxes.get(event.tenant, ()):
                inbox.put_nowait(event)

    def _broadcast(self, item: _Signal) -> None:
        for inboxes in self._all_inboxes():
            for inbox in inboxes:
                inbox.put_nowait(item)

    async def _listen_forever(self) -> NoReturn:
        """Hold the LISTEN connection; reconnect with backoff, logging each outage once."""
        backoff = Backoff(
            first_seconds=_RECONNECT_FIRST_DELAY_SECONDS, cap_seconds=_RECONNECT_MAX_DELAY_SECONDS
        )
        episode = TransientEpisode("LISTEN connection for job events")
        while True:
            inject_fault(LISTENER_TASK)
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    timeout=5,
                    connection_class=BoundedConnection,
                    server_settings=self._server_settings,
                )
            except _CONNECTION_ERRORS as error:
                episode.failed(error)
            else:
                try:
                    await self._listen(connection, episode, backoff)
                except _CONNECTION_ERRORS as error:
                    episode.failed(error)
                finally:
                    self._connected.clear()
                    await _close_quietly(connection)
            self._ready.set()  # start() waits no longer: health says NOT_SERVING meanwhile
            await asyncio.sleep(backoff.next_delay())

    async def _listen(
        self, connection: asyncpg.Connection, episode: TransientEpisode, backoff: Backoff
    ) -> None:
        """Deliver notifications until the connection is lost (a connection error then)."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
        await connection.add_listener(JOB_EVENTS_CHANNEL, self._on_notification)
        self._connected.set()
        self._ready.set()
        backoff.reset()
        if not episode.recovered():
            logger.info("listening for job events")
        # Anything committed while we were not listening is read back by each stream.
        self._broadcast(RESYNC)
        await self._wait_until_lost(connection, lost)

    @staticmethod
    async def _wait_until_lost(connection: asyncpg.Connection, lost: asyncio.Event) -> NoReturn:
        """Raise ConnectionError once the connection dies; a periodic no-op query detects a
        silent network loss (and its own failure propagates)."""
        while True:
            inject_fault(LISTENER_TASK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), timeout=_PROBE_INTERVAL_SECONDS)
            if lost.is_set():
                raise ConnectionError("the LISTEN connection was closed")
            await connection.execute("SELECT 1", timeout=_PROBE_INTERVAL_SECONDS)


async def _close_quietly(connection: asyncpg.Connection) -> None:
    """Close a connection that may be half dead; if closing fails, drop it without a goodbye."""
    if connection.is_closed():
        return
    try:
        await connection.close(timeout=_CLOSE_TIMEOUT_SECONDS)
    except _CONNECTION_ERRORS as error:
        logger.info("closing the LISTEN connection failed (%s); dropping it", error)
        connection.terminate()
