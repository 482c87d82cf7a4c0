"""Credentials and rates at the edge, through the real Envoy: what REST, gRPC and browser clients
see when a call has no credential, a bad one, or one over its request rate, and the AdminService
routes the gateway transcodes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.browser import headless_chromium
from tests.conftest import second_server
from tests.credentials import auth_headers, auth_metadata
from tests.e2e.test_api_docs import FOREIGN_ORIGIN
from tests.eventually import eventually

UNKNOWN_ID = "01a20000-0000-7000-8000-000000000000"
WWW_AUTHENTICATE = 'Bearer realm="jobs"'
# The second server's rate: small enough to cross in a few calls, per minute so that a slow
# machine does not see the window slide during a test.
SMALL_RATE = "3/minute"
SMALL_RATE_TEXT = "3 per 1 minute"

# One call of each kind REST clients make, JobService and AdminService.
REST_CALLS = [
    ("POST", "/api/v1/jobs", {"data": [1, 2], "operation": "square_sum"}),
    ("GET", "/api/v1/jobs", None),
    ("GET", f"/api/v1/jobs/{UNKNOWN_ID}/status", None),
    ("GET", f"/api/v1/jobs/{UNKNOWN_ID}/result", None),
    ("GET", f"/api/v1/jobs/{UNKNOWN_ID}/watch", None),
    ("POST", f"/api/v1/jobs/{UNKNOWN_ID}:cancel", {}),
    ("POST", "/api/v1/keys", {"tenant": "acme", "scopes": ["jobs.read"]}),
    ("GET", "/api/v1/keys", None),
    ("POST", "/api/v1/keys/no-such-key:revoke", {}),
]


@pytest.fixture(scope="module")
async def anonymous(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A REST client of the session stack's gateway that presents no credential."""
    async with httpx.AsyncClient(base_url=stack.http_base, timeout=30) as client:
        yield client


