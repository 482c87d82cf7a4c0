"""The gateway's own rules (gateway/envoy.yaml), seen through the real Envoy."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.processes import ManagedProcess, free_port, wait_for
from devstack.stack import DESCRIPTOR, Stack
from gateway import GatewayOptions, write_config
from gateway.config import batch_body_limit
from tests.conftest import TEST_MAX_MESSAGE_BYTES

UNKNOWN_ID = "01a20000-0000-7000-8000-000000000000"
REFUSED = 'query parameter "job_id" is not allowed'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/status?job_id=zzz"),
        ("GET", "/result?x=1&job_id=zzz"),
        ("GET", "/watch?job_id"),
        ("GET", "/status?jobId=zzz"),
        ("GET", "/status?job%5Fid=zzz"),
        ("GET", "/status?job%5fid=zzz"),
        ("GET", "/status?%6Aob_id=zzz"),
        ("GET", "/status?jo%62Id=zzz"),
        ("POST", ":cancel?job_id=zzz"),
    ],
)
async def test_the_path_variable_cannot_be_overridden_from_the_query(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(method, f"/api/v1/jobs/{UNKNOWN_ID}{path}")

    assert response.status_code == 400
    assert response.json()["code"] == 3
    assert REFUSED in response.json()["message"]


@pytest.mark.parametrize(
    "query", ["?job_idx=1", "?x=job_id", "?JOB_ID=1"], ids=["longer", "value", "case"]
)
async def test_other_query_parameters_are_left_to_the_transcoder(
    http: httpx.AsyncClient, query: str
) -> None:
    response = await http.get(f"/api/v1/jobs/{UNKNOWN_ID}/status{query}")

    # The transcoder refuses unknown parameters itself, naming them.
    assert response.status_code == 400
    assert REFUSED not in response.json()["message"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("bad$name", "x"),
        ("$", "x"),
        ("x-trace-bin", "not base64!"),
        ("grpc-timeout", "soon"),
        ("grpc-encoding", "no-such-codec"),
    ],
)
async def test_rest_headers_grpc_would_refuse_are_dropped(
    http: httpx.AsyncClient, name: str, value: str
) -> None:
    listed = await http.get("/api/v1/jobs", params={"page_size": 1}, headers=[(name, value)])
    submitted = await http.post(
        "/api/v1/jobs/", json={"data": [1], "operation": "square_sum"}, headers=[(name, value)]
    )

    assert listed.status_code == 200, listed.text
    assert submitted.status_code == 201, submitted.text


async def test_the_idempotency_key_header_still_reaches_the_server(
    http: httpx.AsyncClient,
) -> None:
    headers = {"idempotency-key": str(uuid.uuid4())}
    body = {"data": [1, 2], "operation": "square_sum"}

    first = await http.post("/api/v1/jobs", json=body, headers=headers)
    again = await http.post("/api/v1/jobs", json=body, headers=headers)

    assert first.status_code == again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]


async def test_an_oversized_body_is_413_naming_the_limit(http: httpx.AsyncClient) -> None:
    body = b'{"data": [' + b"1," * TEST_MAX_MESSAGE_BYTES + b'1], "operation": "square_sum"}'

    response = await http.post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json() == {
        "code": 8,
        "message": f"request body is larger than {TEST_MAX_MESSAGE_BYTES} bytes",
    }


async def test_an_oversized_batch_body_is_413_naming_the_batch_limit(
    http: httpx.AsyncClient,
) -> None:
    limit = batch_body_limit(TEST_MAX_MESSAGE_BYTES)
    body = b'{"requests": [' + b" " * limit + b"]}"

    response = await http.post(
        "/api/v1/jobs:batchSubmit", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json() == {
        "code": 8,
        "message": f"request body is larger than {limit} bytes",
    }


def test_an_upstream_found_by_dns_serves_requests(stack: Stack, tmp_path: Path) -> None:
    """The compose layout (`--dns`): a second Envoy reaches the stack's server by host name."""
    port = free_port()
    options = GatewayOptions(
        listen_host="127.0.0.1",
        listen_port=port,
        admin_host="127.0.0.1",
        admin_port=free_port(),
        upstream_host="localhost",
        upstream_port=stack.config.ports.grpc,
        upstream_dns=True,
        descriptor_path=DESCRIPTOR,
    )
    write_config(options, tmp_path / "envoy.yaml")
    envoy = ManagedProcess(
        "envoy-dns",
        [
            str(Path(sys.executable).parent / "envoy"),
            "-c",
            str(tmp_path / "envoy.yaml"),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ],
        log_path=tmp_path / "envoy.log",
    )
    envoy.start()
    try:

        def healthy() -> bool:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200

        wait_for(healthy, timeout_seconds=30, what=f"Envoy /health 200 (log: {envoy.log_path})")
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/jobs",
            json={"data": [1], "operation": "square_sum"},
            headers=stack.auth_headers(),
            timeout=10,
        )
        assert response.status_code == 201, response.text
    finally:
        envoy.stop()
