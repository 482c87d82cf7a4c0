"""`make run`: the whole service on this machine until Ctrl-C, with data kept in .data/."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devstack import secrets
from devstack.processes import port_in_use
from devstack.stack import ROOT, Stack, StackConfig, StackPorts, default_worker_processes

logger = logging.getLogger("devstack")

# LOCAL_DATA_DIR moves it (the tests use a temporary folder).
DATA_DIR = Path(os.environ.get("LOCAL_DATA_DIR", ROOT / ".data"))


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _ports() -> StackPorts:
    return StackPorts(
        grpc=_port("GRPC_PORT", 50051),
        http=_port("HTTP_PORT", 8000),
        envoy_admin=_port("ENVOY_ADMIN_PORT", 9901),
        flower=_port("FLOWER_PORT", 5555),
        # Internal ones: fixed defaults so a restart finds the same data, overridable.
        postgres=_port("EMBEDDED_POSTGRES_PORT", 54329),
        redis=_port("EMBEDDED_REDIS_PORT", 63790),
        server_metrics=_port("SERVER_METRICS_PORT", 9101),
        worker_metrics=_port("WORKER_METRICS_PORT", 9102),
    )


def _taken_ports(
    ports: StackPorts, *, workers: int, embedded_pg: bool, embedded_redis: bool
) -> list[str]:
    wanted = {
        "GRPC_PORT (gRPC server)": ports.grpc,
        "HTTP_PORT (Envoy REST/gRPC gateway)": ports.http,
        "ENVOY_ADMIN_PORT (Envoy admin)": ports.envoy_admin,
        "FLOWER_PORT (Flower)": ports.flower,
        "SERVER_METRICS_PORT (server metrics)": ports.server_metrics,
        "WORKER_METRICS_PORT (worker metrics)": ports.worker_metrics,
    }
    # One more port for each further worker process.
    for index in range(1, workers):
        wanted[f"WORKER_METRICS_PORT + {index} (worker {index + 1}'s metrics)"] = (
            ports.worker_metrics + index
        )
    if embedded_pg:
        wanted["EMBEDDED_POSTGRES_PORT (PostgreSQL)"] = ports.postgres
    if embedded_redis:
        wanted["EMBEDDED_REDIS_PORT (Redis)"] = ports.redis
    return [
        f"port {port} for {name} is already in use"
        for name, port in wanted.items()
        if port_in_use("127.0.0.1", port)
    ]


def main() -> int:
    """Start, print where everything is, and stop it all on Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ports = _ports()
    database_url = os.environ.get("DATABASE_URL") or None
    redis_url = os.environ.get("REDIS_URL") or None
    workers = default_worker_processes()
    problems = _taken_ports(
        ports, workers=workers, embedded_pg=database_url is None, embedded_redis=redis_url is None
    )
    if problems:
        for problem in problems:
            logger.error("make run: %s", problem)
        logger.error("Stop what uses it, or choose another port with the variable named above.")
        return 1

    stack = Stack(
        StackConfig(
            data_dir=DATA_DIR,
            ports=ports,
            database_url=database_url,
            database_migration_url=os.environ.get("DATABASE_MIGRATION_URL") or None,
            redis_url=redis_url,
            env={"ENVIRONMENT": os.environ.get("ENVIRONMENT", "development")},
            workers=workers,
        )
    )
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("\n%s received: stopping everything...", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    logger.info("Starting (logs in %s) ...", stack.log_dir)
    try:
        stack.start()
    except Exception as error:
        logger.error("make run: could not start: %s", error)
        return 1
    _print_banner(stack, ports, database_url=database_url, redis_url=redis_url)
    try:
        # The stack restarts any process that exits on its own; we only wait for Ctrl-C.
        stopping.wait()
    finally:
        stack.stop()
        logger.info("All processes stopped.")
    return 0


def _print_banner(
    stack: Stack, ports: StackPorts, *, database_url: str | None, redis_url: str | None
) -> None:
    # No password is printed (terminals and CI logs keep what they show): each login names the
    # file its password is in, and URLs show *** in its place. The development API key is the
    # one exception: callers need it in their environment, and it grants only this laptop's jobs.
    flower_user = stack.flower_basic_auth.split(":", 1)[0]
    flower_password = (
        "FLOWER_BASIC_AUTH"
        if os.environ.get("FLOWER_BASIC_AUTH")
        else str(stack.secrets.path(secrets.FLOWER))
    )
    lines = [
        "",
        "The job service is running:",
        f"  REST + gRPC gateway (Envoy)  http://127.0.0.1:{ports.http}   (GET /health)",
        f"  gRPC server (direct)         127.0.0.1:{ports.grpc}",
        f"  API docs (Swagger UI)        http://127.0.0.1:{ports.http}/docs",
        f"  Flower dashboard             http://127.0.0.1:{ports.flower}",
        f"    user {flower_user!r}, password in {flower_password}",
        f"  Envoy admin (and its stats)  http://127.0.0.1:{ports.envoy_admin}/stats/prometheus",
        f"  Server metrics (Prometheus)  http://127.0.0.1:{ports.server_metrics}/metrics",
        f"  Worker metrics (Prometheus)  http://127.0.0.1:{ports.worker_metrics}/metrics",
        *_more_workers(stack, ports),
        f"  PostgreSQL (application)     {_masked(database_url or stack.database_url)}",
        f"  Redis (application)          {_masked(redis_url or stack.redis_url)}",
        f"  Passwords (0600 files)       {stack.secrets.folder}",
        f"  Data and logs                {Path(stack.log_dir).parent}",
        "",
        *_credentials(stack),
        "",
        *_examples(stack, ports),
        "Press Ctrl-C to stop everything.",
    ]
    logger.info("\n".join(lines))


def _more_workers(stack: Stack, ports: StackPorts) -> list[str]:
    count = len(stack.workers)
    if count < 2:
        return []
    last = ports.worker_metrics + count - 1
    return [f"    {count} worker processes (WORKER_PROCESSES), one port each up to {last}"]


def _credentials(stack: Stack) -> list[str]:
    if not stack.api_key:
        return [
            "WARNING: AUTH_MODE=none: no credentials are checked. Anyone who can reach these ports",
            "may read, submit and cancel every job. Unset AUTH_MODE to require API keys.",
        ]
    kept_in = stack.secrets.path(secrets.API_KEY)
    return [
        "Your development API key: tenant 'default', every scope (admin included).",
        f"The jobs CLI and the examples below read it from JOBS_API_KEY (kept in {kept_in}):",
        f"  export JOBS_API_KEY={stack.api_key}",
    ]


def _examples(stack: Stack, ports: StackPorts) -> list[str]:
    header = '-H "authorization: Bearer $JOBS_API_KEY" ' if stack.api_key else ""
    job = """'{"data": [1, 2, 3], "operation": "square_sum"}'"""
    return [
        "Try:",
        f"  curl {header}http://127.0.0.1:{ports.http}/api/v1/jobs \\",
        f"    -H 'content-type: application/json' -d {job}",
        f"  curl {header}http://127.0.0.1:{ports.http}/api/v1/jobs",
        f"  grpcurl -plaintext {header}\\",
        f"    -d {job} 127.0.0.1:{ports.http} jobs.v1.JobService/SubmitJob",
        f"  grpcurl -plaintext 127.0.0.1:{ports.http} list",
    ]


def _masked(url: str) -> str:
    """`url` with its password replaced by ***."""
    scheme, _, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


if __name__ == "__main__":
    sys.exit(main())
