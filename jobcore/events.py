"""Job events as they commit: one LISTEN connection per process, fanned out to in-memory inboxes.

The server feeds WatchJob streams from it (a thousand watchers cost one
PostgreSQL subscription); the worker learns from it that a running job was
cancelled. Events arrive at least once and in commit order per job; after a
reconnect every inbox gets RESYNC and re-reads what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

import asyncpg

from jobcore.errors import ServiceShuttingDownError
from jobcore.models import JobEvent
from jobcore.schema import JOB_EVENTS_CHANNEL
from jobcore.store import asyncpg_dsn, event_from_row

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

InboxItem = JobEvent | _Signal

_RECONNECT_FIRST_DELAY_SECONDS = 0.2
_RECONNECT_MAX_DELAY_SECONDS = 5.0


def _parse_notification(payload: str) -> JobEvent:
    row: dict[str, Any] = json.loads(payload)
    row["job_id"] = uuid.UUID(row["job_id"])
    row["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    return event_from_row(row)


class JobEventHub:
    """Owns the LISTEN connection (reconnecting as needed) and the inboxes of open streams."""

    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._inboxes: defaultdict[uuid.UUID, set[asyncio.Queue[InboxItem]]] = defaultdict(set)
        self._connected = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether notifications are flowing right now (part of the server's health)."""
        return self._connected.is_set()

    @property
    def watcher_count(self) -> int:
        """How many streams are open."""
        return sum(len(inboxes) for inboxes in self._inboxes.values())

    async def start(self, *, timeout_seconds: float) -> None:
        """Start listening; wait up to `timeout_seconds` for the first connection."""
        self._task = asyncio.create_task(self._listen_forever(), name="job-event-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_seconds)

    async def stop(self) -> None:
        """End every open stream and close the LISTEN connection."""
        self._closing = True
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.put_nowait(SHUTDOWN)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, job_id: uuid.UUID) -> Iterator[asyncio.Queue[InboxItem]]:
        """An inbox that receives every event of this job committed from now on."""
        if self._closing:
            raise ServiceShuttingDownError("the server is shutting down")
        inbox: asyncio.Queue[InboxItem] = asyncio.Queue()
        self._inboxes[job_id].add(inbox)
        try:
            yield inbox
        finally:
            inboxes = self._inboxes.get(job_id)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del self._inboxes[job_id]

    def _on_notification(
        self, _connection: Any, _pid: int, _channel: str, payload: object, /
    ) -> None:
        try:
            event = _parse_notification(str(payload))
        except (ValueError, KeyError, TypeError):
            logger.exception("ignoring malformed job event notification: %.200s", payload)
            return
        for inbox in self._inboxes.get(event.job_id, ()):
            inbox.put_nowait(event)

    def _broadcast(self, item: _Signal) -> None:
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.put_nowait(item)

    async def _listen_forever(self) -> None:
        delay = _RECONNECT_FIRST_DELAY_SECONDS
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                logger.warning("LISTEN connection failed (%s); retrying in %.1f s", error, delay)
                self._ready.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY_SECONDS)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
            try:
                await connection.add_listener(JOB_EVENTS_CHANNEL, self._on_notification)
                self._connected.set()
                self._ready.set()
                delay = _RECONNECT_FIRST_DELAY_SECONDS
                # Anything committed while we were not listening is read back by each stream.
                self._broadcast(RESYNC)
                logger.info("listening for job events")
                await self._wait_until_lost(connection, lost)
            finally:
                self._connected.clear()
                if not connection.is_closed():
                    await connection.close(timeout=2)
            logger.warning("LISTEN connection lost; reconnecting")

    @staticmethod
    async def _wait_until_lost(connection: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection dies; a periodic no-op query detects silent network loss."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), timeout=5)
            if lost.is_set():
                return
            try:
                await connection.execute("SELECT 1", timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return
