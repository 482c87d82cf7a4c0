"""Who may do what, on every transport: each RPC x {native gRPC, gRPC through Envoy, gRPC-Web,
REST} x each kind of credential gives the documented code, and no answer ever carries another
tenant's job.

The server under test is a second server of the session stack (same PostgreSQL, Redis and
worker) that also trusts a JWT issuer this module makes. Keys are made through AdminService,
as an operator would.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.conftest import second_server
from tests.credentials import auth_metadata, bearer
from tests.jwt_keys import JwtIssuer

# Each RPC: the scope it needs, and how REST reaches it.
WRITES = {"SubmitJob", "CancelJob"}
READS = {"GetStatus", "GetResult", "WatchJob", "ListJobs"}
RPCS = sorted(WRITES | READS)
# RPCs that name one job: another tenant's is NOT_FOUND.
JOB_RPCS = {"GetStatus", "GetResult", "WatchJob", "CancelJob"}
TRANSPORTS = ["native", "envoy", "grpc-web", "rest"]
# Credentials that prove no identity: UNAUTHENTICATED whatever the RPC.
NO_IDENTITY = [
    "none",
    "malformed",
    "garbage",
    "expired-jwt",
    "wrong-audience-jwt",
    "revoked-key",
]
CREDENTIALS = [
    *NO_IDENTITY,
    "read-only-key",
    "other-tenant",
    "right-key",
    "right-jwt",
]
_HTTP_TO_CODE = {
    200: grpc.StatusCode.OK,
    201: grpc.StatusCode.OK,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
}
_TENANT_A = f"matrix-a-{uuid.uuid4().hex[:6]}"
_TENANT_B = f"matrix-b-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class World:
    """The server under test, the credentials of each case, and tenant A's jobs."""

    server: Stack
    authorization: dict[str, str | None]
    # A job of tenant A, already CANCELLED, so reading, watching and cancelling it end at once.
    job_id: str
    # Every job id tenant A has: none may appear in another tenant's answers.
    tenant_a_jobs: set[str]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> JwtIssuer:
    return JwtIssuer.create(Path(tmp_path_factory.mktemp("matrix-jwks")))


@pytest.fixture(scope="module")
def world(stack: Stack, issuer: JwtIssuer) -> Iterator[World]:
    with second_server(stack, "access-matrix", env=issuer.environment()) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            admin = pb_grpc.AdminServiceStub(channel)
            admin_metadata = auth_metadata(stack.api_key)

            def new_key(tenant: str, *scopes: str) -> pb.CreateApiKeyResponse:
                request = pb.CreateApiKeyRequest(tenant=tenant, scopes=scopes, name="matrix")
                reply: pb.CreateApiKeyResponse = admin.CreateApiKey(
                    request, metadata=admin_metadata, timeout=30
                )
                return reply

            writer_a = new_key(_TENANT_A, "jobs.write")
            reader_a = new_key(_TENANT_A, "jobs.read")
            writer_b = new_key(_TENANT_B, "jobs.write")
            revoked = new_key(_TENANT_A, "jobs.write")
            admin.RevokeApiKey(
                pb.RevokeApiKeyRequest(key_id=revoked.api_key.id),
                metadata=admin_metadata,
                timeout=30,
            )
            jobs = pb_grpc.JobServiceStub(channel)
            writer_metadata = auth_metadata(writer_a.key)
            job = jobs.SubmitJob(
                pb.SubmitJobRequest(data=[1.0, 2.0], operation=pb.square_sum),
                metadata=writer_metadata,
                timeout=30,
            )
            jobs.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=writer_metadata, timeout=30)
        yield World(
            server=server,
            authorization={
                "none": None,
                "malformed": "Basic dXNlcjpwYXNz",
                "garbage": bearer(f"jobs_{uuid.uuid4().hex[:8]}_{'x' * 43}"),
                "expired-jwt": bearer(
                    issuer.token(tenant=_TENANT_A, expires_in=-timedelta(minutes=5))
                ),
                "wrong-audience-jwt": bearer(issuer.token(tenant=_TENANT_A, audience="other")),
                "revoked-key": bearer(revoked.key),
                "read-only-key": bearer(reader_a.key),
                "other-tenant": bearer(writer_b.key),
                "right-key": bearer(writer_a.key),
                "right-jwt": bearer(
                    issuer.token(
                        tenant=_TENANT_A, scopes=["jobs.write"], expires_in=timedelta(hours=1)
                    )
                ),
            },
            job_id=job.id,
            tenant_a_jobs={job.id},
        )


def _expected(rpc: str, credential: str) -> grpc.StatusCode:
    if credential in NO_IDENTITY:
        return grpc.StatusCode.UNAUTHENTICATED
    if credential == "read-only-key" and rpc in WRITES:
        return grpc.StatusCode.PERMISSION_DENIED
    if credential == "other-tenant" and rpc in JOB_RPCS:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.OK


def _request(rpc: str, job_id: str) -> Message:
    requests: dict[str, Message] = {
        "SubmitJob": pb.SubmitJobRequest(data=[3.0], operation=pb.cube_sum),
        "GetStatus": pb.GetStatusRequest(job_id=job_id),
        "GetResult": pb.GetResultRequest(job_id=job_id),
        "WatchJob": pb.WatchJobRequest(job_id=job_id),
        "ListJobs": pb.ListJobsRequest(page_size=1000),
        "CancelJob": pb.CancelJobRequest(job_id=job_id),
    }
    return requests[rpc]


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    # Every byte of every message or body received, to look for other tenants' job ids.
    payload: bytes
    headers: httpx.Headers | None = None


