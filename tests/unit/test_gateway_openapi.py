"""The OpenAPI generator's mapping rules, on a small contract built in memory (no I/O).

The served document of the real contract is checked end to end in tests/e2e/test_api_docs.py;
this contract exercises the types and HTTP rule forms the real one does not use.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    duration_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2
from openapi_spec_validator import validate

from gateway.openapi import build_openapi, docs_page

Field = descriptor_pb2.FieldDescriptorProto
SERVICE = "demo.v1.Shelf"
# A second service of the same contract, in the same document.
SECOND_SERVICE = "demo.v1.Librarian"


def _file(module_descriptor: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module_descriptor.CopyToProto(proto)
    return proto


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    kind: int,
    *,
    type_name: str = "",
    repeated: bool = False,
    behaviors: tuple[int, ...] = (),
) -> Field:
    field = message.field.add(name=name, number=len(message.field) + 1, type=kind)
    field.label = Field.LABEL_REPEATED if repeated else Field.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    field.options.Extensions[field_behavior_pb2.field_behavior].extend(behaviors)
    return field


def _comment(file: descriptor_pb2.FileDescriptorProto, path: list[int], text: str) -> None:
    location = file.source_code_info.location.add()
    location.path.extend(path)
    location.leading_comments = text


def _contract() -> descriptor_pb2.FileDescriptorSet:
    """demo.v1: one service with GET, additional bindings, a custom verb and a streaming call."""
    file = descriptor_pb2.FileDescriptorProto(
        name="demo/v1/shelf.proto", package="demo.v1", syntax="proto3"
    )
    book = file.message_type.add(name="Book")
    _field(book, "name", Field.TYPE_STRING, behaviors=(field_behavior_pb2.OUTPUT_ONLY,))
    _field(book, "pages", Field.TYPE_INT64)
    _field(book, "isbn", Field.TYPE_UINT64)
    _field(book, "cover", Field.TYPE_BYTES)
    _field(book, "tags", Field.TYPE_ENUM, type_name=".demo.v1.Tag", repeated=True)
    _field(book, "labels", Field.TYPE_MESSAGE, type_name=".demo.v1.Book.LabelsEntry", repeated=True)
    _field(book, "published", Field.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    _field(book, "loan", Field.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    _field(book, "author", Field.TYPE_MESSAGE, type_name=".demo.v1.Book.Author")
    rating = _field(book, "rating", Field.TYPE_FLOAT)
    rating.proto3_optional = True
    rating.oneof_index = 0
    book.oneof_decl.add(name="_rating")
    entry = book.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    _field(entry, "key", Field.TYPE_STRING)
    _field(entry, "value", Field.TYPE_INT32)
    author = book.nested_type.add(name="Author")
    _field(author, "name", Field.TYPE_STRING)
    tag = file.enum_type.add(name="Tag")
    tag.value.add(name="TAG_UNSPECIFIED", number=0)
    tag.value.add(name="FICTION", number=1)
    tag.value.add(name="POETRY", number=2)
    get = file.message_type.add(name="GetBookRequest")
    _field(get, "name", Field.TYPE_STRING, behaviors=(field_behavior_pb2.REQUIRED,))
    _field(get, "revision", Field.TYPE_INT32)
    _field(get, "fields", Field.TYPE_STRING, repeated=True)
    _field(get, "author", Field.TYPE_MESSAGE, type_name=".demo.v1.GetBookRequest.Filter")
    get.nested_type.add(name="Filter")
    shelve = file.message_type.add(name="ShelveRequest")
    _field(shelve, "shelf", Field.TYPE_STRING)
    _field(shelve, "title", Field.TYPE_STRING, behaviors=(field_behavior_pb2.REQUIRED,))
    _field(shelve, "copies", Field.TYPE_UINT32, behaviors=(field_behavior_pb2.REQUIRED,))

    service = file.service.add(name="Shelf")
    get_book = service.method.add(
        name="GetBook", input_type=".demo.v1.GetBookRequest", output_type=".demo.v1.Book"
    )
    rule = http_pb2.HttpRule(get="/v1/{name=books/*}")
    rule.additional_bindings.add(get="/v1/books/{name}:latest")
    get_book.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    shelve_book = service.method.add(
        name="ShelveBook", input_type=".demo.v1.ShelveRequest", output_type=".demo.v1.Book"
    )
    shelve_book.options.Extensions[annotations_pb2.http].CopyFrom(
        http_pb2.HttpRule(
            custom=http_pb2.CustomHttpPattern(kind="PUT", path="/v1/shelves/{shelf}"),
            body="*",
            response_body="author",
        )
    )
    follow = service.method.add(
        name="Follow",
        input_type=".demo.v1.GetBookRequest",
        output_type=".demo.v1.Book",
        server_streaming=True,
    )
    follow.options.Extensions[annotations_pb2.http].CopyFrom(
        http_pb2.HttpRule(get="/v1/{name}:follow")
    )
    service.method.add(  # no HTTP rule: gRPC only
        name="Internal", input_type=".demo.v1.GetBookRequest", output_type=".demo.v1.Book"
    )
    librarian = file.service.add(name="Librarian")
    lend = librarian.method.add(
        name="Lend", input_type=".demo.v1.GetBookRequest", output_type=".demo.v1.Book"
    )
    lend.options.Extensions[annotations_pb2.http].CopyFrom(
        http_pb2.HttpRule(post="/v1/{name}:lend", body="*")
    )

    _comment(file, [6, 0], " Shelf keeps books.\n")
    _comment(file, [6, 1], " Librarian lends them.\n")
    _comment(file, [6, 0, 2, 0], " GetBook returns one book. Or none.\n\n Errors: NOT_FOUND.\n")
    _comment(file, [6, 0, 2, 1], " ShelveBook puts a book away.\n\n CANCELLED is a word here.\n")
    _comment(file, [4, 0], " A book.\n\n Second paragraph.\n")
    _comment(file, [4, 0, 2, 1], " How many pages.\n")
    _comment(file, [5, 0, 2, 1], " Made up.\n")
    dependencies = [
        _file(module.DESCRIPTOR)
        for module in (any_pb2, duration_pb2, timestamp_pb2, status_pb2, error_details_pb2)
    ]
    return descriptor_pb2.FileDescriptorSet(file=[*dependencies, file])


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi(_contract(), services=(SERVICE,))


def _schemas(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"]
    return found


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)

    assert document["info"]["title"] == "Shelf REST API"
    assert document["info"]["version"] == "v1"
    assert document["info"]["description"].startswith("Shelf keeps books.")


def test_bindings_become_paths_without_variable_patterns(document: dict[str, Any]) -> None:
    operations = {
        (verb, path): operation["operationId"]
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    }

    assert operations == {
        ("get", "/v1/{name}"): "GetBook",
        ("get", "/v1/books/{name}:latest"): "GetBook2",
        ("put", "/v1/shelves/{shelf}"): "ShelveBook",
        ("get", "/v1/{name}:follow"): "Follow",
    }


def test_fields_not_in_the_path_are_query_parameters(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/{name}"]["get"]

    parameters = {(p["in"], p["name"]): p for p in operation["parameters"]}
    assert set(parameters) == {("path", "name"), ("query", "revision"), ("query", "fields")}
    assert parameters[("path", "name")]["required"] is True
    assert parameters[("query", "fields")]["schema"] == {
        "type": "array",
        "items": {"type": "string"},
    }
    assert parameters[("query", "fields")]["explode"] is True
    assert operation["summary"] == "GetBook returns one book"
    assert set(operation["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "404",
        "429",
        "503",
        "default",
    }


def test_a_whole_body_leaves_out_path_fields_and_the_response_body_can_be_a_field(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/v1/shelves/{shelf}"]["put"]

    body = operation["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"title", "copies"}
    assert schema["required"] == ["title", "copies"]
    assert body["required"] is True
    assert body["content"]["application/json"]["example"] == {"title": "string", "copies": 1}
    assert "parameters" not in operation or all(p["in"] != "query" for p in operation["parameters"])
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == (
        "#/components/schemas/Book.Author"
    )
    # Only the comment's `Errors:` paragraph names error codes.
    assert "499" not in operation["responses"]
    assert "413" in operation["responses"]


def test_scalars_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    book = _schemas(document)["Book"]
    properties = book["properties"]

    assert properties["pages"]["type"] == "string"  # int64: a JSON string
    assert properties["pages"]["format"] == "int64"
    assert properties["pages"]["description"] == "How many pages."
    assert properties["isbn"]["pattern"] == "^[0-9]+$"
    assert properties["cover"] == {"type": "string", "contentEncoding": "base64"}
    assert properties["tags"] == {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}}
    assert properties["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "int32"},
    }
    assert properties["published"] == {"type": "string", "format": "date-time"}
    assert properties["loan"]["type"] == "string"
    assert properties["name"]["readOnly"] is True
    assert book["description"] == "A book.\n\nSecond paragraph."
    # Always printed: scalars, enums, lists and maps; not messages or `optional` fields.
    assert book["required"] == ["name", "pages", "isbn", "cover", "tags", "labels"]


def test_enums_are_their_names_without_the_unspecified_value(document: dict[str, Any]) -> None:
    tag = _schemas(document)["Tag"]

    assert tag["enum"] == ["FICTION", "POETRY"]
    assert "- `FICTION`: Made up." in tag["description"]


def test_streams_are_server_sent_events(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/{name}:follow"]["get"]

    content = operation["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    data = content["text/event-stream"]["schema"]["properties"]["data"]
    assert data["contentSchema"] == {"$ref": "#/components/schemas/Book"}
    assert "Server-Sent Event" in operation["description"]


def test_errors_are_a_status_with_the_known_details(document: dict[str, Any]) -> None:
    status = _schemas(document)["Status"]

    assert status["required"] == ["code", "message"]
    assert [item["$ref"] for item in status["properties"]["details"]["items"]["anyOf"]] == [
        "#/components/schemas/ErrorInfo",
        "#/components/schemas/BadRequest",
        "#/components/schemas/PreconditionFailure",
        "#/components/schemas/QuotaFailure",
        "#/components/schemas/RetryInfo",
    ]
    assert _schemas(document)["RetryInfo"]["properties"]["@type"] == {
        "const": "type.googleapis.com/google.rpc.RetryInfo"
    }


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for item in document["paths"].values() for operation in item.values()]


def test_every_operation_needs_a_bearer_credential(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for operation in _operations(document):
        assert operation["security"] == [{"bearerAuth": []}], operation["operationId"]
    # Not document-wide: anything the gateway serves besides the services needs none.
    assert "security" not in document


def test_every_operation_documents_the_access_errors_and_their_headers(
    document: dict[str, Any],
) -> None:
    for operation in _operations(document):
        responses = operation["responses"]
        assert {"401", "403", "429"} <= set(responses), operation["operationId"]
        assert responses["401"]["description"].startswith("UNAUTHENTICATED")
        assert "Bearer" in responses["401"]["headers"]["WWW-Authenticate"]["description"]
        assert responses["403"]["description"].startswith("PERMISSION_DENIED")
        assert set(responses["429"]["headers"]) == {"Retry-After"}
        assert set(responses["503"]["headers"]) == {"Retry-After"}
        assert responses["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Status"
        }


def test_several_services_share_one_document_each_with_its_tag() -> None:
    document = build_openapi(_contract(), services=(SERVICE, SECOND_SERVICE))
    validate(document)

    assert document["info"]["title"] == "Shelf REST API"
    assert document["tags"] == [
        {"name": "Shelf", "description": "Shelf keeps books."},
        {"name": "Librarian", "description": "Librarian lends them."},
    ]
    lend = document["paths"]["/v1/{name}:lend"]["post"]
    assert lend["tags"] == ["Librarian"]
    assert lend["security"] == [{"bearerAuth": []}]
    assert "gRPC: `demo.v1.Librarian/Lend`." in lend["description"]


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match=r"demo\.v1\.Nothing not in the descriptor set"):
        build_openapi(_contract(), services=(SERVICE, "demo.v1.Nothing"))


def test_the_docs_page_loads_the_document_from_the_gateway() -> None:
    page = docs_page(title="A <b> title")

    assert "<title>A &lt;b&gt; title</title>" in page
    assert 'url: "/openapi.json"' in page
    assert '<script src="/docs/swagger-ui-bundle.js"></script>' in page
    # The Authorize button's credential is kept across reloads of the page.
    assert "persistAuthorization: true," in page
