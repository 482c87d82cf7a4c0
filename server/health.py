"""Keeps the standard grpc.health.v1 status in step with PostgreSQL and the broker.

Each probe gets one interval to answer, so a dependency lost in silence (packets dropped,
no reset) turns the server NOT_SERVING within two intervals: Envoy takes an explicit
NOT_SERVING out of rotation at its next check. A probe that timed out drops its
connection (jobcore.database), so the next one does not queue behind a dead socket.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from jobcore.events import JobEventHub
from jobcore.store import JobStore
from jobcore.supervision import run_periodically
from jobcore.wakeup_publisher import WakeupPublisher

logger = logging.getLogger(__name__)

SERVICE_NAME = "jobs.v1.JobService"
# The supervised task (and the name of its fault file).
HEALTH_TASK = "health-monitor"
# Reported for the whole server ("") and for JobService alike.
_SERVICES = ("", SERVICE_NAME)


class HealthMonitor:
    """Checks dependencies every interval and flips SERVING / NOT_SERVING when they change."""

    def __init__(
        self,
        *,
        health: HealthServicer,
        store: JobStore,
        publisher: WakeupPublisher,
        hub: JobEventHub,
        interval_seconds: float,
    ) -> None:
        self._health = health
        self._store = store
        self._publisher = publisher
        self._hub = hub
        self._interval = interval_seconds
        self._serving: bool | None = None

    async def _store_reachable(self) -> bool:
        try:
            await asyncio.wait_for(self._store.ping(), self._interval)
        except Exception as error:  # any failure to answer means not healthy
            logger.warning("PostgreSQL unreachable: %s", error)
            return False
        return True

    async def _broker_reachable(self) -> bool:
        """Asked of the connection pool the server publishes through."""
        try:
            await asyncio.wait_for(self._publisher.ping(), self._interval)
        except Exception as error:  # redis raises many connection errors
            logger.warning("broker unreachable: %s", error)
            return False
        return True

    async def check_once(self) -> bool:
        """Probe every dependency and publish the result; True when all are reachable."""
        store_ok, broker_ok = await asyncio.gather(
            self._store_reachable(),
            self._broker_reachable(),
        )
        serving = store_ok and broker_ok and self._hub.connected
        if serving != self._serving:
            logger.info(
                "health: %s (postgres=%s broker=%s listener=%s)",
                "SERVING" if serving else "NOT_SERVING",
                store_ok,
                broker_ok,
                self._hub.connected,
            )
            self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in _SERVICES:
            await self._health.set(service, status)
        return serving

    async def run(self) -> None:
        """Check forever (a failed probe is NOT_SERVING, not an error); cancelled at shutdown."""
        await run_periodically(
            HEALTH_TASK, self.check_once, interval=timedelta(seconds=self._interval)
        )
