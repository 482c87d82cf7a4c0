"""Builds and runs the gRPC server: JobService, health, reflection, and a graceful SIGTERM drain.

Its background tasks (health monitor, dispatcher, maintenance, the LISTEN connection) are
supervised: if one fails, the server turns NOT_SERVING, drains briefly and exits non-zero, so
that its process manager starts a fresh one instead of it running on with part of its work dead.
This module runs one process; how many run is server/__main__'s concern, restarting them the
process manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.celery_app import create_celery_app
from jobcore.events import JobEventHub
from jobcore.gc_tuning import tune_for_long_running_process
from jobcore.listing import PageTokenSigner
from jobcore.logs import configure_logging
from jobcore.settings import Settings, get_settings
from jobcore.store import JobStore
from jobcore.supervision import (
    FAILED_TASK_EXIT_STATUS,
    Supervisor,
    TaskFailure,
    enable_fault_injection,
)
from jobcore.tracing import configure_tracing
from jobcore.wakeup_publisher import WakeupPublisher
from server.access import Access
from server.dispatcher import DISPATCHER_TASK, Dispatcher
from server.health import HEALTH_TASK, HealthMonitor
from server.interceptor import JobServiceInterceptor
from server.maintenance import MAINTENANCE_TASK, MaintenancePolicy, run_maintenance
from server.servicer import JobServicer

logger = logging.getLogger(__name__)

# After a background task failed, calls in flight get this long at most: the process is
# broken, and a fresh one serves better than a patient drain.
_FAILURE_GRACE_SECONDS = 1.0
_FAILURE_FLUSH_SECONDS = 1.0


def _server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        # Many idle WatchJob streams per process (the defaults stop near 5,000).
        ("grpc.server.max_pending_requests", 100_000),
        ("grpc.server.max_pending_requests_hard_limit", 100_000),
        # A burst of calls waits in gRPC core until this loop picks each up; past this age
        # core drops it as CANCELLED without the application ever seeing it (default 30 s).
        ("grpc.server_max_unrequested_time_in_server", 300),
        # Keep long-lived streams alive through proxies and detect dead clients.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS with the configured certificate chain and key (GRPC_TLS_CERT_FILE / _KEY_FILE)."""
    with (
        open(settings.grpc_tls_key_file, "rb") as key,
        open(settings.grpc_tls_cert_file, "rb") as cert,
    ):
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT, or until a background task fails; then drain: stop
    accepting, finish calls, end streams.

    Returns the process's exit status: 0 after a signal, non-zero after a failure.
    """
    supervisor = Supervisor()
    store = await JobStore.connect(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_unfinished_jobs=settings.max_unfinished_jobs,
    )
    celery_app = create_celery_app(settings)
    hub = JobEventHub(settings.database_url)
    await hub.start(timeout_seconds=5, supervisor=supervisor)

    publisher = WakeupPublisher(celery_app, settings.broker_url)
    dispatcher = Dispatcher(publisher, store)

    access = await Access.start(settings, store=store, supervisor=supervisor)
    server = grpc.aio.server(
        interceptors=[JobServiceInterceptor(access.guard)], options=_server_options(settings)
    )
    _add_job_services(server, settings, access=access, store=store, dispatcher=dispatcher, hub=hub)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection_enabled:
        _add_reflection(server)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    address = _add_port(server, settings)
    await server.start()

    monitor = HealthMonitor(
        health=health,
        store=store,
        publisher=publisher,
        hub=hub,
        interval_seconds=settings.health_check_interval_seconds,
    )
    await monitor.check_once()
    supervisor.start(HEALTH_TASK, monitor.run())
    supervisor.start(DISPATCHER_TASK, dispatcher.run())
    supervisor.start(
        MAINTENANCE_TASK,
        run_maintenance(
            store,
            dispatcher,
            MaintenancePolicy(
                interval=timedelta(seconds=settings.maintenance_interval_seconds),
                redispatch_after=timedelta(seconds=settings.redispatch_after_seconds),
                max_attempts=settings.max_attempts,
                retention=timedelta(days=settings.job_retention_days),
            ),
        ),
    )
    logger.info("gRPC server listening on %s", address)
    if ready is not None:
        ready.set()

    failure = await _until_signal_or_failure(supervisor)
    grace, flush = settings.shutdown_grace_seconds, 5.0
    if failure is None:
        logger.info("draining: health NOT_SERVING, ending watch streams, finishing calls")
    else:
        grace, flush = min(grace, _FAILURE_GRACE_SECONDS), _FAILURE_FLUSH_SECONDS
        logger.critical(
            "background task %s failed: health NOT_SERVING, draining for %g s, then exiting "
            "with status %d to be restarted",
            failure.name,
            grace,
            FAILED_TASK_EXIT_STATUS,
        )
    # First, so load balancers and clients move away while the rest happens.
    await health.enter_graceful_shutdown()
    await hub.stop()
    await server.stop(grace)
    # Jobs accepted during the drain still get their wake-up (else maintenance sends it),
    # those whose callers hung up before they were stored included.
    await store.finish_writes(timeout_seconds=flush)
    if supervisor.is_running(DISPATCHER_TASK):
        await dispatcher.flush(timeout_seconds=flush)
    await supervisor.stop()
    await publisher.close()
    await access.close()
    await store.close()
    # A task that failed during a signalled drain fails the process too.
    if supervisor.failure is not None:
        logger.critical("stopped after the failure of %s", supervisor.failure.name)
        return FAILED_TASK_EXIT_STATUS
    logger.info("stopped")
    return 0


def _add_job_services(
    server: grpc.aio.Server,
    settings: Settings,
    *,
    access: Access,
    store: JobStore,
    dispatcher: Dispatcher,
    hub: JobEventHub,
) -> None:
    """JobService, and AdminService where callers have credentials."""
    servicer = JobServicer(
        store=store,
        dispatcher=dispatcher,
        hub=hub,
        max_job_numbers=settings.max_job_numbers,
        page_tokens=_page_tokens(settings),
        watch_heartbeat=timedelta(seconds=settings.watch_heartbeat_seconds),
        job_retention=timedelta(days=settings.job_retention_days),
    )
    pb_grpc.add_JobServiceServicer_to_server(servicer, server)
    if access.admin is not None:
        pb_grpc.add_AdminServiceServicer_to_server(access.admin, server)


def _add_port(server: grpc.aio.Server, settings: Settings) -> str:
    """Listen on GRPC_HOST:GRPC_PORT, with TLS when configured; the address."""
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.grpc_tls_cert_file:
        server.add_secure_port(address, _server_credentials(settings))
    else:
        server.add_insecure_port(address)
    return address


def _add_reflection(server: grpc.aio.Server) -> None:
    """Reflection for grpcurl list/describe: our services, health and reflection itself."""
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["JobService"].full_name,
            pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )


def _page_tokens(settings: Settings) -> PageTokenSigner:
    """The signer of ListJobs page tokens: PAGE_TOKEN_SECRET, or a random one (development)."""
    if settings.page_token_secret:
        return PageTokenSigner(settings.page_token_secret.encode())
    logger.warning(
        "PAGE_TOKEN_SECRET is not set: page tokens work only on this process until it restarts"
    )
    return PageTokenSigner(secrets.token_bytes(32))


async def _until_signal_or_failure(supervisor: Supervisor) -> TaskFailure | None:
    """Wait for SIGTERM/SIGINT (None) or the first failure of a supervised task."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    signalled = asyncio.create_task(stop.wait(), name="wait-for-signal")
    failed = asyncio.create_task(supervisor.wait_for_failure(), name="wait-for-failure")
    await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (signalled, failed):
        waiter.cancel()
    await _quietly(asyncio.gather(signalled, failed, return_exceptions=True))
    return supervisor.failure


def run_server_process(index: int = 0) -> None:
    """Run one server process until SIGTERM (or exit non-zero when a background task fails).

    Of SERVER_PROCESSES processes (server/__main__), the index-th serves metrics on
    METRICS_PORT + index.
    """
    settings = get_settings()
    if index and settings.metrics_port:
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    configure_logging(settings.log_level)
    # Before serving: a production server with the test hook set refuses to start.
    enable_fault_injection(settings, process="server")
    configure_tracing("jobs-server")
    tune_for_long_running_process()
    status = asyncio.run(serve(settings))
    if status:
        # Also the exit status of a process of the SERVER_PROCESSES supervisor.
        sys.exit(status)


async def _quietly(awaitable: Awaitable[object]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await awaitable
