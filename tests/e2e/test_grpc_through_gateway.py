"""Native gRPC through Envoy: grpcurl with server reflection (no proto files), and generated stubs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def _grpcurl(stack: Stack, *args: str) -> str:
    """`grpcurl ARGS` through Envoy as the README shows it, with the stack's key in a header."""
    credentials = ["-H", f"authorization: {stack.authorization}"] if stack.api_key else []
    completed = subprocess.run(
        [GRPCURL, "-plaintext", *credentials, *args[:-1], stack.gateway_target, args[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_grpcurl_lists_services_through_envoy_via_reflection(stack: Stack) -> None:
    services = _grpcurl(stack, "list").split()

    assert "jobs.v1.JobService" in services
    assert "grpc.health.v1.Health" in services


def test_grpcurl_submits_and_watches_through_envoy(stack: Stack) -> None:
    submitted = json.loads(
        _grpcurl(
            stack,
            "-d",
            '{"data": [1, 2, 3], "operation": "cube_sum"}',
            "jobs.v1.JobService/SubmitJob",
        )
    )

    watched = _grpcurl(
        stack, "-d", json.dumps({"job_id": submitted["id"]}), "jobs.v1.JobService/WatchJob"
    )

    # grpcurl prints one JSON object per streamed message.
    decoder = json.JSONDecoder()
    messages, position = [], 0
    while position < len(watched.strip()):
        message, end = decoder.raw_decode(watched, position)
        messages.append(message)
        position = end + (len(watched[end:]) - len(watched[end:].lstrip()))
    assert submitted["status"] == "PENDING"
    assert messages[-1]["job"]["status"] == "SUCCESS"
    assert messages[-1]["job"]["result"]["result"] == 36
    assert messages[-1]["sequence"] == 3


def test_grpcurl_health_check_through_envoy(stack: Stack) -> None:
    reply = json.loads(
        _grpcurl(stack, "-d", '{"service": "jobs.v1.JobService"}', "grpc.health.v1.Health/Check")
    )

    assert reply == {"status": "SERVING"}


async def test_generated_stub_through_envoy(gateway_channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.JobServiceStub(gateway_channel)

    job = await stub.SubmitJob(pb.SubmitJobRequest(data=[4], operation=pb.square_sum))
    updates = [u async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job.id))]

    assert updates[-1].job.status == pb.SUCCESS
    assert updates[-1].job.result.result == 16.0
