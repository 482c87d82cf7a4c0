"""API keys against real PostgreSQL and real servers: KeyStore, KeyRing refreshes,
`python -m jobcore.keys`, and AdminService (a revoked key stops working on another server
process within 5 s)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import ROOT, Stack
from jobcore.database import Database, create_pool
from jobcore.errors import ApiKeyNotFoundError, InvalidJobError, UnauthenticatedError
from jobcore.identity import Scope
from jobcore.keys.material import KEY_PATTERN, key_digest
from jobcore.keys.ring import API_KEYS_TASK, KeyRing
from jobcore.keys.store import KeyStore
from jobcore.supervision import Supervisor
from tests.conftest import second_server
from tests.eventually import eventually

# The promise: a revoked key stops working on every server process within this.
REVOCATION_DEADLINE_SECONDS = 5.0
_UNIQUE = f"t{uuid.uuid4().hex[:8]}"  # this run's tenants, apart from keys of other tests


@pytest.fixture
async def database(isolated_database_url: str) -> AsyncIterator[Database]:
    opened = Database(await create_pool(isolated_database_url, pool_size=2))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def keys(database: Database) -> KeyStore:
    return KeyStore(database)


async def test_create_stores_only_the_digest_and_lists_newest_first(keys: KeyStore) -> None:
    tenant = f"{_UNIQUE}-create"
    first, first_key = await keys.create(
        tenant=tenant, scopes=["jobs.write"], name="ci", expires_at=None
    )
    second, _ = await keys.create(
        tenant=tenant,
        scopes=[Scope.JOBS_READ, Scope.ADMIN],
        name="",
        expires_at=datetime.now(UTC) + timedelta(days=90),
    )

    listed = [
        record for record in await keys.list(include_inactive=False) if record.tenant == tenant
    ]
    stored = {key.record.id: key for key in await keys.all_keys()}

    assert KEY_PATTERN.fullmatch(first_key)
    assert first_key.startswith(first.prefix + "_")
    assert (first.tenant, first.scopes, first.name) == (tenant, frozenset({Scope.JOBS_WRITE}), "ci")
    assert first.expires_at is None
    assert first.revoked_at is None
    assert second.scopes == {Scope.JOBS_READ, Scope.ADMIN}
    assert [record.id for record in listed] == [second.id, first.id]
    assert listed[1] == first
    assert stored[first.id].digest == key_digest(first_key)
    assert stored[first.id].record == first


async def test_create_names_every_invalid_field(keys: KeyStore) -> None:
    with pytest.raises(InvalidJobError) as refused:
        await keys.create(
            tenant="Not A Tenant",
            scopes=["jobs.write", "root"],
            name="x" * 101,
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )

    fields = [violation.field for violation in refused.value.violations]
    assert fields == ["tenant", "scopes", "name", "expires_at"]
    assert "root" in str(refused.value)


async def test_revoke_is_idempotent_and_unknown_ids_are_not_found(keys: KeyStore) -> None:
    record, _ = await keys.create(
        tenant=f"{_UNIQUE}-revoke", scopes=["jobs.read"], name="", expires_at=None
    )

    revoked = await keys.revoke(record.id)
    again = await keys.revoke(record.id)
    active = {key.id for key in await keys.list(include_inactive=False)}
    every = {key.id for key in await keys.list(include_inactive=True)}

    assert revoked.revoked_at is not None
    assert again == revoked  # the first revocation's time stays
    assert record.id not in active
    assert record.id in every
    unknown = uuid.uuid4()
    with pytest.raises(ApiKeyNotFoundError, match=str(unknown)):
        await keys.revoke(unknown)


async def test_an_expired_key_leaves_the_active_list(keys: KeyStore) -> None:
    record, _ = await keys.create(
        tenant=f"{_UNIQUE}-expiry",
        scopes=["jobs.read"],
        name="",
        expires_at=datetime.now(UTC) + timedelta(seconds=1),
    )

    async def active_ids() -> set[uuid.UUID]:
        return {key.id for key in await keys.list(include_inactive=False)}

    await eventually(active_ids, until=lambda ids: record.id not in ids, timeout_seconds=10)
    assert record.id in {key.id for key in await keys.list(include_inactive=True)}


async def test_a_ring_refreshing_in_another_process_sees_a_revocation_in_time(
    keys: KeyStore, isolated_database_url: str
) -> None:
    """Two pools stand for two server processes: one revokes, the other's ring notices."""
    record, key = await keys.create(
        tenant=f"{_UNIQUE}-ring", scopes=["jobs.write"], name="", expires_at=None
    )
    elsewhere = Database(await create_pool(isolated_database_url, pool_size=1))
    supervisor = Supervisor()
    try:
        ring = KeyRing(KeyStore(elsewhere))
        await ring.refresh()
        supervisor.start(API_KEYS_TASK, ring.run(timedelta(seconds=1)))
        assert ring.verify(key) == record.principal

        await keys.revoke(record.id)
        revoked_at = time.monotonic()

        async def refused() -> bool:
            try:
                ring.verify(key)
            except UnauthenticatedError:
                return True
            return False

        await eventually(refused, until=bool, timeout_seconds=REVOCATION_DEADLINE_SECONDS)
        assert time.monotonic() - revoked_at < REVOCATION_DEADLINE_SECONDS
        assert supervisor.failure is None
    finally:
        await supervisor.stop()
        await elsewhere.close()


