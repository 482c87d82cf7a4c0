"""What browsers get from the gateway: the OpenAPI document, Swagger UI, gRPC-Web and CORS.

Also schemathesis, which fuzzes the REST API from the served document and must never see a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from jobs.v1 import jobs_service_pb2 as pb
from openapi_spec_validator import validate

from devstack.stack import DESCRIPTOR, Stack
from gateway import GatewayOptions, write_config
from gateway.config import SWAGGER_UI_FILES
from gateway.openapi import build_openapi
from tests.browser import headless_chromium
from tests.eventually import eventually

# Listed in GATEWAY_CORS_ORIGINS by the session stack (tests/conftest.py); no other origin is.
FOREIGN_ORIGIN = "http://app.example.test"
SERVICE_PATH = "/jobs.v1.JobService"
# KEEP_TEST_SCREENSHOTS=DIR keeps a picture of the docs page after "Try it out".
SCREENSHOT_DIR = os.environ.get("KEEP_TEST_SCREENSHOTS", "")
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
SCHEMATHESIS_EXAMPLES = 50
# Checks the document cannot satisfy, switched off with the reason.
SCHEMATHESIS_CONFIG = """\
[checks]
# Expects every schema-valid request to succeed, but the server's validation (finite numbers,
# the id format, the filter grammar, the page size range, key length) is not in the contract's
# descriptor, so it is not in the document either.
positive_data_acceptance.enabled = false
# Expects 405 for other methods on a documented path; the transcoder answers 404.
unsupported_method.enabled = false

[[operations]]
include-operation-id = "WatchJob"
# The server ignores Last-Event-ID when after_sequence is set, so a malformed header is
# accepted then.
checks.negative_data_rejection.enabled = false

[[operations]]
include-operation-id = "WatchJobs"
# A valid request streams until the client leaves, so each one lasts the whole request timeout
# (answered 200 with heartbeats); a short one keeps them from taking minutes. The server ignores
# Last-Event-ID when after_cursor is set, so a malformed header is accepted then.
request-timeout = 1
checks.negative_data_rejection.enabled = false

[[operations]]
include-operation-id = "BatchSubmitJobs"
# The transcoder reads a lone number where a list of numbers belongs (`"data": 0` is `[0]`, as
# protobuf's JSON parser reads any repeated field), so a request's `data` of the wrong type may be
# accepted. SubmitJob's `data` is read the same way.
checks.negative_data_rejection.enabled = false

