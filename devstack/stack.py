"""The whole service on one machine: what `make run` starts and what the tests run against.

PostgreSQL and Redis are embedded (from wheels) unless DATABASE_URL / REDIS_URL
point elsewhere; then migrations, the development API key (unless AUTH_MODE=none), the
worker(s), the gRPC server, Envoy and optionally Flower, each a supervised child process on
loopback.

Who supervises what: the Stack restarts any of its processes that exits on its own (its
supervisor thread calls ManagedProcess.revive), the job Compose or Kubernetes restart
policies do in production, and every process dies with it (jobcore.parent_death). The
processes it starts restart nothing: a broken server or worker exits non-zero, and
`python -m server` with SERVER_PROCESSES above 1 only runs its processes together and ends
them together, so a failure of one shows here as the server exiting, and it is started again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import secrets
from devstack.processes import (
    ManagedProcess,
    child_env,
    free_port,
    python_module,
    tcp_accepts,
    wait_for,
)
from devstack.secrets import SecretStore
from devstack.services import EmbeddedPostgres, EmbeddedRedis
from jobcore.database import Database, create_pool
from jobcore.errors import UnauthenticatedError
from jobcore.identity import ALL_SCOPES, DEFAULT_TENANT
from jobcore.keys.ring import KeyRing
from jobcore.keys.store import KeyStore, create_key
from jobcore.settings import cpus_available

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "gen" / "envoy" / "jobs.binpb"
# As in the Dockerfiles: threads' freed memory is not kept in many glibc arenas, and
# multi-MB buffers (a big job's request) go back to the system when freed.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
# The name the development API key is listed under (`jobs keys list`).
DEVELOPMENT_KEY_NAME = "make run"

_T = TypeVar("_T")


def default_worker_processes() -> int:
    """How many worker processes `make run` starts: WORKER_PROCESSES, else one per CPU (as
    `python -m worker` would run)."""
    return int(os.environ.get("WORKER_PROCESSES") or 0) or cpus_available()


@dataclass(frozen=True)
class StackPorts:
    """Every port the stack uses; all bound to 127.0.0.1."""

    grpc: int
    http: int
    envoy_admin: int
    flower: int
    postgres: int
    redis: int
    # Prometheus metrics; 0 turns them off. Worker N (from 1) uses worker_metrics + N - 1.
    server_metrics: int = 0
    worker_metrics: int = 0

    @classmethod
    def free(cls, *, metrics: bool = False) -> StackPorts:
        """Ports nothing listens on right now (metrics off unless asked for): a stack of its own."""
        extra = (free_port(), free_port()) if metrics else ()
        return cls(*(free_port() for _ in range(6)), *extra)


@dataclass
class StackConfig:
    """What to start and how."""

    data_dir: Path
    ports: StackPorts
    database_url: str | None = None  # None: embedded PostgreSQL
    # Whom migrations run as with an external DATABASE_URL; None: DATABASE_URL itself.
    database_migration_url: str | None = None
    redis_url: str | None = None  # None: embedded Redis
    env: dict[str, str] = field(default_factory=dict)  # settings for server and worker
    # Worker processes, each supervised on its own (`make run`: WORKER_PROCESSES, else one per CPU).
    workers: int = 1
    flower: bool = True
    # The CA that signed the certificates named in `env` (GATEWAY_TLS_CERT_FILE,
    # GRPC_TLS_CERT_FILE), for the stack's own readiness probes over TLS.
    ca_file: Path | None = None


class Stack:
    """Starts the service's processes in dependency order and stops them in reverse."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        data = config.data_dir.resolve()
        self.log_dir = data / "logs"
        ports = config.ports
        # Generated passwords of the embedded services and Flower (0700 folder, 0600 files).
        self.secrets = SecretStore(data / "secrets")
        self.postgres = (
            EmbeddedPostgres(
                data / "postgres",
                port=ports.postgres,
                log_dir=self.log_dir,
                secret_store=self.secrets,
            )
            if config.database_url is None
            else None
        )
        self.redis = (
            EmbeddedRedis(
                data / "redis", port=ports.redis, log_dir=self.log_dir, secret_store=self.secrets
            )
            if config.redis_url is None
            else None
        )
        # The application's logins: PostgreSQL's jobs_app role and Redis's jobs_app user.
        self.database_url = config.database_url or (self.postgres.url if self.postgres else "")
        self.redis_url = config.redis_url or (self.redis.url if self.redis else "")
        # Admin logins, for migrations and for tests that reconfigure Redis; never in self.env.
        self.redis_admin_url = self.redis.admin_url if self.redis else self.redis_url
        # Flower reads FLOWER_BASIC_AUTH from its environment, never from its command line.
        self.flower_basic_auth = config.env.get("FLOWER_BASIC_AUTH") or (
            f"admin:{self.secrets.get(secrets.FLOWER)}"
        )
        self.env = child_env(
            {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "GRPC_HOST": "127.0.0.1",
                "GRPC_PORT": str(ports.grpc),
                # Every server process signs and checks ListJobs page tokens with the same secret.
                "PAGE_TOKEN_SECRET": os.environ.get("PAGE_TOKEN_SECRET")
                or self.secrets.get(secrets.PAGE_TOKENS),
                **MALLOC_ENV,
                **config.env,
            }
        )
        # Only the migration gets the migration role's URL (see migrate()).
        self.env.pop("DATABASE_MIGRATION_URL", None)
        # AUTH_MODE=none (from the environment or `config.env`): calls need no credentials.
        self.auth_required = self.env.get("AUTH_MODE", "required") != "none"
        # The development API key (tenant `default`, every scope) once start() has run; empty
        # with AUTH_MODE=none. Tests and `make run`'s banner use it.
        self.api_key = ""
        self.workers = [
            ManagedProcess(
                f"worker-{index}",
                python_module("worker", f"--hostname=worker{index}@%h"),
                log_path=self.log_dir / f"worker-{index}.log",
                # One process each: the Stack runs and restarts them itself.
                env=_with_metrics(
                    self.env | {"WORKER_PROCESSES": "1"},
                    ports.worker_metrics and ports.worker_metrics + index - 1,
                ),
                cwd=ROOT,
            )
            for index in range(1, config.workers + 1)
        ]
        self.server = ManagedProcess(
            "server",
            python_module("server"),
            log_path=self.log_dir / "server.log",
            env=_with_metrics(self.env, ports.server_metrics),
            cwd=ROOT,
        )
        self.envoy_config = data / "envoy.yaml"
        self.envoy = ManagedProcess(
            "envoy",
            [
                str(Path(_venv_bin()) / "envoy"),
                "-c",
                str(self.envoy_config),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ],
            log_path=self.log_dir / "envoy.log",
            cwd=ROOT,
        )
        self.flower = ManagedProcess(
            "flower",
            [
                str(Path(_venv_bin()) / "celery"),
                "-A",
                "worker.app",
                "flower",
                "--address=127.0.0.1",
                f"--port={ports.flower}",
            ],
            log_path=self.log_dir / "flower.log",
            env={**self.env, "FLOWER_BASIC_AUTH": self.flower_basic_auth},
            cwd=ROOT,
        )
        self._started: list[ManagedProcess] = []
        self._supervising = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    @property
    def grpc_target(self) -> str:
        """Where to reach the gRPC server directly."""
        return f"127.0.0.1:{self.config.ports.grpc}"

    @property
    def gateway_target(self) -> str:
        """Where to reach Envoy (REST and gRPC)."""
        return f"127.0.0.1:{self.config.ports.http}"

    @property
    def http_base(self) -> str:
        """Base URL of the REST API (https when the gateway has a certificate)."""
        scheme = "https" if self.env.get("GATEWAY_TLS_CERT_FILE") else "http"
        return f"{scheme}://{self.gateway_target}"

    @property
    def authorization(self) -> str:
        """The `authorization` value that presents the development key ("" without one)."""
        return f"Bearer {self.api_key}" if self.api_key else ""

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata that presents the development key (none with AUTH_MODE=none)."""
        return (("authorization", self.authorization),) if self.api_key else ()

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers that present the development key (none with AUTH_MODE=none)."""
        return {"authorization": self.authorization} if self.api_key else {}

    def _launch(self, process: ManagedProcess) -> None:
        process.start()
        if process not in self._started:
            self._started.append(process)

    def _ensure_alive(self, process: ManagedProcess) -> bool:
        """True while `process` runs; an error with its log tail once it has exited."""
        if not process.is_running():
            raise RuntimeError(
                f"{process.name} exited with status {process.exit_code()}; "
                f"last lines of {process.log_path}:\n{process.log_tail()}"
            )
        return True

    def start(self) -> None:
        """Start everything, wait until the REST gateway reports healthy, then supervise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._supervising.set()
        self._supervisor.start()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _supervise(self) -> None:
        """Restart any process that exits on its own (a crash, an unrecoverable broker error)."""
        while self._supervising.is_set():
            for process in list(self._started):
                if self._supervising.is_set() and process.revive():
                    logger.warning("restarted %s (log: %s)", process.name, process.log_path)
            time.sleep(0.5)

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Logs carry job data and connection details: for devstack's user only.
        self.log_dir.chmod(0o700)
        if self.postgres is not None:
            self.postgres.start()
            self._started.append(self.postgres.process)
        if self.redis is not None:
            self.redis.start()
            self._started.append(self.redis.process)
        self.migrate()
        # Before the server starts, so that its first read of the keys finds this one.
        self.api_key = self.development_api_key() if self.auth_required else ""
        for worker in self.workers:
            self._launch(worker)
        self.start_server()
        # The gateway's settings (TLS, limits, origins, hosts) come from the same environment.
        subprocess.run(
            python_module(
                "gateway",
                f"--out={self.envoy_config}",
                f"--listen-port={self.config.ports.http}",
                f"--admin-port={self.config.ports.envoy_admin}",
                f"--upstream=127.0.0.1:{self.config.ports.grpc}",
                f"--descriptor={DESCRIPTOR}",
            ),
            env=self.env,
            cwd=ROOT,
            check=True,
        )
        self.start_envoy()
        for worker in self.workers:
            self._ensure_alive(worker)
        if self.config.flower:
            self._launch(self.flower)
            wait_for(
                lambda: (
                    self._ensure_alive(self.flower)
                    and tcp_accepts("127.0.0.1", self.config.ports.flower)
                ),
                timeout_seconds=60,
                what=f"Flower (log: {self.flower.log_path})",
            )

    def start_server(self) -> None:
        """(Re)start the gRPC server and wait until it reports SERVING."""
        self._launch(self.server)
        wait_for(
            lambda: self._ensure_alive(self.server) and self.server_serving(),
            timeout_seconds=60,
            what=f"the gRPC server to report SERVING (log: {self.server.log_path})",
        )

    def start_envoy(self) -> None:
        """(Re)start Envoy and wait until it answers /health with 200."""
        self._launch(self.envoy)
        wait_for(
            lambda: self._ensure_alive(self.envoy) and self.gateway_healthy(),
            timeout_seconds=60,
            what=f"Envoy to report /health 200 (log: {self.envoy.log_path})",
        )

    @property
    def migration_database_url(self) -> str:
        """Whom migrations run as: the embedded superuser, or the configured migration URL."""
        if self.postgres is not None:
            return self.postgres.migration_url
        return self.config.database_migration_url or self.database_url

    def migrate(self) -> None:
        """Apply Alembic migrations as the schema's owner; the application role gets its rights."""
        subprocess.run(
            python_module("jobcore.migrate"),
            env={**self.env, "DATABASE_MIGRATION_URL": self.migration_database_url},
            cwd=ROOT,
            check=True,
        )

    def development_api_key(self) -> str:
        """The stored development key while the database still knows it; else a new one, stored.

        A key that no longer verifies (the database was reset, or someone revoked the key) is
        replaced, so `make run` always prints a key that works.
        """
        stored = self.secrets.read(secrets.API_KEY)
        if stored is not None and _in_own_loop(_key_works(self.database_url, stored)):
            return stored
        _, key = _in_own_loop(
            create_key(
                self.database_url,
                tenant=DEFAULT_TENANT,
                scopes=ALL_SCOPES,
                name=DEVELOPMENT_KEY_NAME,
                expires_at=None,
            )
        )
        self.secrets.write(secrets.API_KEY, key)
        return key

    def server_serving(self) -> bool:
        """Whether the gRPC server's standard health service says SERVING."""
        if self.env.get("GRPC_TLS_CERT_FILE"):
            ca = self.config.ca_file.read_bytes() if self.config.ca_file else None
            channel = grpc.secure_channel(self.grpc_target, grpc.ssl_channel_credentials(ca))
        else:
            channel = grpc.insecure_channel(self.grpc_target)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="jobs.v1.JobService"), timeout=2
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def gateway_healthy(self) -> bool:
        """Whether Envoy answers GET /health with 200."""
        context = ssl.create_default_context(cafile=self.config.ca_file)
        with urllib.request.urlopen(  # noqa: S310
            f"{self.http_base}/health", timeout=2, context=context
        ) as response:
            return bool(response.status == 200)

    def stop(self) -> None:
        """Stop in reverse start order: front door first, data stores last."""
        self._supervising.clear()
        if self._supervisor.is_alive():
            self._supervisor.join()
        while self._started:
            process = self._started.pop()
            with contextlib.suppress(Exception):
                if self.postgres is not None and process is self.postgres.process:
                    self.postgres.stop()
                else:
                    process.stop()


async def _key_works(database_url: str, key: str) -> bool:
    """Whether a server on `database_url` would accept `key` (known, not revoked or expired)."""
    database = Database(await create_pool(database_url, pool_size=1))
    try:
        ring = KeyRing(KeyStore(database))
        await ring.refresh()
    finally:
        await database.close()
    try:
        ring.verify(key)
    except UnauthenticatedError:
        return False
    return True


def _in_own_loop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run `coroutine` on an event loop of its own, in a thread: the caller may be in a loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _with_metrics(env: dict[str, str], port: int) -> dict[str, str]:
    """The environment of one process, serving Prometheus metrics on `port` (0: not at all)."""
    return {**env, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(port)}


def _venv_bin() -> str:
    """The folder of this interpreter's scripts (envoy, celery), which may not be on PATH."""
    return str(Path(sys.executable).parent)
