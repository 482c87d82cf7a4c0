"""TLS on both hops: clients -> Envoy (REST, gRPC, gRPC-Web, the CLI) and Envoy -> gRPC server.

A stack of its own, with a throwaway CA that signs the gateway's and the server's certificates:
every client trusts that CA only, Envoy checks the server's certificate against it, and Envoy's
active gRPC health checks go over that TLS hop too (/health is 200 only if they succeed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import ROOT, Stack
from tests.conftest import own_stack_config, stack_data_dir
from tests.credentials import aio_channel
from tests.tls import ThrowawayCa

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
CLIENT = ROOT / "clients" / "typescript"
# 127.0.0.1 and localhost: the names clients and Envoy use for both hops.
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1",)


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[tuple[Stack, ThrowawayCa]]:
    """The service with TLS at Envoy and at the gRPC server, on free ports."""
    with stack_data_dir("tls") as data_dir:
        ca = ThrowawayCa.create(data_dir / "tls")
        gateway = ca.issue(
            data_dir / "tls", "gateway", dns_names=LOCAL_NAMES, addresses=LOCAL_ADDRESSES
        )
        server = ca.issue(
            data_dir / "tls", "server", dns_names=LOCAL_NAMES, addresses=LOCAL_ADDRESSES
        )
        config = own_stack_config(
            data_dir,
            env={
                "SIMULATED_DELAY_SECONDS": "0.1",
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
                "GRPC_TLS_CERT_FILE": str(server.cert_file),
                "GRPC_TLS_KEY_FILE": str(server.key_file),
                "GATEWAY_TLS_CERT_FILE": str(gateway.cert_file),
                "GATEWAY_TLS_KEY_FILE": str(gateway.key_file),
                "GATEWAY_UPSTREAM_TLS_CA_FILE": str(ca.ca_file),
            },
            ca_file=ca.ca_file,
        )
        with Stack(config) as stack:
            yield stack, ca


@pytest.fixture
def stack(tls_stack: tuple[Stack, ThrowawayCa]) -> Stack:
    return tls_stack[0]


@pytest.fixture
def ca_file(tls_stack: tuple[Stack, ThrowawayCa]) -> Path:
    return tls_stack[1].ca_file


def _submit_body() -> dict[str, object]:
    return {"data": [1, 2, 3], "operation": "square_sum"}


def test_rest_over_tls_submits_and_reads_a_job(stack: Stack, ca_file: Path) -> None:
    assert stack.http_base.startswith("https://")
    with httpx.Client(
        base_url=stack.http_base,
        headers=stack.auth_headers(),
        verify=ssl.create_default_context(cafile=ca_file),
    ) as http:
        # 200 only while Envoy's gRPC health checks of the server succeed over upstream TLS.
        assert http.get("/health").json() == {"status": "SERVING"}
        created = http.post("/api/v1/jobs", json=_submit_body())
        assert created.status_code == 201, created.text
        status = http.get(f"/api/v1/jobs/{created.json()['id']}/status")

    assert status.status_code == 200
    assert status.json()["id"] == created.json()["id"]


@pytest.mark.parametrize(
    ("offered", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]
)
def test_the_gateway_negotiates_http2_and_http1_by_alpn(
    stack: Stack, ca_file: Path, offered: list[str], chosen: str
) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(offered)
    with (
        socket.create_connection(("127.0.0.1", stack.config.ports.http), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == chosen


def test_plaintext_to_the_tls_port_fails(stack: Stack) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{stack.gateway_target}/health", timeout=5)


def test_a_client_that_does_not_trust_the_ca_is_refused(stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{stack.http_base}/health", timeout=5)


@pytest.fixture
def ca_pem(ca_file: Path) -> bytes:
    """The CA certificate, read before the test's event loop runs."""
    return ca_file.read_bytes()