async def _new_key(http: httpx.AsyncClient, *scopes: str, tenant: str = "default") -> str:
    """A key made through the gateway's AdminService route, with the stack's admin key."""
    response = await http.post(
        "/api/v1/keys",
        json={"tenant": tenant, "scopes": list(scopes), "name": f"edge-{uuid.uuid4().hex[:8]}"},
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    assert created["api_key"]["tenant"] == tenant
    assert created["key"].startswith(created["api_key"]["prefix"])
    key: str = created["key"]
    return key


def _details(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The google.rpc details of a REST error body, by type name."""
    return {detail["@type"].rsplit(".", 1)[-1]: detail for detail in body.get("details", [])}


# --------------------------------------------------------------------------- no or bad credential


@pytest.mark.parametrize(("method", "path", "body"), REST_CALLS)
async def test_rest_without_a_credential_is_401_asking_for_a_bearer_token(
    anonymous: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await anonymous.request(method, path, json=body)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["code"] == code_pb2.UNAUTHENTICATED
    assert error["message"] == "missing credentials: send `authorization: Bearer <token>`"
    assert _details(error)["ErrorInfo"]["reason"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("scheme", "credential", "message"),
    [
        ("Bearer", "jobs_00000000_" + "A" * 43, "invalid credentials: unknown API key"),
        ("Bearer", "not-a-key", "invalid credentials: not an API key or token of this service"),
        (
            "Basic",
            "dXNlcjpwYXNz",
            "malformed credentials: expected `authorization: Bearer <token>`",
        ),
    ],
    ids=["unknown-key", "garbage", "basic"],
)
async def test_rest_with_a_bad_credential_is_401_naming_the_problem(
    anonymous: httpx.AsyncClient, scheme: str, credential: str, message: str
) -> None:
    response = await anonymous.get(
        "/api/v1/jobs", headers={"authorization": f"{scheme} {credential}"}
    )

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
    assert response.json()["message"] == message
    assert credential not in response.text


async def test_a_watch_without_a_credential_is_refused_before_any_event(
    anonymous: httpx.AsyncClient,
) -> None:
    async with anonymous.stream("GET", f"/api/v1/jobs/{UNKNOWN_ID}/watch") as response:
        body = await response.aread()

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert b"data:" not in body


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/docs"])
async def test_health_and_the_docs_need_no_credential(
    anonymous: httpx.AsyncClient, path: str
) -> None:
    response = await anonymous.get(path)

    assert response.status_code == 200
    assert "www-authenticate" not in response.headers


async def test_a_read_only_key_cannot_submit_403_naming_the_scope(
    stack: Stack, http: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    reader = await _new_key(http, "jobs.read")

    listed = await anonymous.get("/api/v1/jobs", headers=auth_headers(reader))
    submitted = await anonymous.post(
        "/api/v1/jobs", json={"data": [1], "operation": "square_sum"}, headers=auth_headers(reader)
    )

    assert listed.status_code == 200, listed.text
    assert submitted.status_code == 403, submitted.text
    assert "www-authenticate" not in submitted.headers
    assert _details(submitted.json())["ErrorInfo"]["metadata"] == {"scope": "jobs.write"}


# --------------------------------------------------------------------------- AdminService routes


async def test_keys_are_made_listed_and_revoked_through_rest(
    http: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    key = await _new_key(http, "jobs.read", tenant="edge-admin")
    assert (await anonymous.get("/api/v1/jobs", headers=auth_headers(key))).status_code == 200

    listed = await http.get("/api/v1/keys")
    assert listed.status_code == 200, listed.text
    (described,) = [k for k in listed.json()["api_keys"] if key.startswith(k["prefix"] + "_")]
    assert described["tenant"] == "edge-admin"
    assert described["scopes"] == ["jobs.read"]
    assert key not in listed.text

    revoked = await http.post(f"/api/v1/keys/{described['id']}:revoke", json={})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"]
    refused = await eventually(
        lambda: anonymous.get("/api/v1/jobs", headers=auth_headers(key)),
        until=lambda response: response.status_code != 200,
        timeout_seconds=5,
    )
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == WWW_AUTHENTICATE


async def test_a_jobs_key_cannot_manage_keys(
    http: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    writer = await _new_key(http, "jobs.write")

    response = await anonymous.get("/api/v1/keys", headers=auth_headers(writer))

    assert response.status_code == 403, response.text
    assert _details(response.json())["ErrorInfo"]["metadata"] == {"scope": "admin"}


@pytest.mark.parametrize(
    "query", ["?key_id=other", "?keyId=other", "?key%5Fid=other", "?x=1&%6Bey_id=other"]
)
async def test_the_key_id_cannot_be_overridden_from_the_query(
    http: httpx.AsyncClient, query: str
) -> None:
    """Else `POST /api/v1/keys/A:revoke?key_id=B` would revoke B."""
    response = await http.post(f"/api/v1/keys/some-key:revoke{query}", json={})

    assert response.status_code == 400
    assert response.json() == {
        "code": 3,
        "message": 'query parameter "key_id" is not allowed: the key id is taken from the path',
    }


# --------------------------------------------------------------------------- CORS


async def test_browsers_on_a_listed_origin_may_send_a_credential(
    anonymous: httpx.AsyncClient,
) -> None:
    preflight = await anonymous.options(
        "/api/v1/jobs",
        headers={
            "origin": FOREIGN_ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization",
        },
    )
    refused = await anonymous.get("/api/v1/jobs", headers={"origin": FOREIGN_ORIGIN})

    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    # The page can read what the 401 asks for.
    assert refused.status_code == 401
    exposed = refused.headers["access-control-expose-headers"].split(",")
    assert {"www-authenticate", "retry-after"} <= {name.strip() for name in exposed}


# --------------------------------------------------------------------------- request rate


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[Stack]:
    """A server and gateway of their own whose credentials may make SMALL_RATE calls."""
    with second_server(stack, "rate", env={"RATE_LIMIT_PER_CREDENTIAL": SMALL_RATE}) as second:
        yield second


async def _known_to(limited: Stack, key: str) -> httpx.Response:
    """The first call of `key` that `limited` accepts (it learns new keys within a second)."""
    async with httpx.AsyncClient(base_url=limited.http_base, timeout=30) as client:
        return await eventually(
            lambda: client.get("/api/v1/jobs", headers=auth_headers(key)),
            until=lambda response: response.status_code != 401,
            timeout_seconds=10,
        )


async def test_rest_over_the_rate_is_429_with_retry_after(
    limited: Stack, http: httpx.AsyncClient
) -> None:
    key = await _new_key(http, "jobs.write")
    first = await _known_to(limited, key)
    async with httpx.AsyncClient(
        base_url=limited.http_base, headers=auth_headers(key), timeout=30
    ) as client:
        within = [await client.get("/api/v1/jobs") for _ in range(2)]
        over = await client.post("/api/v1/jobs", json={"data": [1], "operation": "square_sum"})

    assert [r.status_code for r in (first, *within)] == [200, 200, 200]
    assert over.status_code == 429, over.text
    retry_after = int(over.headers["retry-after"])
    assert 1 <= retry_after <= 60
    error = over.json()
    assert error["code"] == code_pb2.RESOURCE_EXHAUSTED
    details = _details(error)
    assert details["ErrorInfo"]["reason"] == "RATE_LIMITED"
    assert details["ErrorInfo"]["metadata"] == {"limit": SMALL_RATE_TEXT}
    delay = float(details["RetryInfo"]["retry_delay"].removesuffix("s"))
    assert retry_after - 1 < delay <= retry_after


async def test_each_key_has_its_own_rate(limited: Stack, http: httpx.AsyncClient) -> None:
    spent, fresh = await _new_key(http, "jobs.read"), await _new_key(http, "jobs.read")
    await _known_to(limited, spent)
    async with httpx.AsyncClient(base_url=limited.http_base, timeout=30) as client:
        for _ in range(3):
            await client.get("/api/v1/jobs", headers=auth_headers(spent))
        assert (await client.get("/api/v1/jobs", headers=auth_headers(spent))).status_code == 429
        assert (await _known_to(limited, fresh)).status_code == 200


async def test_grpc_over_the_rate_is_resource_exhausted_with_retry_info(
    limited: Stack, http: httpx.AsyncClient
) -> None:
    key = await _new_key(http, "jobs.read")
    await _known_to(limited, key)
    async with grpc.aio.insecure_channel(limited.gateway_target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        for _ in range(2):
            await stub.ListJobs(pb.ListJobsRequest(), metadata=auth_metadata(key))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListJobs(pb.ListJobsRequest(), metadata=auth_metadata(key))

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    (retry_info,) = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    retry_info.Unpack(info)
    delay = info.retry_delay.ToTimedelta().total_seconds()
    assert 0 < delay <= 60
    assert int(trailers["retry-after"]) >= delay


# --------------------------------------------------------------------------- Swagger UI


@pytest.mark.timeout(300)
async def test_swagger_ui_authorize_keeps_the_key_for_try_it_out(stack: Stack) -> None:
    async with headless_chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{stack.http_base}/docs")
        # The button the bearerAuth scheme gives the page, and its dialog.
        await page.locator(".auth-wrapper button.authorize").click()
        await page.locator("#auth-bearer-value").fill(stack.api_key)
        await page.locator('.modal-ux button[aria-label="Apply credentials"]').click()
        await page.locator(".modal-ux button.btn-done").click()
        # Kept across a reload (persistAuthorization).
        await page.reload()

        listing = page.locator("#operations-JobService-ListJobs")
        await listing.locator(".opblock-summary").click()
        await listing.locator(".try-out__btn").click()
        async with page.expect_response(
            lambda r: "/api/v1/jobs" in r.url and r.request.method == "GET"
        ) as response_info:
            await listing.locator("button.execute").click()
        response = await response_info.value

        assert response.request.headers["authorization"] == f"Bearer {stack.api_key}"
        assert response.status == 200
