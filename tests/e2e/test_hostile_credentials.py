"""Hostile `authorization` values, over native gRPC and REST through Envoy: whatever a caller
presents that is not a credential of this service, the answer is UNAUTHENTICATED (REST 401 with
`WWW-Authenticate: Bearer`), never a 5xx, never a success, never the presented value echoed."""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack

HOSTILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _forged_jwt(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    return ".".join(
        (
            _segment(json.dumps(header).encode()),
            _segment(json.dumps(claims).encode()),
            _segment(signature),
        )
    )


# What gRPC metadata and HTTP headers can carry: printable ASCII (anything else is refused by the
# client libraries before it is sent).
header_texts = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
tokens = st.one_of(
    header_texts,
    st.builds(lambda token: f"Bearer {token}", header_texts),
    st.builds(lambda token: f"bearer  {token}", header_texts),
    # Things shaped like this service's keys, with wrong secrets.
    st.builds(
        lambda prefix, secret: f"Bearer jobs_{prefix}_{secret}",
        st.text(alphabet="0123456789abcdef", min_size=0, max_size=12),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60
        ),
    ),
    # Things shaped like JWTs: unsigned, wrongly signed, with hostile headers.
    st.builds(
        lambda alg, claims, signature: (
            "Bearer " + _forged_jwt({"alg": alg, "typ": "JWT"}, claims, signature)
        ),
        st.sampled_from(["none", "HS256", "RS256", "ES256", "PS256", "", "RS256 "]),
        st.fixed_dictionaries(
            {"sub": st.text(max_size=20), "tenant": st.text(max_size=20)},
            optional={
                "exp": st.integers(),
                "scope": st.text(max_size=40),
                "aud": st.text(max_size=20),
            },
        ),
        st.binary(max_size=64),
    ),
    st.sampled_from(
        [
            "",
            "Bearer",
            "Bearer ",
            "Bearer a.b",
            "Bearer a.b.c",
            "Bearer ...",
            "Basic YWRtaW46YWRtaW4=",
            "Bearer " + "A" * 4000,
            "Bearer jobs_",
            "Bearer jobs___",
        ]
    ),
)


@pytest.fixture(scope="module")
def open_channel(stack: Stack) -> grpc.Channel:
    """A channel that adds no credential of its own."""
    return grpc.insecure_channel(stack.grpc_target)


@pytest.fixture(scope="module")
def open_http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.http_base, timeout=30)


@HOSTILE
@given(authorization=tokens)
def test_a_hostile_authorization_is_unauthenticated_over_grpc(
    open_channel: grpc.Channel, authorization: str
) -> None:
    stub = pb_grpc.JobServiceStub(open_channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListJobs(
            pb.ListJobsRequest(), metadata=(("authorization", authorization),), timeout=30
        )

    error = raised.value
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, details
    assert details
    assert len(authorization) < 12 or authorization[-12:] not in details


@HOSTILE
@given(authorization=tokens)
def test_a_hostile_authorization_is_401_over_rest(
    open_http: httpx.Client, authorization: str
) -> None:
    # HTTP strips a value's surrounding whitespace (and h11 refuses to send it).
    reply = open_http.get("/api/v1/jobs", headers={"authorization": authorization.strip()})

    # Envoy itself refuses what HTTP cannot carry (431 for an oversized header).
    assert reply.status_code in {401, 431}, reply.text
    assert reply.json()["message"]
    if reply.status_code == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer")
