"""WatchJob: the job's state now, then every change as it commits, from the process's event hub.

Each stream subscribes before it reads the job, so a change committed in
between is never missed; sequence numbers drop what it has already sent.
Heartbeats come from the hub's one clock, not a timer per stream: a timer per
read is garbage per message, which many long-lived streams cannot afford
(BENCHMARKS.md, item 5).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import NamedTuple

from jobcore.errors import ServiceShuttingDownError
from jobcore.events import HEARTBEAT, SHUTDOWN, JobEventHub
from jobcore.models import Job, JobEvent
from jobcore.store import JobStore


class WatchUpdate(NamedTuple):
    """One message of a watch: the job's state, whether it is a heartbeat, the change's trace."""

    job: Job
    heartbeat: bool = False
    traceparent: str | None = None


async def follow_job(
    hub: JobEventHub,
    store: JobStore,
    job_id: uuid.UUID,
    *,
    tenant: str,
    after_sequence: int = 0,
    heartbeat: timedelta,
) -> AsyncGenerator[WatchUpdate, None]:
    """Each state of the job in order, ending after the final one.

    With after_sequence=0 the first state is the current one; otherwise only the
    states after that sequence are sent, history first, so a client that lost
    its stream resumes with nothing missed and nothing repeated. While nothing
    changes for `heartbeat`, the latest state is repeated as a heartbeat. Another tenant's
    job is not found, as one that never existed.
    """
    with hub.subscribe(job_id, tenant=tenant, heartbeat=heartbeat) as inbox:
        latest = await store.get(job_id, tenant=tenant)
        if after_sequence <= 0:
            sent = latest.sequence
            yield WatchUpdate(latest)
        else:
            sent = after_sequence
            for event in await store.events_after(job_id, sent, tenant=tenant):
                latest, sent = event.apply_to(latest), event.sequence
                yield WatchUpdate(latest, traceparent=event.traceparent)
        while not latest.status.is_final:
            item = await inbox.get()
            if item is HEARTBEAT:
                yield WatchUpdate(latest, heartbeat=True)
                continue
            if item is SHUTDOWN:
                raise ServiceShuttingDownError("the server is shutting down; watch again to resume")
            if isinstance(item, JobEvent) and item.sequence <= sent:
                continue  # already sent
            if isinstance(item, JobEvent) and item.sequence == sent + 1:
                events = [item]
            else:
                # A gap or a reconnect: the database has the full history.
                events = await store.events_after(job_id, sent, tenant=tenant)
            for event in events:
                latest, sent = event.apply_to(latest), event.sequence
                yield WatchUpdate(latest, traceparent=event.traceparent)
