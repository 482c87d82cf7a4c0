"""Blocking clients of the session stack, for tests that send hostile or raw requests one by one.

Each presents the stack's API key, so that what a test sends reaches the code it is aimed at.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.credentials import blocking_channel

# Above the server's message limit, so that the server, not the client, refuses large requests.
_MAX_SEND_BYTES = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    """Native gRPC straight to the server."""
    with blocking_channel(
        stack.grpc_target,
        stack.api_key,
        options=[("grpc.max_send_message_length", _MAX_SEND_BYTES)],
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[grpc.Channel]:
    """Native gRPC through Envoy."""
    with blocking_channel(stack.gateway_target, stack.api_key) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def rest(stack: Stack) -> Iterator[httpx.Client]:
    """REST through Envoy."""
    with httpx.Client(base_url=stack.http_base, headers=stack.auth_headers(), timeout=30) as client:
        yield client
