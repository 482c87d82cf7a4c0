"""The processes a run measures: shared PostgreSQL and Redis, one service stack per phase, references.

PostgreSQL and Redis start once; each phase gets a fresh database and Redis database,
and its own server, workers and Envoy (devstack's Stack) with an explicit environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import asyncpg

from benchmarks.machine import CpuPlan, pin_process_tree
from devstack.processes import ManagedProcess, free_port, tcp_accepts, wait_for
from devstack.secrets import SecretStore
from devstack.services import EmbeddedPostgres, EmbeddedRedis
from devstack.stack import ROOT, Stack, StackConfig, StackPorts
from jobcore.celery_app import create_celery_app
from jobcore.database import asyncpg_dsn
from jobcore.settings import Settings

logger = logging.getLogger(__name__)

_WORKER_READY_SECONDS = 60


class Infrastructure:
    """Embedded PostgreSQL and Redis for the whole run; stacks and reference processes on demand."""

    def __init__(self, data_dir: Path, *, plan: CpuPlan) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.plan = plan
        # Credentials as in `make run`: the stacks connect as the application's logins.
        secret_store = SecretStore(data_dir / "secrets")
        self.postgres = EmbeddedPostgres(
            data_dir / "postgres",
            port=free_port(),
            log_dir=self.log_dir,
            secret_store=secret_store,
        )
        self.redis = EmbeddedRedis(
            data_dir / "redis", port=free_port(), log_dir=self.log_dir, secret_store=secret_store
        )
        # Database 0 stays unused; each stack and the Celery references take the next one.
        self._redis_databases = itertools.count(1)

    def __enter__(self) -> Infrastructure:
        try:
            self.postgres.start()
            self.redis.start()
        except BaseException:
            self.close()
            raise
        self._pin([self.postgres.process, self.redis.process])
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop Redis and PostgreSQL (idempotent)."""
        self.redis.stop()
        self.postgres.stop()

    def new_redis_url(self) -> str:
        """A Redis database no other phase uses."""
        return self.redis.url_of(next(self._redis_databases))

    def _pin(self, processes: Sequence[ManagedProcess]) -> None:
        if self.plan.service is None:
            return
        for process in processes:
            if process.pid is not None:
                pin_process_tree(process.pid, self.plan.service)

    def service_pids(self) -> tuple[int, ...]:
        """PostgreSQL's and Redis's root processes (their children count with them)."""
        return tuple(
            process.pid
            for process in (self.postgres.process, self.redis.process)
            if process.pid is not None
        )

    @contextlib.contextmanager
    def stack(self, name: str, *, env: Mapping[str, str], workers: int) -> Iterator[Stack]:
        """The service (server, `workers` workers, Envoy) on a fresh database; stopped on exit,
        and its database dropped (so no later phase shares the machine with its autovacuum)."""
        database = f"bench_{name}"
        stack = Stack(
            StackConfig(
                data_dir=self.data_dir / name,
                ports=StackPorts.free(),
                # Migrated as the superuser, served as the application role.
                database_url=self.postgres.app_url_of(database),
                database_migration_url=self.postgres.create_database(database),
                redis_url=self.new_redis_url(),
                env=dict(env),
                workers=workers,
                flower=False,
            )
        )
        try:
            stack.start()
            try:
                self._pin([stack.server, stack.envoy, *stack.workers])
                if workers:
                    _wait_for_workers(stack, workers)
                yield stack
            finally:
                stack.stop()
        finally:
            asyncio.run(_drop_database(self.postgres.migration_url, database))

    @contextlib.contextmanager
    def own_stack(self, name: str, *, workers: int) -> Iterator[Stack]:
        """The stack `make run` starts with no settings: its own embedded PostgreSQL and Redis,
        `workers` worker processes, Flower; stopped on exit."""
        stack = Stack(
            StackConfig(
                data_dir=self.data_dir / name,
                ports=StackPorts.free(),
                env={"ENVIRONMENT": "development"},
                workers=workers,
            )
        )
        stack.start()
        try:
            embedded = [service.process for service in (stack.postgres, stack.redis) if service]
            self._pin([*embedded, stack.server, stack.envoy, stack.flower, *stack.workers])
            _wait_for_workers(stack, workers)
            yield stack
        finally:
            stack.stop()

    @contextlib.contextmanager
    def process(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Iterator[ManagedProcess]:
        """A reference process (echo server, Celery worker) with its log beside the others."""
        process = ManagedProcess(
            name, argv, log_path=self.log_dir / f"{name}.log", env=env, cwd=ROOT
        )
        process.start()
        try:
            self._pin([process])
            yield process
        finally:
            process.stop()


def wait_for_port(process: ManagedProcess, port: int) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:port."""
    wait_for(
        lambda: process.is_running() and tcp_accepts("127.0.0.1", port),
        timeout_seconds=30,
        what=f"{process.name} on port {port} (log: {process.log_path})",
    )


async def _drop_database(superuser_url: str, database: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(superuser_url), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()


def _wait_for_workers(stack: Stack, count: int) -> None:
    """Wait until every Celery worker answers a ping, so no measurement includes their start-up."""
    app = create_celery_app(Settings(database_url=stack.database_url, redis_url=stack.redis_url))
    try:
        wait_for(
            lambda: len(app.control.ping(timeout=1.0)) >= count,
            timeout_seconds=_WORKER_READY_SECONDS,
            what=f"{count} workers to answer a ping (logs: {stack.log_dir})",
            interval=0.5,
        )
    finally:
        app.close()
