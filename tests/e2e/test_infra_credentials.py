"""The stack's PostgreSQL and Redis let no one in without a password, and the application's
logins cannot administer them (SECURITY.md)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc
from sqlalchemy.engine import make_url

from devstack import secrets
from devstack.services import PG_HBA
from devstack.stack import Stack
from jobcore.database import asyncpg_dsn
from tests.conftest import own_stack_config, stack_data_dir
from tests.credentials import aio_channel
from tests.eventually import eventually

# What initdb --auth=trust wrote before passwords: every local login as anyone.
_TRUST_HBA = """\
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
"""


def _postgres(stack: Stack) -> tuple[int, Path]:
    assert stack.postgres is not None
    return stack.postgres.port, stack.postgres.socket_dir


def _redis_port(stack: Stack) -> int:
    assert stack.redis is not None
    return stack.redis.port


def _secret_values(stack: Stack) -> list[str]:
    return [path.read_text().strip() for path in stack.secrets.folder.iterdir()]


def _raw_redis(port: int, *command: str) -> bytes:
    """One command over a fresh connection that never authenticates; the raw reply."""
    encoded = f"*{len(command)}\r\n" + "".join(f"${len(part)}\r\n{part}\r\n" for part in command)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(encoded.encode())
        return connection.recv(4096)


@pytest.mark.parametrize("user", ["postgres", "jobs_app"])
@pytest.mark.parametrize("over", ["tcp", "unix socket"])
async def test_postgres_refuses_a_login_without_a_password(
    stack: Stack, user: str, over: str
) -> None:
    port, socket_dir = _postgres(stack)
    host = "127.0.0.1" if over == "tcp" else str(socket_dir)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=host, port=port, user=user, database="jobdb", password="")


@pytest.mark.parametrize("user", ["postgres", "jobs_app"])
async def test_postgres_refuses_a_wrong_password(stack: Stack, user: str) -> None:
    port, _ = _postgres(stack)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1", port=port, user=user, database="jobdb", password="not-it"
        )


def test_the_application_connects_as_its_own_role(stack: Stack) -> None:
    assert make_url(stack.database_url).username == "jobs_app"
    assert make_url(stack.migration_database_url).username == "postgres"
    assert "DATABASE_MIGRATION_URL" not in stack.env


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE ROLE intruder LOGIN SUPERUSER",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "CREATE TABLE intruder (id int)",
        "DROP TABLE jobs",
        "ALTER TABLE jobs ADD COLUMN intruder int",
        "TRUNCATE jobs",
        "DELETE FROM alembic_version",
    ],
)
async def test_the_application_role_cannot_administer_the_database(
    stack: Stack, statement: str
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        assert (
            await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            is False
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(statement)
    finally:
        await connection.close()


async def test_the_application_role_reads_and_writes_its_tables(stack: Stack) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        async with connection.transaction():
            await connection.execute("UPDATE jobs SET updated_at = updated_at WHERE false")
            assert await connection.fetchval("SELECT count(*) FROM job_events") >= 0
    finally:
        await connection.close()


@pytest.mark.parametrize("command", [("PING",), ("CONFIG", "GET", "dir"), ("SET", "k", "v")])
def test_redis_refuses_every_command_before_authentication(
    stack: Stack, command: tuple[str, ...]
) -> None:
    assert _raw_redis(_redis_port(stack), *command).startswith(b"-NOAUTH")


def test_redis_refuses_a_wrong_password(stack: Stack) -> None:
    client = redis.Redis(
        port=_redis_port(stack), username="jobs_app", password="not-it", protocol=2
    )
    with client, pytest.raises(redis.AuthenticationError):
        client.ping()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "GET", "dir"),
        ("CONFIG", "REWRITE"),
        ("MODULE", "LIST"),
        ("DEBUG", "SLEEP", "0"),
        ("SAVE",),
        ("BGSAVE",),
        ("BGREWRITEAOF",),
        ("SHUTDOWN", "NOSAVE"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"),
        ("SLAVEOF", "127.0.0.1", "1"),
        ("MONITOR",),
    ],
)
def test_the_application_redis_user_cannot_run_dangerous_commands(
    stack: Stack, command: tuple[str, ...]
) -> None:
    with redis.Redis.from_url(stack.redis_url) as client:
        assert client.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)


def test_redis_listens_on_loopback_only(stack: Stack) -> None:
    assert stack.redis is not None
    pid = stack.redis.process.pid
    assert pid is not None
    listening = {
        connection.laddr.ip
        for connection in psutil.Process(pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}


@pytest.mark.skipif(os.geteuid() != 0, reason="only a stack started as root could run them as root")
def test_redis_and_postgres_do_not_run_as_root(stack: Stack) -> None:
    assert stack.redis is not None
    assert stack.postgres is not None
    for process in (stack.redis.process, stack.postgres.process):
        assert process.pid is not None
        assert psutil.Process(process.pid).uids().effective != 0, process.name


def test_no_stack_process_has_a_password_on_its_command_line(stack: Stack) -> None:
    values = _secret_values(stack)
    assert len(values) >= 4
    seen = 0
    for process in _stack_processes(stack):
        with_children = [process, *process.children(recursive=True)]
        for each in with_children:
            command_line = " ".join(each.cmdline())
            seen += 1
            assert not [value for value in values if value in command_line], each.name()
    assert seen >= 5


def _stack_processes(stack: Stack) -> Iterator[psutil.Process]:
    managed = [*stack.workers, stack.server, stack.envoy]
    if stack.postgres is not None:
        managed.append(stack.postgres.process)
    if stack.redis is not None:
        managed.append(stack.redis.process)
    for process in managed:
        if process.pid is not None and process.is_running():
            yield psutil.Process(process.pid)


def test_credential_files_are_for_their_owner_only(stack: Stack) -> None:
    folder = stack.secrets.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = {path.name for path in folder.iterdir()}
    assert {secrets.POSTGRES_SUPERUSER, secrets.POSTGRES_APP, secrets.REDIS_APP} <= names
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stack.redis is not None
    assert stat.S_IMODE(stack.redis.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(stack.redis.config_path.stat().st_mode) == 0o600
    assert stack.postgres is not None
    assert stat.S_IMODE(stack.postgres.data_dir.stat().st_mode) == 0o700


async def test_data_from_before_passwords_is_upgraded_and_keeps_its_jobs() -> None:
    with stack_data_dir("upgrade") as data_dir:
        config = own_stack_config(data_dir, env={"SIMULATED_DELAY_SECONDS": "0"})
        with Stack(config) as first:
            job = await _submit_and_finish(first)
        _as_before_passwords(first)

        with Stack(config) as second:
            assert (data_dir / "postgres" / "pg_hba.conf").read_text() == PG_HBA
            port, _ = _postgres(second)
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    host="127.0.0.1", port=port, user="postgres", database="jobdb", password=""
                )
            async with aio_channel(second.grpc_target, second.api_key) as channel:
                again = await pb_grpc.JobServiceStub(channel).GetResult(
                    pb.GetResultRequest(job_id=job.id)
                )
            assert (again.id, again.status, again.result.result) == (job.id, pb.SUCCESS, 5.0)


async def _submit_and_finish(stack: Stack) -> pb.Job:
    async with aio_channel(stack.grpc_target, stack.api_key) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        job = await stub.SubmitJob(pb.SubmitJobRequest(data=[1, 2], operation=pb.square_sum))
        return await eventually(
            lambda: stub.GetResult(pb.GetResultRequest(job_id=job.id)),
            until=lambda result: result.status == pb.SUCCESS,
        )


def _as_before_passwords(stack: Stack) -> None:
    """What a data folder of a run before passwords looks like: trust, no secrets, root's Redis."""
    assert stack.postgres is not None
    hba = stack.postgres.data_dir / "pg_hba.conf"
    hba.write_text(_TRUST_HBA)
    for path in stack.secrets.folder.iterdir():
        path.unlink()
    stack.secrets.folder.rmdir()
    assert stack.redis is not None
    stack.redis.config_path.unlink()
    stack.redis.data_dir.chmod(0o755)