async def _over_grpc(target: str, rpc: str, request: Message, authorization: str | None) -> Answer:
    metadata = () if authorization is None else (("authorization", authorization),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        method: Any = getattr(stub, rpc)
        try:
            if rpc == "WatchJob":
                received = [
                    message async for message in method(request, metadata=metadata, timeout=30)
                ]
            else:
                received = [await method(request, metadata=metadata, timeout=30)]
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), (error.details() or "").encode())
    return Answer(grpc.StatusCode.OK, b"".join(m.SerializeToString() for m in received))


def _web_frames(body: bytes) -> Iterator[tuple[int, bytes]]:
    """gRPC-Web frames: (flags, payload); flag 0x80 is the trailers frame."""
    position = 0
    while position + 5 <= len(body):
        flags, length = struct.unpack(">BI", body[position : position + 5])
        yield flags, body[position + 5 : position + 5 + length]
        position += 5 + length


async def _over_grpc_web(
    base: str, rpc: str, request: Message, authorization: str | None
) -> Answer:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if authorization is not None:
        headers["authorization"] = authorization
    message = request.SerializeToString()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        reply = await client.post(
            f"/jobs.v1.JobService/{rpc}",
            content=struct.pack(">BI", 0, len(message)) + message,
            headers=headers,
        )
    status = reply.headers.get("grpc-status")
    payload = b""
    for flags, frame in _web_frames(reply.content):
        if flags & 0x80:
            for line in frame.decode().split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "grpc-status":
                    status = value.strip()
        else:
            payload += frame
    assert status is not None, f"no grpc-status in {reply.headers!r} / {reply.content!r}"
    return Answer(_code_by_number(int(status)), payload, reply.headers)


def _code_by_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise AssertionError(f"unknown gRPC status {number}")


async def _over_rest(base: str, rpc: str, job_id: str, authorization: str | None) -> Answer:
    headers = {} if authorization is None else {"authorization": authorization}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            "SubmitJob": lambda: client.post(
                "/api/v1/jobs", json={"data": [3.0], "operation": "cube_sum"}
            ),
            "GetStatus": lambda: client.get(f"/api/v1/jobs/{job_id}/status"),
            "GetResult": lambda: client.get(f"/api/v1/jobs/{job_id}/result"),
            "WatchJob": lambda: client.get(f"/api/v1/jobs/{job_id}/watch"),
            "ListJobs": lambda: client.get("/api/v1/jobs", params={"page_size": 1000}),
            "CancelJob": lambda: client.post(f"/api/v1/jobs/{job_id}:cancel", json={}),
        }
        reply = await calls[rpc]()
    assert reply.status_code in _HTTP_TO_CODE, f"{reply.status_code}: {reply.text}"
    return Answer(_HTTP_TO_CODE[reply.status_code], reply.content, reply.headers)


async def _call(
    world: World, transport: str, rpc: str, credential: str, *, job_id: str | None = None
) -> Answer:
    authorization = world.authorization[credential]
    job_id = job_id or world.job_id
    request = _request(rpc, job_id)
    if transport == "native":
        return await _over_grpc(world.server.grpc_target, rpc, request, authorization)
    if transport == "envoy":
        return await _over_grpc(world.server.gateway_target, rpc, request, authorization)
    if transport == "grpc-web":
        return await _over_grpc_web(world.server.http_base, rpc, request, authorization)
    return await _over_rest(world.server.http_base, rpc, job_id, authorization)


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_on_every_transport_answers_each_credential_as_documented(
    world: World, rpc: str, transport: str, credential: str
) -> None:
    answer = await _call(world, transport, rpc, credential)

    assert answer.code == _expected(rpc, credential), answer.payload[:300]
    if answer.code == grpc.StatusCode.UNAUTHENTICATED and transport == "rest":
        assert answer.headers is not None
        assert answer.headers.get("www-authenticate", "").startswith("Bearer")
    if credential == "other-tenant" and rpc in JOB_RPCS:
        # Exactly the answer for an id that never existed (which only repeats the id asked for).
        never = str(uuid.UUID(int=uuid.UUID(world.job_id).int ^ 0xFFFF))
        unknown = await _call(world, transport, rpc, "right-key", job_id=never)
        assert unknown.code == answer.code
        assert unknown.payload.replace(never.encode(), b"ID") == answer.payload.replace(
            world.job_id.encode(), b"ID"
        )
    elif credential == "other-tenant":
        # Nothing of tenant A's reaches tenant B: not its ids, in any encoding.
        for job_id in world.tenant_a_jobs:
            for form in (job_id.encode(), base64.b64encode(uuid.UUID(job_id).bytes)):
                assert form not in answer.payload


async def test_a_listing_never_shows_another_tenants_jobs(world: World) -> None:
    answer = await _over_rest(
        world.server.http_base, "ListJobs", world.job_id, world.authorization["other-tenant"]
    )
    listed = {job["id"] for job in json.loads(answer.payload)["jobs"]}

    own = await _over_rest(
        world.server.http_base, "ListJobs", world.job_id, world.authorization["right-key"]
    )
    assert world.job_id in {job["id"] for job in json.loads(own.payload)["jobs"]}
    assert world.job_id not in listed