[[operations]]
include-operation-id = "RevokeApiKey"
# It would revoke the key the run presents, the session's (schemathesis takes ids from what
# ListApiKeys returns). tests/e2e/test_edge_auth.py revokes keys of its own.
enabled = false
"""
# The credential, given for the document's security scheme: schemathesis then sends it as the
# scheme says, and also checks that every operation refuses a request without it (401 or 403).
SCHEMATHESIS_AUTH = """
[auth.openapi.bearerAuth]
bearer = "${JOBS_API_KEY}"
"""
# AUTH_MODE=none: no credential to give, and every request is let in.
SCHEMATHESIS_NO_AUTH = """
[checks.ignored_auth]
enabled = false
"""

OPERATIONS = {
    ("post", "/api/v1/jobs"): "SubmitJob",
    ("post", "/api/v1/jobs:batchSubmit"): "BatchSubmitJobs",
    ("get", "/api/v1/jobs:watch"): "WatchJobs",
    ("get", "/api/v1/jobs"): "ListJobs",
    ("get", "/api/v1/jobs/{job_id}/status"): "GetStatus",
    ("get", "/api/v1/jobs/{job_id}/result"): "GetResult",
    ("get", "/api/v1/jobs/{job_id}/watch"): "WatchJob",
    ("post", "/api/v1/jobs/{job_id}:cancel"): "CancelJob",
}
# AdminService, in the same document under a tag of its own.
ADMIN_OPERATIONS = {
    ("post", "/api/v1/keys"): "CreateApiKey",
    ("get", "/api/v1/keys"): "ListApiKeys",
    ("post", "/api/v1/keys/{key_id}:revoke"): "RevokeApiKey",
}
# Swagger UI's id of each operation's block: operations-<tag>-<operationId>.
BLOCK_IDS = {f"operations-JobService-{op}" for op in OPERATIONS.values()} | {
    f"operations-AdminService-{op}" for op in ADMIN_OPERATIONS.values()
}


@pytest.fixture(scope="module")
async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    """The OpenAPI document as the gateway serves it."""
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served: dict[str, Any] = response.json()
    return served


# --------------------------------------------------------------------------- the document


def test_the_document_is_valid_openapi_generated_from_the_descriptor(
    document: dict[str, Any],
) -> None:
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema

    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    assert document == build_openapi(descriptor_set)
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "/"}]


def test_every_http_rule_is_an_operation(document: dict[str, Any]) -> None:
    found = {
        (verb, path): operation["operationId"]
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    }

    assert found == OPERATIONS | ADMIN_OPERATIONS


def _operation(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [
        operation
        for item in document["paths"].values()
        for operation in item.values()
        if operation["operationId"] == operation_id
    ]
    return found


def _parameters(operation: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["in"], p["name"]): p for p in operation.get("parameters", [])}


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def test_submit_takes_the_job_as_json_and_answers_201(document: dict[str, Any]) -> None:
    submit = _operation(document, "SubmitJob")

    body = submit["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["data", "operation"]
    assert schema["properties"]["data"]["items"] == {"type": "number", "format": "double"}
    assert schema["properties"]["operation"]["$ref"] == "#/components/schemas/Operation"
    assert set(schema["properties"]) == {"data", "operation", "request_id"}
    assert body["content"]["application/json"]["example"] == {
        "data": [1, 2, 3],
        "operation": "square_sum",
    }
    assert set(submit["responses"]) == {
        "201",
        "400",
        "401",
        "403",
        "409",
        "413",
        "429",
        "503",
        "default",
    }
    assert submit["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    assert "`/api/v1/jobs/`" in submit["description"]  # the trailing-slash spelling
    key = _parameters(submit)[("header", "Idempotency-Key")]
    assert key["required"] is False
    assert key["schema"] == {"type": "string"}
    assert "AIP-155" in key["description"]


def test_batch_submit_takes_submit_requests_and_answers_201(document: dict[str, Any]) -> None:
    batch = _operation(document, "BatchSubmitJobs")

    schema = batch["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["requests"]
    assert schema["properties"]["requests"]["items"] == {
        "$ref": "#/components/schemas/SubmitJobRequest"
    }
    assert "201" in batch["responses"]
    assert "200" not in batch["responses"]
    # Every refusal the contract names: invalid, a key reused, over the quota, unavailable.
    assert {"400", "409", "413", "429", "503"} <= set(batch["responses"])
    created = batch["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/BatchSubmitJobsResponse"}
    # A batch has no Idempotency-Key header: each request has its own request_id.
    assert not any(name == "Idempotency-Key" for _, name in _parameters(batch))


def test_reads_take_the_id_from_the_path(document: dict[str, Any]) -> None:
    for operation_id in ("GetStatus", "GetResult", "WatchJob", "CancelJob"):
        operation = _operation(document, operation_id)
        job_id = _parameters(operation)[("path", "job_id")]
        assert job_id["required"] is True
        assert job_id["description"] == "The id returned by SubmitJob."
        assert {"400", "404", "503", "default"} <= set(operation["responses"])
    cancel = _operation(document, "CancelJob")
    assert cancel["requestBody"]["required"] is False
    assert cancel["requestBody"]["content"]["application/json"]["schema"]["properties"] == {}


def test_list_documents_its_query_parameters(document: dict[str, Any]) -> None:
    parameters = _parameters(_operation(document, "ListJobs"))

    assert set(parameters) == {("query", "page_size"), ("query", "page_token"), ("query", "filter")}
    assert parameters[("query", "page_size")]["schema"] == {"type": "integer", "format": "int32"}
    assert "1 to 1000" in parameters[("query", "page_size")]["description"]
    assert 'status = "FAILED"' in parameters[("query", "filter")]["description"]
    assert not any(p["required"] for p in parameters.values())


def test_watch_is_an_event_stream_of_watch_responses(document: dict[str, Any]) -> None:
    watch = _operation(document, "WatchJob")

    assert set(_parameters(watch)) == {
        ("path", "job_id"),
        ("query", "after_sequence"),
        ("header", "Last-Event-ID"),
    }
    (media_type,) = watch["responses"]["200"]["content"]
    assert media_type == "text/event-stream"
    event = watch["responses"]["200"]["content"][media_type]["schema"]
    assert event["properties"]["data"]["contentMediaType"] == "application/json"
    assert event["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/WatchJobResponse"
    }
    frame = _schema(document, "WatchJobResponse")
    assert set(frame["properties"]) == {"job", "sequence", "heartbeat"}


def test_schemas_follow_the_json_the_gateway_prints(document: dict[str, Any]) -> None:
    job = _schema(document, "Job")
    assert list(job["properties"]) == [
        "id",
        "status",
        "operation",
        "created_at",
        "updated_at",
        "result",
        "attempts",
    ]
    # Always printed (always_print_primitive_fields); messages only when set.
    assert job["required"] == ["id", "status", "operation", "attempts"]
    assert job["properties"]["created_at"]["format"] == "date-time"
    assert job["properties"]["id"]["readOnly"] is True
    assert job["properties"]["id"]["description"].startswith("Opaque, unguessable")
    assert job["description"].startswith("Job is one submitted computation")
    status = _schema(document, "JobStatus")
    assert status["enum"] == ["PENDING", "IN_PROGRESS", "SUCCESS", "FAILED", "CANCELLED"]
    assert "- `CANCELLED`: Stopped by CancelJob before it finished. Final." in status["description"]
    assert _schema(document, "Operation")["enum"] == ["square_sum", "cube_sum"]
    result = _schema(document, "JobResult")  # proto3 `optional`: printed only when set
    assert "required" not in result
    assert result["properties"]["result"]["type"] == "number"


def test_errors_share_the_status_schema_with_its_details(document: dict[str, Any]) -> None:
    error = _schema(document, "Status")
    assert error["required"] == ["code", "message"]
    assert set(error["properties"]) == {"code", "message", "details"}
    details = [
        ref["$ref"].rsplit("/", 1)[-1] for ref in error["properties"]["details"]["items"]["anyOf"]
    ]
    assert details == [
        "ErrorInfo",
        "BadRequest",
        "PreconditionFailure",
        "QuotaFailure",
        "RetryInfo",
    ]
    bad_request = _schema(document, "BadRequest")
    assert bad_request["properties"]["@type"] == {
        "const": "type.googleapis.com/google.rpc.BadRequest"
    }
    assert "field_violations" in bad_request["properties"]
    for path_item in document["paths"].values():
        for operation in path_item.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) or status == "default":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Status"
                    }


# --------------------------------------------------------------------------- Swagger UI


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
async def test_docs_page_loads_swagger_ui_with_the_document(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert 'src="/docs/swagger-ui-bundle.js"' in response.text
    assert 'url: "/openapi.json"' in response.text


async def test_only_the_assets_the_page_needs_are_served(http: httpx.AsyncClient) -> None:
    types = {"js": "text/javascript", "css": "text/css", "png": "image/png"}
    for name in SWAGGER_UI_FILES:
        response = await http.get(f"/docs/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(types[name.rsplit(".", 1)[-1]])
    assert int((await http.head("/docs/swagger-ui-bundle.js")).headers["content-length"]) > 4096
    # The package's own page and initializer point at the Petstore example: not served.
    for path in (
        "/docs/index.html",
        "/docs/swagger-initializer.js",
        "/docs/%2E%2E/openapi.json",
        "/docs/..%2Fopenapi.json",
    ):
        response = await http.get(path)
        assert response.status_code in (400, 404), path
        assert response.json()["code"] in (3, 5)
    refused = await http.post("/openapi.json", json={})
    assert refused.status_code == 405
    assert refused.json() == {"code": 12, "message": "Method Not Allowed"}


@pytest.mark.timeout(300)
async def test_swagger_ui_renders_every_operation_and_try_it_out_submits_a_job(
    stack: Stack,
) -> None:
    async with headless_chromium() as browser:
        # What Swagger UI's Authorize button would add to every request it makes.
        page = await browser.new_page(extra_http_headers=stack.auth_headers())
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{stack.http_base}/docs")

        blocks = page.locator(".opblock")
        await blocks.nth(len(BLOCK_IDS) - 1).wait_for(timeout=30_000)
        assert await blocks.count() == len(BLOCK_IDS)
        shown = {await block.get_attribute("id") for block in await blocks.all()}
        assert shown == BLOCK_IDS
        title = await page.locator(".info .title").inner_text()
        assert "JobService REST API" in title

        submit = page.locator("#operations-JobService-SubmitJob")
        await submit.locator(".opblock-summary").click()
        await submit.locator(".try-out__btn").click()
        body = await submit.locator("textarea.body-param__text").input_value()
        assert json.loads(body) == {"data": [1, 2, 3], "operation": "square_sum"}
        async with page.expect_response(
            lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
        ) as response_info:
            await submit.locator("button.execute").click()
        response = await response_info.value
        assert response.status == 201
        job = await response.json()
        assert job["status"] == "PENDING"
        assert job["id"]
        shown_status = submit.locator(".live-responses-table tbody .response-col_status")
        await shown_status.wait_for()
        assert (await shown_status.inner_text()).strip() == "201"
        assert job["id"] in await submit.locator(".live-responses-table").inner_text()
        assert errors == []
        if SCREENSHOT_DIR:
            await page.screenshot(path=Path(SCREENSHOT_DIR) / "docs.png", full_page=True)


# --------------------------------------------------------------------------- gRPC-Web and CORS


def _grpc_web_frame(message: Message) -> bytes:
    payload = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def _grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The messages and the trailers of a gRPC-Web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    position = 0
    while position < len(body):
        flags, length = body[position], struct.unpack(">I", body[position + 1 : position + 5])[0]
        payload = body[position + 5 : position + 5 + length]
        position += 5 + length
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


async def _grpc_web_call(
    http: httpx.AsyncClient, method: str, request: Message
) -> tuple[httpx.Response, list[bytes], dict[str, str]]:
    """One gRPC-Web call as a browser's client library makes it, from a foreign origin."""
    response = await http.post(
        f"{SERVICE_PATH}/{method}",
        content=_grpc_web_frame(request),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "origin": FOREIGN_ORIGIN,
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web+proto"
    assert response.headers["access-control-allow-origin"] == FOREIGN_ORIGIN
    messages, trailers = _grpc_web_frames(response.content)
    # A call that fails before any message has a trailers-only response: status in the headers.
    for name in ("grpc-status", "grpc-message", "grpc-status-details-bin"):
        if name in response.headers:
            trailers.setdefault(name, response.headers[name])
    return response, messages, trailers


def _status_details(trailers: dict[str, str]) -> status_pb2.Status:
    encoded = trailers["grpc-status-details-bin"]
    return status_pb2.Status.FromString(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))