async def test_grpc_over_tls_through_the_gateway_and_to_the_server(
    stack: Stack, ca_pem: bytes
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    for target in (stack.gateway_target, stack.grpc_target):
        async with aio_channel(target, stack.api_key, credentials=credentials) as channel:
            jobs = pb_grpc.JobServiceStub(channel)
            job = await jobs.SubmitJob(
                pb.SubmitJobRequest(data=[2, 3], operation=pb.square_sum), timeout=10
            )
            updates = [
                update
                async for update in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=30)
            ]
        assert updates[-1].job.status == pb.SUCCESS, target
        assert updates[-1].job.result.result == 13.0, target


async def test_the_grpc_server_refuses_plaintext(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.JobServiceStub(channel).GetStatus(
                pb.GetStatusRequest(job_id="019a0000-0000-7000-8000-000000000000"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpcurl_with_the_ca_calls_through_the_gateway(stack: Stack, ca_file: Path) -> None:
    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GRPCURL, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # Reflection also goes through Envoy and its TLS hop to the server.
    submitted = grpcurl(
        "-cacert",
        str(ca_file),
        "-H",
        f"authorization: {stack.authorization}",
        "-d",
        json.dumps(_submit_body()),
        stack.gateway_target,
        "jobs.v1.JobService/SubmitJob",
    )
    untrusted = grpcurl(stack.gateway_target, "list")
    plaintext = grpcurl("-plaintext", stack.gateway_target, "list")

    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["status"] == "PENDING"
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr
    assert plaintext.returncode != 0


def test_grpc_web_over_tls(stack: Stack, ca_file: Path) -> None:
    payload = pb.SubmitJobRequest(data=[4], operation=pb.square_sum).SerializeToString()
    with httpx.Client(verify=ssl.create_default_context(cafile=ca_file)) as http:
        response = http.post(
            f"{stack.http_base}/jobs.v1.JobService/SubmitJob",
            content=b"\x00" + struct.pack(">I", len(payload)) + payload,
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                **stack.auth_headers(),
            },
        )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web+proto"
    body = response.content
    # The first frame is the message (flag 0), the last one the trailers (flag 0x80).
    assert body[0] == 0
    length = struct.unpack(">I", body[1:5])[0]
    job = pb.Job.FromString(body[5 : 5 + length])
    assert job.operation == pb.square_sum
    trailers = body[5 + length :]
    assert trailers[0] == 0x80
    assert b"grpc-status:0" in trailers[5:].replace(b" ", b"")


def test_the_cli_takes_a_ca_file(stack: Stack, ca_file: Path) -> None:
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "--target", stack.gateway_target, *args],
            cwd=ROOT,
            env={**os.environ, "JOBS_CA_FILE": "", "JOBS_API_KEY": stack.api_key, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with_option = cli("--cacert", str(ca_file), "submit", "square_sum", "1", "2", "--json")
    from_environment = cli(
        "status", "--json", json.loads(with_option.stdout)["id"], JOBS_CA_FILE=str(ca_file)
    )
    plaintext = cli("submit", "square_sum", "1", "--json")

    assert with_option.returncode == 0, with_option.stderr
    assert json.loads(with_option.stdout)["operation"] == "square_sum"
    assert from_environment.returncode == 0, from_environment.stderr
    # A plaintext HTTP/2 client to a TLS port cannot connect: "server unavailable".
    assert plaintext.returncode == 3, plaintext.stderr


@pytest.mark.timeout(300)
def test_the_typescript_client_takes_a_ca(stack: Stack, ca_file: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the TypeScript client needs Node.js 20+")
    if not (CLIENT / "node_modules").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert installed.returncode == 0, installed.stderr
    completed = subprocess.run(
        [npm, "test"],
        cwd=CLIENT,
        env={
            **os.environ,
            "JOBS_GATEWAY_TARGET": stack.gateway_target,
            "JOBS_CA_FILE": str(ca_file),
            "JOBS_API_KEY": stack.api_key,
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