def _module(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m jobcore.keys ARGS` against `database_url`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "jobcore.keys", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_jobcore_keys_creates_lists_and_revokes(isolated_database_url: str) -> None:
    tenant = f"{_UNIQUE}-module"

    created = _module(
        isolated_database_url,
        "create",
        "--tenant",
        tenant,
        "--scope",
        "admin",
        "--scope",
        "jobs.read",
        "--name",
        "first admin",
        "--expires",
        "90d",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    listed = _module(isolated_database_url, "list", "--json")
    revoked = _module(isolated_database_url, "revoke", made["id"], "--json")
    after = _module(isolated_database_url, "list", "--json")
    every = _module(isolated_database_url, "list", "--all", "--json")

    assert list(made) == [
        "id",
        "key",
        "prefix",
        "tenant",
        "scopes",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
    ]
    assert KEY_PATTERN.fullmatch(made["key"])
    assert made["key"].startswith(made["prefix"] + "_")
    assert (made["tenant"], made["scopes"], made["name"]) == (
        tenant,
        ["admin", "jobs.read"],
        "first admin",
    )
    expires = datetime.fromisoformat(made["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=5)
    assert made["revoked_at"] is None
    assert made["id"] in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert "key" not in json.loads(listed.stdout.splitlines()[0])  # shown only once
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    assert made["id"] not in after.stdout
    assert made["id"] in every.stdout


def test_python_m_jobcore_keys_text_output_and_refusals(isolated_database_url: str) -> None:
    created = _module(
        isolated_database_url, "create", "--tenant", f"{_UNIQUE}-text", "--scope", "jobs.write"
    )
    bad_tenant = _module(isolated_database_url, "create", "--tenant", "A B", "--scope", "admin")
    bad_scope = _module(isolated_database_url, "create", "--tenant", "acme", "--scope", "root")
    bad_expiry = _module(
        isolated_database_url, "create", "--tenant", "acme", "--scope", "admin", "--expires", "x"
    )
    unknown = _module(isolated_database_url, "revoke", str(uuid.uuid4()))
    not_an_id = _module(isolated_database_url, "revoke", "jobs_0123abcd")
    unreachable = _module("postgresql+asyncpg://nobody:nothing@127.0.0.1:1/none", "list")

    assert created.returncode == 0, created.stderr
    [key] = [word for word in created.stdout.split() if KEY_PATTERN.fullmatch(word)]
    assert f"export JOBS_API_KEY={key}" in created.stdout
    assert "only this once" in created.stdout
    assert (bad_tenant.returncode, bad_scope.returncode, bad_expiry.returncode) == (1, 2, 2)
    assert "tenant: must be" in bad_tenant.stderr
    assert "invalid choice: 'root'" in bad_scope.stderr
    assert "neither a lifetime" in bad_expiry.stderr
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
    assert not_an_id.returncode == 1
    assert "key_id: must be the id of an API key" in not_an_id.stderr
    assert unreachable.returncode == 3
    assert "Traceback" not in unreachable.stderr


# --- AdminService on the running stack ------------------------------------------------------


def _as(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def plain_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A channel that presents nothing by itself: each call names its key."""
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        yield channel


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_admin_service_makes_a_key_that_works_at_once_and_revokes_it(
    stack: Stack, plain_channel: grpc.aio.Channel
) -> None:
    admin = pb_grpc.AdminServiceStub(plain_channel)
    jobs = pb_grpc.JobServiceStub(plain_channel)
    tenant = f"{_UNIQUE}-admin"

    created = await admin.CreateApiKey(
        pb.CreateApiKeyRequest(tenant=tenant, scopes=["jobs.write"], name="ci"),
        metadata=_as(stack.api_key),
    )
    key = created.key
    job = await jobs.SubmitJob(
        pb.SubmitJobRequest(data=[1, 2], operation=pb.square_sum), metadata=_as(key)
    )
    listed = await admin.ListApiKeys(pb.ListApiKeysRequest(), metadata=_as(stack.api_key))
    revoked = await admin.RevokeApiKey(
        pb.RevokeApiKeyRequest(key_id=created.api_key.id), metadata=_as(stack.api_key)
    )
    again = await admin.RevokeApiKey(
        pb.RevokeApiKeyRequest(key_id=created.api_key.id), metadata=_as(stack.api_key)
    )

    assert KEY_PATTERN.fullmatch(key)
    assert created.api_key.prefix == key[: len("jobs_") + 8]
    assert (created.api_key.tenant, list(created.api_key.scopes)) == (tenant, ["jobs.write"])
    assert not created.api_key.HasField("expires_at")
    assert job.status == pb.PENDING
    assert created.api_key.id in [api_key.id for api_key in listed.api_keys]
    assert revoked.HasField("revoked_at")
    assert again.revoked_at == revoked.revoked_at
    # The server that revoked the key refuses it at once.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.GetStatus(pb.GetStatusRequest(job_id=job.id), metadata=_as(key))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (refused.value.details() or "")
    assert key not in (refused.value.details() or "")


async def test_admin_service_refusals(stack: Stack, plain_channel: grpc.aio.Channel) -> None:
    admin = pb_grpc.AdminServiceStub(plain_channel)
    writer = await admin.CreateApiKey(
        pb.CreateApiKeyRequest(tenant=f"{_UNIQUE}-writer", scopes=["jobs.write"]),
        metadata=_as(stack.api_key),
    )

    past = pb.CreateApiKeyRequest(tenant="acme", scopes=["admin"])
    past.expires_at.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
    codes = {
        "no key": await _code(admin.ListApiKeys(pb.ListApiKeysRequest())),
        "writer": await _code(admin.ListApiKeys(pb.ListApiKeysRequest(), metadata=_as(writer.key))),
        "bad scope": await _code(
            admin.CreateApiKey(
                pb.CreateApiKeyRequest(tenant="acme", scopes=["root"]),
                metadata=_as(stack.api_key),
            )
        ),
        "past expiry": await _code(admin.CreateApiKey(past, metadata=_as(stack.api_key))),
        "unknown id": await _code(
            admin.RevokeApiKey(
                pb.RevokeApiKeyRequest(key_id=str(uuid.uuid4())), metadata=_as(stack.api_key)
            )
        ),
        "not an id": await _code(
            admin.RevokeApiKey(pb.RevokeApiKeyRequest(key_id="nope"), metadata=_as(stack.api_key))
        ),
    }

    assert codes == {
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "writer": grpc.StatusCode.PERMISSION_DENIED,
        "bad scope": grpc.StatusCode.INVALID_ARGUMENT,
        "past expiry": grpc.StatusCode.INVALID_ARGUMENT,
        "unknown id": grpc.StatusCode.NOT_FOUND,
        "not an id": grpc.StatusCode.INVALID_ARGUMENT,
    }


async def test_a_key_revoked_on_one_server_stops_working_on_another_within_5_s(
    stack: Stack, plain_channel: grpc.aio.Channel
) -> None:
    admin = pb_grpc.AdminServiceStub(plain_channel)
    created = await admin.CreateApiKey(
        pb.CreateApiKeyRequest(tenant=f"{_UNIQUE}-replica", scopes=["jobs.read"]),
        metadata=_as(stack.api_key),
    )
    request = pb.ListJobsRequest(page_size=1)
    with second_server(stack, "keys-replica") as replica:
        async with grpc.aio.insecure_channel(replica.grpc_target) as channel:
            other = pb_grpc.JobServiceStub(channel)

            async def code() -> grpc.StatusCode:
                return await _code(other.ListJobs(request, metadata=_as(created.key)))

            # The replica learns the new key from its next read of the keys.
            await eventually(code, until=lambda status: status == grpc.StatusCode.OK)

            await admin.RevokeApiKey(
                pb.RevokeApiKeyRequest(key_id=created.api_key.id), metadata=_as(stack.api_key)
            )
            revoked_at = time.monotonic()
            await eventually(
                code,
                until=lambda status: status == grpc.StatusCode.UNAUTHENTICATED,
                timeout_seconds=REVOCATION_DEADLINE_SECONDS,
            )
            took = time.monotonic() - revoked_at

    assert took < REVOCATION_DEADLINE_SECONDS


async def _heartbeats_until_the_end(stream: Any) -> None:
    """Read a quiet stream (heartbeats only) until it ends: its status is raised."""
    while True:
        message = await asyncio.wait_for(stream.read(), timeout=REVOCATION_DEADLINE_SECONDS * 2)
        assert isinstance(message, pb.WatchJobsResponse)
        assert message.heartbeat


async def test_a_stream_open_under_a_key_ends_unauthenticated_once_the_key_is_revoked(
    stack: Stack, plain_channel: grpc.aio.Channel
) -> None:
    admin = pb_grpc.AdminServiceStub(plain_channel)
    jobs = pb_grpc.JobServiceStub(plain_channel)
    created = await admin.CreateApiKey(
        pb.CreateApiKeyRequest(tenant=f"{_UNIQUE}-stream", scopes=["jobs.read"], name="stream"),
        metadata=_as(stack.api_key),
    )
    stream = jobs.WatchJobs(pb.WatchJobsRequest(), metadata=_as(created.key))
    first = await stream.read()
    assert isinstance(first, pb.WatchJobsResponse)
    assert first.heartbeat

    await admin.RevokeApiKey(
        pb.RevokeApiKeyRequest(key_id=created.api_key.id), metadata=_as(stack.api_key)
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await _heartbeats_until_the_end(stream)

    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked or expired while the stream was open" in (ended.value.details() or "")
    assert time.monotonic() - started < REVOCATION_DEADLINE_SECONDS