async def test_grpc_web_submits_and_reads_the_result(http: httpx.AsyncClient) -> None:
    _, messages, trailers = await _grpc_web_call(
        http, "SubmitJob", pb.SubmitJobRequest(data=[1, 2, 3], operation=pb.cube_sum)
    )
    assert trailers["grpc-status"] == "0"
    (submitted,) = [pb.Job.FromString(m) for m in messages]
    assert submitted.status == pb.PENDING

    async def result() -> pb.Job:
        _, messages, trailers = await _grpc_web_call(
            http, "GetResult", pb.GetResultRequest(job_id=submitted.id)
        )
        assert trailers["grpc-status"] == "0"
        (job,) = [pb.Job.FromString(m) for m in messages]
        return job

    final = await eventually(result, until=lambda job: job.status == pb.SUCCESS)
    assert final.result.result == 36


async def test_grpc_web_streams_a_watch(http: httpx.AsyncClient) -> None:
    _, messages, _ = await _grpc_web_call(
        http, "SubmitJob", pb.SubmitJobRequest(data=[2], operation=pb.square_sum)
    )
    (job,) = [pb.Job.FromString(m) for m in messages]

    _, messages, trailers = await _grpc_web_call(
        http, "WatchJob", pb.WatchJobRequest(job_id=job.id)
    )

    updates = [pb.WatchJobResponse.FromString(m) for m in messages]
    assert trailers["grpc-status"] == "0"
    assert updates[-1].job.status == pb.SUCCESS
    assert updates[-1].job.result.result == 4


