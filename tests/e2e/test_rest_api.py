"""The seed's REST API through Envoy: paths, JSON shapes, status codes, errors and SSE watch."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_MAX_JOB_NUMBERS
from tests.eventually import eventually

SEED_JOB_FIELDS = {"id", "status", "operation", "created_at", "updated_at"}
# Fields added since the seed; old clients ignore them.
JOB_FIELDS = {*SEED_JOB_FIELDS, "attempts"}
UNKNOWN_ID = "01a20000-0000-7000-8000-000000000000"


def _is_rfc3339(value: str) -> bool:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


async def _submit(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/api/v1/jobs/", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def _result_when_final(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        response = await http.get(f"/api/v1/jobs/{job_id}/result")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    return await eventually(probe, until=lambda body: body["status"] in ("SUCCESS", "FAILED"))


@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/jobs"])
async def test_submit_answers_201_with_the_seed_shape(http: httpx.AsyncClient, path: str) -> None:
    response = await http.post(path, json={"data": [1, 2, 3, 4, 5], "operation": "square_sum"})

    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    job = response.json()
    assert set(job) == JOB_FIELDS
    assert job["status"] == "PENDING"
    assert job["attempts"] == 0
    assert job["operation"] == "square_sum"
    assert _is_rfc3339(job["created_at"])
    assert job["created_at"] == job["updated_at"]


async def test_status_then_result_follow_the_job(http: httpx.AsyncClient) -> None:
    job = await _submit(http, {"data": [1, 2, 3, 4, 5], "operation": "cube_sum"})

    status = await http.get(f"/api/v1/jobs/{job['id']}/status")
    early = await http.get(f"/api/v1/jobs/{job['id']}/result")
    final = await _result_when_final(http, job["id"])

    assert status.status_code == 200
    assert set(status.json()) == JOB_FIELDS
    assert status.json()["status"] in ("PENDING", "IN_PROGRESS")
    # Until the job has finished, /result answers with its status and no result.
    assert early.status_code == 200
    assert early.json()["status"] in ("PENDING", "IN_PROGRESS")
    assert "result" not in early.json()
    assert final["status"] == "SUCCESS"
    assert final["result"] == {"result": 225}
    assert set(final) == {*JOB_FIELDS, "result"}
    assert final["attempts"] == 1


async def test_failed_job_reports_its_error(http: httpx.AsyncClient) -> None:
    job = await _submit(http, {"data": [1e300, -1e300, 1e300], "operation": "cube_sum"})

    final = await _result_when_final(http, job["id"])

    assert final["status"] == "FAILED"
    assert set(final["result"]) == {"error"}
    assert "double" in final["result"]["error"]


async def test_watch_is_server_sent_events_ending_after_the_final_state(
    http: httpx.AsyncClient,
) -> None:
    job = await _submit(http, {"data": [2, 2], "operation": "square_sum"})

    events: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/watch") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))

    # Heartbeats (the first may come early) repeat the latest state; they are not changes.
    assert not events[0]["heartbeat"]
    changes = [event for event in events if not event["heartbeat"]]
    statuses = [event["job"]["status"] for event in changes]
    assert statuses in (["PENDING", "IN_PROGRESS", "SUCCESS"], ["IN_PROGRESS", "SUCCESS"])
    assert [event["sequence"] for event in changes] == list(range(4 - len(changes), 4))
    assert events[-1]["job"]["result"] == {"result": 8}
    assert all(event["job"]["id"] == job["id"] for event in events)


@pytest.mark.parametrize("suffix", ["status", "result", "watch"])
async def test_unknown_job_is_404_with_a_json_body(http: httpx.AsyncClient, suffix: str) -> None:
    response = await http.get(f"/api/v1/jobs/{UNKNOWN_ID}/{suffix}")

    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 5
    assert UNKNOWN_ID in body["message"]


async def test_malformed_job_id_is_400_naming_the_field(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/jobs/1/status")

    assert response.status_code == 400
    assert "job_id" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": [], "operation": "square_sum"}, "data"),
        ({"data": [1, "NaN"], "operation": "square_sum"}, "data[1]"),
        ({"data": [1] * (TEST_MAX_JOB_NUMBERS + 1), "operation": "square_sum"}, "data"),
        ({"data": [1, 2]}, "operation"),
        ({"data": [1, 2], "operation": "mean"}, "operation"),
        ({"data": ["one"], "operation": "square_sum"}, "data"),
        ({"operation": "square_sum"}, "data"),
    ],
)
async def test_invalid_body_is_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await http.post("/api/v1/jobs/", json=body)

    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 3
    assert field in error["message"]


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/v1/jobs/", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["code"] == 3


async def test_path_id_cannot_be_overridden_by_a_query_parameter(http: httpx.AsyncClient) -> None:
    job = await _submit(http, {"data": [1], "operation": "square_sum"})

    response = await http.get(f"/api/v1/jobs/{job['id']}/status", params={"job_id": UNKNOWN_ID})

    assert response.status_code == 400
    assert "job_id" in response.json()["message"]


async def test_unknown_path_is_404_json(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert "code" in response.json()


async def test_health_reports_serving(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "SERVING"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": [1], "operation": "square_sum", "priority": 5}, "priority"),
        ({"data": [1], "operaton": "square_sum"}, "operaton"),
        ({"data": [1], "operation": "square_sum", "nested": {"data": 1}}, "nested"),
    ],
)
async def test_unknown_body_fields_are_400_naming_them(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await http.post("/api/v1/jobs/", json=body)

    assert response.status_code == 400
    assert response.json()["code"] == 3
    assert f'unknown field "{field}"' in response.json()["message"]


async def test_known_fields_pass_the_unknown_field_check_even_in_big_bodies(
    http: httpx.AsyncClient,
) -> None:
    body = {"request_id": str(uuid.uuid4()), "operation": "cube_sum", "data": [0.5] * 900}

    response = await http.post("/api/v1/jobs", content=json.dumps(body, indent=2))

    assert response.status_code == 201


# --- Batch submit ---------------------------------------------------------------------------

BATCH = "/api/v1/jobs:batchSubmit"


async def test_batch_submit_answers_201_with_the_jobs_in_request_order(
    http: httpx.AsyncClient,
) -> None:
    operations = ["square_sum", "cube_sum", "square_sum"]
    body = {
        "requests": [
            {"data": [index + 1, 2], "operation": operation, "request_id": str(uuid.uuid4())}
            for index, operation in enumerate(operations)
        ]
    }

    response = await http.post(BATCH, json=body)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    jobs = response.json()["jobs"]
    assert [set(job) for job in jobs] == [JOB_FIELDS] * 3
    assert [job["operation"] for job in jobs] == operations
    assert all(job["status"] == "PENDING" for job in jobs)
    results = [(await _result_when_final(http, job["id"]))["result"] for job in jobs]
    assert results == [{"result": 5}, {"result": 16}, {"result": 13}]
    # The same batch again: the same jobs.
    again = await http.post(BATCH, json=body)
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in jobs]


@pytest.mark.parametrize(
    ("requests", "field"),
    [
        (
            [{"data": [1], "operation": "square_sum"}, {"data": ["NaN"], "operation": "cube_sum"}],
            "requests[1].data[0]",
        ),
        ([{"data": [1], "operation": "square_sum"}, {"data": [1]}], "requests[1].operation"),
        ([], "requests"),
    ],
)
async def test_an_invalid_batch_is_400_naming_the_field_in_its_request(
    http: httpx.AsyncClient, requests: list[dict[str, Any]], field: str
) -> None:
    response = await http.post(BATCH, json={"requests": requests})

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 3
    bad_request = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert [v["field"] for v in bad_request[0]["field_violations"]] == [field]


@pytest.mark.parametrize(
    ("body", "field", "known"),
    [
        ({"requests": [], "atomic": True}, "atomic", "requests"),
        (
            {
                "requests": [{"data": [1], "operation": "square_sum"}] * 3
                + [{"data": [1], "operation": "square_sum", "priority": 1}]
            },
            "requests[3].priority",
            "data, operation, request_id",
        ),
    ],
)
async def test_unknown_batch_fields_are_400_naming_them(
    http: httpx.AsyncClient, body: dict[str, Any], field: str, known: str
) -> None:
    response = await http.post(BATCH, json=body)

    assert response.status_code == 400
    assert response.json() == {
        "code": 3,
        "message": f'unknown field "{field}" in the request body; known fields: {known}',
    }


async def test_a_batch_has_no_idempotency_key_header_of_its_own(http: httpx.AsyncClient) -> None:
    response = await http.post(
        BATCH,
        json={"requests": [{"data": [1], "operation": "square_sum"}]},
        headers={"idempotency-key": str(uuid.uuid4())},
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]
