"""The submit route's script (gateway/submit.lua) in the real Envoy: body keys and the 201.

Bodies are written as raw JSON text, so that each test controls exactly how a key is escaped.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.eventually import eventually

SUBMIT = "/api/v1/jobs"
JSON = {"content-type": "application/json"}


async def _post(http: httpx.AsyncClient, body: str, path: str = SUBMIT) -> httpx.Response:
    return await http.post(path, content=body.encode(), headers=JSON)


async def _final(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        response = await http.get(f"/api/v1/jobs/{job_id}/result")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    return await eventually(probe, until=lambda body: body["status"] in ("SUCCESS", "FAILED"))


@pytest.mark.parametrize(
    "data_key",
    [
        r"d\u0061ta",
        r"\u0064\u0061\u0074\u0061",
        r"d\u0061\u0074a",
    ],
)
async def test_an_escaped_key_is_accepted_exactly_like_the_plain_one(
    http: httpx.AsyncClient, data_key: str
) -> None:
    plain = await _post(http, '{"data": [1, 2], "operation": "square_sum"}')
    escaped = await _post(http, f'{{"{data_key}": [1, 2], "operation": "square_sum"}}')

    assert plain.status_code == escaped.status_code == 201, escaped.text
    assert set(escaped.json()) == set(plain.json())
    assert escaped.json()["operation"] == "square_sum"
    # The transcoder read the numbers from the escaped key too.
    assert (await _final(http, escaped.json()["id"]))["result"] == {"result": 5}
    assert (await _final(http, plain.json()["id"]))["result"] == {"result": 5}


async def test_every_field_may_be_escaped(http: httpx.AsyncClient) -> None:
    request_id = str(uuid.uuid4())
    # Upper-case hex digits and a two-character escape (`\/` is `/`) inside a value.
    body = (
        rf'{{"\u0064ata": [3], "\u006Fperation": "cube_sum", '
        rf'"request\u005fid": "{request_id}\/x"}}'
    )

    first = await _post(http, body)
    again = await _post(http, body)

    assert first.status_code == again.status_code == 201, first.text
    # The same request_id gives the same job: the server received the escaped field.
    assert again.json()["id"] == first.json()["id"]
    assert (await _final(http, first.json()["id"]))["result"] == {"result": 27}


async def test_quotes_escaped_inside_a_value_do_not_start_a_key(http: httpx.AsyncClient) -> None:
    body = (
        r'{"request_id": "' + str(uuid.uuid4()) + r'\", \"priority\": \"1", '
        r'"data": [1], "operation": "square_sum"}'
    )

    response = await _post(http, body)

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        # Unknown once decoded; the message names the decoded key.
        (r"d\u0061tax", "datax"),
        (r"d\u0041ta", "dAta"),
        (r"data\u0000", "data?"),
        (r"d\/ata", "d?ata"),
        (r"da\"ta", "da?ta"),
        (r"\ud83d\ude00", "????"),
        # Invalid escapes are never a field name; the message shows the key as written.
        (r"d\qata", "d?qata"),
        (r"d\u061ta", "d?u061ta"),
        (r"\ud800data", "?ud800data"),
        (r"\udc00data", "?udc00data"),
    ],
)
async def test_an_unknown_or_invalid_key_is_400_naming_it(
    http: httpx.AsyncClient, key: str, shown: str
) -> None:
    response = await _post(http, f'{{"data": [1], "{key}": 1, "operation": "square_sum"}}')

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "code": 3,
        "message": f'unknown field "{shown}" in the request body; '
        "known fields: data, operation, request_id",
    }


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/", "/api/v1/jobs//"])
async def test_a_submit_answers_201_on_every_spelling_of_the_collection(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await _post(http, '{"data": [1], "operation": "square_sum"}', path)

    assert response.status_code == 201, response.text


async def test_errors_and_other_routes_keep_their_status(http: httpx.AsyncClient) -> None:
    request_id = str(uuid.uuid4())
    job = await _post(
        http, f'{{"data": [1], "operation": "square_sum", "request_id": "{request_id}"}}'
    )
    # The same request_id for a different job: ALREADY_EXISTS, still 409 after the script.
    conflict = await _post(
        http, f'{{"data": [2], "operation": "square_sum", "request_id": "{request_id}"}}'
    )
    listed = await http.get(SUBMIT, params={"page_size": 1})
    status = await http.get(f"/api/v1/jobs/{job.json()['id']}/status")

    assert job.status_code == 201
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["code"] == 6
    assert listed.status_code == 200
    assert status.status_code == 200


# --- The batch route: the same checks at the top level and in each request -------------------

BATCH = "/api/v1/jobs:batchSubmit"


async def test_a_batch_with_escaped_keys_is_accepted_and_answers_201(
    http: httpx.AsyncClient,
) -> None:
    body = (
        r'{"requ\u0065sts": [{"d\u0061ta": [1, 2], "operation": "square_sum"}, '
        r'{"data": [3], "\u006fperation": "cube_sum", "request_id": "a\", \"priority\": \"1"}]}'
    )

    response = await _post(http, body, BATCH)

    assert response.status_code == 201, response.text
    first, second = response.json()["jobs"]
    assert (await _final(http, first["id"]))["result"] == {"result": 5}
    assert (await _final(http, second["id"]))["result"] == {"result": 27}


@pytest.mark.parametrize(
    ("body", "shown", "known"),
    [
        ('{"requests": [], "d\\u0061ta": [1]}', "data", "requests"),
        # After a request whose numbers are skipped in one search, strings among them included.
        (
            '{"requests": [{"data": [' + ", ".join(["1.5e3"] * 500) + '], "operation": '
            '"square_sum"}, {"data": [1], "operation": "square_sum", "pri\\u006frity": 1}]}',
            "requests[1].priority",
            "data, operation, request_id",
        ),
        ('{"requests": [{"data": [1], "d\\qata": 1}]}', "requests[0].d?qata", "data, operation"),
    ],
)
async def test_an_unknown_key_anywhere_in_a_batch_is_400_naming_its_path(
    http: httpx.AsyncClient, body: str, shown: str, known: str
) -> None:
    response = await _post(http, body, BATCH)

    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith(f'unknown field "{shown}" in the request body; known fields: {known}')


async def test_objects_the_contract_does_not_describe_are_left_to_the_transcoder(
    http: httpx.AsyncClient,
) -> None:
    # Not a request (it is in `data`): its keys are not checked here, and the transcoder refuses
    # the object where a number belongs.
    response = await _post(http, '{"requests": [{"data": [{"priority": 1}]}]}', BATCH)

    assert response.status_code == 400
    assert "priority" not in response.json()["message"]