async def test_grpc_web_errors_carry_status_details(http: httpx.AsyncClient) -> None:
    response, messages, trailers = await _grpc_web_call(
        http, "GetResult", pb.GetResultRequest(job_id="not-an-id")
    )

    assert messages == []
    assert trailers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "job_id" in trailers["grpc-message"]
    status = _status_details(trailers)
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad_request)
    assert (info.reason, info.domain) == ("INVALID_REQUEST", "jobs.v1")
    assert [v.field for v in bad_request.field_violations] == ["job_id"]
    # A browser may read these only because CORS exposes them.
    exposed = response.headers["access-control-expose-headers"]
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= {
        name.strip() for name in exposed.split(",")
    }

    _, _, trailers = await _grpc_web_call(
        http, "GetStatus", pb.GetStatusRequest(job_id="01a20000-0000-7000-8000-000000000000")
    )
    assert trailers["grpc-status"] == "5"  # NOT_FOUND
    assert _status_details(trailers).details[0].Unpack(info)
    assert info.reason == "JOB_NOT_FOUND"


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        (
            f"{SERVICE_PATH}/SubmitJob",
            "POST",
            "authorization,content-type,x-grpc-web,x-user-agent",
        ),
        ("/api/v1/jobs", "POST", "authorization,content-type,idempotency-key"),
        ("/api/v1/jobs/abc/watch", "GET", "authorization,last-event-id"),
    ],
)
async def test_cors_preflight_allows_a_listed_origin(
    http: httpx.AsyncClient, path: str, method: str, headers: str
) -> None:
    response = await http.options(
        path,
        headers={
            "origin": FOREIGN_ORIGIN,
            "access-control-request-method": method,
            "access-control-request-headers": headers,
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == FOREIGN_ORIGIN
    assert method in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(headers.split(",")) <= allowed
    assert "access-control-allow-credentials" not in response.headers


async def test_rest_answers_carry_cors_headers(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/api/v1/jobs", params={"page_size": 1}, headers={"origin": FOREIGN_ORIGIN}
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == FOREIGN_ORIGIN


# --------------------------------------------------------------------------- schemathesis


# About a minute here (750 cases); a busy machine needs more than the default timeout.
@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_error(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    report = tmp_path / "schemathesis.json"
    config = tmp_path / "schemathesis.toml"
    auth = SCHEMATHESIS_AUTH if stack.api_key else SCHEMATHESIS_NO_AUTH
    await asyncio.to_thread(config.write_text, SCHEMATHESIS_CONFIG + auth)
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        f"--config-file={config}",
        "run",
        f"{stack.http_base}/openapi.json",
        f"--max-examples={SCHEMATHESIS_EXAMPLES}",
        # Fixed, so that a failure in CI reproduces; watch streams end within a few seconds.
        "--seed=20261129",
        "--workers=1",
        "--request-timeout=10",
        "--report=json",
        f"--report-json-path={report}",
        cwd=tmp_path,  # its Hypothesis database stays out of the checkout
        # As a caller with every scope, so that its requests reach the handlers.
        env={**os.environ, "JOBS_API_KEY": stack.api_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")

    assert process.returncode == 0, text
    summary = json.loads(await asyncio.to_thread(report.read_text))
    assert summary["failures"] == [], text
    assert summary["errors"] == [], text
    operations = len(OPERATIONS | ADMIN_OPERATIONS) - 1  # all but RevokeApiKey
    assert summary["operations"]["tested"] == operations
    cases = summary["test_cases"]["generated"]
    assert cases > operations * 10
    print(f"\nschemathesis: {cases} test cases, no failures")

    # Let the jobs it submitted finish, so later tests get an idle worker.
    async def unfinished() -> int:
        count = 0
        for status in ("PENDING", "IN_PROGRESS"):
            response = await http.get(
                "/api/v1/jobs",
                params={
                    "filter": f'status = "{status}" AND create_time >= "{started.isoformat()}"',
                    "page_size": 1000,
                },
            )
            assert response.status_code == 200, response.text
            count += len(response.json()["jobs"])
        return count

    await eventually(unfinished, until=lambda count: count == 0, timeout_seconds=60)


async def test_rest_headers_that_grpc_would_refuse_are_dropped(http: httpx.AsyncClient) -> None:
    # Found by schemathesis: each of these made the gRPC server fail the call with INTERNAL (500).
    for header in (("bad$name", "x"), ("x-trace-bin", "not base64!"), ("grpc-timeout", "soon")):
        response = await http.get("/api/v1/jobs", params={"page_size": 1}, headers=[header])
        assert response.status_code == 200, (header, response.text)


# --------------------------------------------------------------------------- configuration


def test_the_gateway_refuses_to_render_without_its_static_files(tmp_path: Path) -> None:
    options = GatewayOptions(
        listen_host="127.0.0.1",
        listen_port=8000,
        admin_host="127.0.0.1",
        admin_port=9901,
        upstream_host="127.0.0.1",
        upstream_port=50051,
        upstream_dns=False,
        descriptor_path=DESCRIPTOR,
        swagger_ui_dir=tmp_path / "missing",
    )

    with pytest.raises(FileNotFoundError, match="swagger-ui-dist"):
        write_config(options, tmp_path / "envoy.yaml")
    assert not (tmp_path / "envoy.yaml").exists()
