"""The REST API's OpenAPI 3.1 document and docs page, generated from the contract's descriptor set.

Envoy transcodes REST with the descriptor set, so the document is derived from that same file at
build time (`make proto` writes it beside the descriptor) and never written by hand: paths and
parameters from the `google.api.http` rules, schemas from the messages in the proto3 JSON mapping
as the gateway prints it (proto field names, enum value names, 64-bit integers as strings,
Timestamps as RFC 3339 strings), required and read-only fields from `google.api.field_behavior`,
and descriptions from the proto comments (the descriptor set keeps source info).

What the descriptor cannot say comes from the gateway and the server and is listed here: the 201
of the submit routes, the error statuses Envoy maps gRPC codes to, the headers the server reads and
sends, the google.rpc detail types the server sends, and the bearer credential every operation
needs (which gives Swagger UI its Authorize button).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Imported for their side effect too: parsing the descriptor set then fills in these extensions.
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from gateway.config import (
    BATCH_SUBMIT_PATH,
    DOCS_PATH,
    OPENAPI_PATH,
    SERVICES,
    SUBMIT_PATH_REGEX,
)

OPENAPI_VERSION = "3.1.0"
# The gateway serves its web folder at the root: these names are the URL paths.
OPENAPI_FILE = OPENAPI_PATH.removeprefix("/")
# A folder holding index.html, so that `/docs` and `/docs/` both find the page.
DOCS_FOLDER = DOCS_PATH.removeprefix("/")

# The google.rpc details the server attaches to errors (server/errors.py), documented as the
# possible items of `details`.
ERROR_DETAIL_TYPES = (
    "google.rpc.ErrorInfo",
    "google.rpc.BadRequest",
    "google.rpc.PreconditionFailure",
    "google.rpc.QuotaFailure",
    "google.rpc.RetryInfo",
)
STATUS_TYPE = "google.rpc.Status"
TYPE_URL_PREFIX = "type.googleapis.com/"

# Every operation needs a credential (server.auth checks it on every call): an HTTP bearer scheme,
# which Swagger UI offers under its Authorize button and then sends with "Try it out".
SECURITY_SCHEME = "bearerAuth"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An API key made by AdminService (`jobs keys create`), or a JWT of the configured "
            "identity provider, sent as `Authorization: Bearer <token>`. Its tenant owns the jobs "
            "it submits and is the only one whose jobs it can see; its scopes say what it may do: "
            "`jobs.read`, `jobs.write` (which includes reading), `admin` (the keys)."
        ),
    }
}
# Statuses every operation may answer, whatever its comment says: no or a bad credential, a
# missing scope, a caller over its request rate.
ACCESS_STATUSES = (401, 403, 429)
_RETRY_AFTER = (
    "Whole seconds to wait before calling again (RFC 9110), sent whenever the error carries a "
    "RetryInfo (an exhausted quota has none: it passes as jobs finish)."
)
# Response headers the server sends with these statuses (as trailing metadata, which the
# transcoder turns into HTTP headers): status -> {header: its description}.
STATUS_HEADERS: dict[int, dict[str, str]] = {
    401: {
        "WWW-Authenticate": 'The scheme to authenticate with (RFC 6750): `Bearer realm="jobs"`.',
    },
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}

# Request headers the server reads on REST calls (Envoy passes headers on as gRPC metadata):
# method -> (header, the request field it stands in for, whose comment describes it).
HEADER_PARAMETERS: dict[str, tuple[tuple[str, str], ...]] = {
    "SubmitJob": (("Idempotency-Key", "request_id"),),
    "WatchJob": (("Last-Event-ID", "after_sequence"),),
    "WatchJobs": (("Last-Event-ID", "after_cursor"),),
}

# The transcoder's gRPC code -> HTTP status mapping (convert_grpc_status), for the codes a
# method's comment names.
GRPC_CODE_STATUSES: dict[str, int] = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# What the statuses this API answers mean to a REST client (others just name their codes).
STATUS_DESCRIPTIONS: dict[int, str] = {
    400: (
        "INVALID_ARGUMENT or FAILED_PRECONDITION: the request is invalid or not allowed in the "
        "current state, or the gateway could not parse it (malformed JSON, a wrong type, an "
        "unknown query parameter or enum value). When the server decided, `details` has a "
        "BadRequest naming every offending field."
    ),
    401: (
        "UNAUTHENTICATED: the request has no credential, or one that is malformed, unknown, "
        "expired or revoked. The message says which."
    ),
    403: (
        "PERMISSION_DENIED: the credential is valid but lacks the scope this operation needs; "
        "the ErrorInfo detail names it."
    ),
    404: (
        "NOT_FOUND: nothing has the id in the path (or it was deleted after its retention, or it "
        "belongs to another tenant, which is answered exactly the same)."
    ),
    409: "ALREADY_EXISTS: the idempotency key was already used for a different request.",
    413: "RESOURCE_EXHAUSTED: the request body is larger than the gateway accepts.",
    429: (
        "RESOURCE_EXHAUSTED: the credential is over its request rate (RetryInfo says when to "
        "call again, as does `Retry-After`), or its tenant already has its maximum of unfinished "
        "jobs (QuotaFailure)."
    ),
    503: (
        "UNAVAILABLE: the service cannot take the request now and did nothing; retry after the "
        "delay in the RetryInfo detail."
    ),
}
DEFAULT_ERROR_DESCRIPTION = "Any other error, in the same google.rpc.Status shape."

_Field = descriptor_pb2.FieldDescriptorProto
_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
# proto3 JSON prints 64-bit integers as strings: JavaScript numbers cannot hold them.
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    _Field.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _Field.TYPE_FLOAT: {"type": "number", "format": "float"},
    **dict.fromkeys((_Field.TYPE_INT32, _Field.TYPE_SINT32, _Field.TYPE_SFIXED32), _INT32),
    **dict.fromkeys((_Field.TYPE_UINT32, _Field.TYPE_FIXED32), _UINT32),
    **dict.fromkeys((_Field.TYPE_INT64, _Field.TYPE_SINT64, _Field.TYPE_SFIXED64), _INT64),
    **dict.fromkeys((_Field.TYPE_UINT64, _Field.TYPE_FIXED64), _UINT64),
    _Field.TYPE_BOOL: {"type": "boolean"},
    _Field.TYPE_STRING: {"type": "string"},
    _Field.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

# Well-known types have their own JSON forms in the proto3 mapping.
_WRAPPED = {
    "DoubleValue": _Field.TYPE_DOUBLE,
    "FloatValue": _Field.TYPE_FLOAT,
    "Int64Value": _Field.TYPE_INT64,
    "UInt64Value": _Field.TYPE_UINT64,
    "Int32Value": _Field.TYPE_INT32,
    "UInt32Value": _Field.TYPE_UINT32,
    "BoolValue": _Field.TYPE_BOOL,
    "StringValue": _Field.TYPE_STRING,
    "BytesValue": _Field.TYPE_BYTES,
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    **{f"google.protobuf.{name}": _SCALARS[kind] for name, kind in _WRAPPED.items()},
}

# FileDescriptorProto / DescriptorProto / ... field numbers, for source-info paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_HTTP_VERBS = ("get", "put", "post", "delete", "patch")
_PATH_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class _Message:
    name: str  # within its package: `Job`, `BadRequest.FieldViolation`
    proto: descriptor_pb2.DescriptorProto
    comment: str
    field_comments: dict[str, str]
    own: bool  # from the contract's package, not a dependency


@dataclass(frozen=True)
class _Enum:
    name: str
    proto: descriptor_pb2.EnumDescriptorProto
    comment: str
    value_comments: dict[str, str]
    own: bool


@dataclass(frozen=True)
class _Method:
    proto: descriptor_pb2.MethodDescriptorProto
    comment: str


@dataclass(frozen=True)
class _Service:
    name: str
    package: str
    comment: str
    methods: list[_Method]


@dataclass
class _Contract:
    """Every message, enum and service of a descriptor set by full name, with its comments."""

    messages: dict[str, _Message] = field(default_factory=dict)
    enums: dict[str, _Enum] = field(default_factory=dict)
    services: dict[str, _Service] = field(default_factory=dict)

    @classmethod
    def read(cls, descriptor_set: descriptor_pb2.FileDescriptorSet, *, package: str) -> _Contract:
        contract = cls()
        for file in descriptor_set.file:
            _FileReader(contract, file, own=file.package == package).read()
        return contract


class _FileReader:
    """Adds one file's definitions to a contract, each with the comment at its source-info path."""

    def __init__(
        self, contract: _Contract, file: descriptor_pb2.FileDescriptorProto, *, own: bool
    ) -> None:
        self.contract = contract
        self.file = file
        self.own = own
        self.comments = {
            tuple(location.path): _clean(location.leading_comments)
            for location in file.source_code_info.location
        }

    def read(self) -> None:
        for index, message in enumerate(self.file.message_type):
            self._message(message, message.name, (_FILE_MESSAGE, index))
        for index, enum in enumerate(self.file.enum_type):
            self._enum(enum, enum.name, (_FILE_ENUM, index))
        for index, service in enumerate(self.file.service):
            path = (_FILE_SERVICE, index)
            self.contract.services[self._full(service.name)] = _Service(
                name=service.name,
                package=self.file.package,
                comment=self._comment(path),
                methods=[
                    _Method(method, self._comment((*path, _SERVICE_METHOD, number)))
                    for number, method in enumerate(service.method)
                ],
            )

    def _full(self, name: str) -> str:
        return f"{self.file.package}.{name}" if self.file.package else name

    def _comment(self, path: tuple[int, ...]) -> str:
        return self.comments.get(path, "")

    def _message(
        self, message: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]
    ) -> None:
        self.contract.messages[self._full(name)] = _Message(
            name=name,
            proto=message,
            comment=self._comment(path),
            field_comments={
                f.name: self._comment((*path, _MESSAGE_FIELD, i))
                for i, f in enumerate(message.field)
            },
            own=self.own,
        )
        for index, nested in enumerate(message.nested_type):
            self._message(nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, index))
        for index, enum in enumerate(message.enum_type):
            self._enum(enum, f"{name}.{enum.name}", (*path, _MESSAGE_ENUM, index))

    def _enum(
        self, enum: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]
    ) -> None:
        self.contract.enums[self._full(name)] = _Enum(
            name=name,
            proto=enum,
            comment=self._comment(path),
            value_comments={
                v.name: self._comment((*path, _ENUM_VALUE, i)) for i, v in enumerate(enum.value)
            },
            own=self.own,
        )


def _clean(comment: str) -> str:
    """A proto comment as Markdown: the one space after `//` removed, outer blank lines dropped."""
    lines = [line.removeprefix(" ") for line in comment.splitlines()]
    return "\n".join(lines).strip()


def _first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0].replace("\n", " ")


def _summary(comment: str) -> str:
    """The first sentence of a method's comment."""
    paragraph = _first_paragraph(comment)
    sentence = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    return sentence.rstrip(".")


def _behaviors(proto: _Field) -> set[int]:
    return set(proto.options.Extensions[field_behavior_pb2.field_behavior])


def _type_name(name: str) -> str:
    """A full proto name without the descriptor's leading dot."""
    return name.removeprefix(".")


def _is_unspecified(value: descriptor_pb2.EnumValueDescriptorProto) -> bool:
    """AIP-126's zero value: a sentinel meaning "not set", never a value a client sends or gets."""
    return value.number == 0 and value.name.endswith("_UNSPECIFIED")


class _Schemas:
    """Builds `components/schemas` as operations reference messages.

    A message's `required` list depends on the direction: in a request it is the fields marked
    REQUIRED; in a response it is the fields the gateway always prints
    (`always_print_primitive_fields`: scalars, enums, lists and maps without explicit presence).
    """

    def __init__(self, contract: _Contract) -> None:
        self.contract = contract
        self.components: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}  # component name -> full proto name
        self._directions: dict[str, str] = {}  # full proto name -> "request" or "response"

    def ref(self, full_name: str, *, direction: str) -> dict[str, Any]:
        """A `$ref` to the component of a message or enum, building it on first use."""
        if full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[full_name])
        name = self._component_name(full_name)
        if full_name in self.contract.enums:
            if name not in self.components:
                self.components[name] = self._enum(self.contract.enums[full_name])
            return {"$ref": f"#/components/schemas/{name}"}
        seen = self._directions.setdefault(full_name, direction)
        if seen != direction:
            raise ValueError(
                f"{full_name} is used in both requests and responses; "
                "the generator would need a schema for each"
            )
        if name not in self.components:
            self.components[name] = {}  # placeholder, so recursive messages terminate
            self.components[name] = self.message(full_name, direction=direction)
        return {"$ref": f"#/components/schemas/{name}"}

    def _component_name(self, full_name: str) -> str:
        # Names without the package read best in Swagger UI (`Job`, `BadRequest.FieldViolation`);
        # qualify only on a clash.
        definition = self.contract.messages.get(full_name) or self.contract.enums[full_name]
        owner = self._names.setdefault(definition.name, full_name)
        return definition.name if owner == full_name else full_name

    def message(
        self, full_name: str, *, direction: str, without: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The object schema of a message, leaving out the fields in `without` (path variables)."""
        message = self.contract.messages[full_name]
        skipped = set(without)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for proto in message.proto.field:
            if proto.name in skipped:
                continue
            properties[proto.name] = self.field(message, proto, direction=direction)
            if self._required(proto, direction=direction):
                required.append(proto.name)
        schema: dict[str, Any] = {"type": "object"}
        description = message.comment if message.own else _first_paragraph(message.comment)
        if description:
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        return schema

    def _required(self, proto: _Field, *, direction: str) -> bool:
        if direction == "request":
            return field_behavior_pb2.REQUIRED in _behaviors(proto)
        if proto.label == _Field.LABEL_REPEATED:
            return True
        has_presence = (
            proto.type == _Field.TYPE_MESSAGE
            or proto.proto3_optional
            or proto.HasField("oneof_index")
        )
        return not has_presence

    def field(self, message: _Message, proto: _Field, *, direction: str) -> dict[str, Any]:
        """A field's schema with its comment and behaviours."""
        schema = self._value(proto, direction=direction)
        entry = self._map_entry(proto)
        if entry is not None:
            _, value = entry.field
            schema = {
                "type": "object",
                "additionalProperties": self._value(value, direction=direction),
            }
        elif proto.label == _Field.LABEL_REPEATED:
            schema = {"type": "array", "items": schema}
        description = message.field_comments.get(proto.name, "")
        if description:
            schema["description"] = description if message.own else _first_paragraph(description)
        behaviors = _behaviors(proto)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        return schema

    def _map_entry(self, proto: _Field) -> descriptor_pb2.DescriptorProto | None:
        if proto.type != _Field.TYPE_MESSAGE:
            return None
        message = self.contract.messages.get(_type_name(proto.type_name))
        if message is None or not message.proto.options.map_entry:
            return None
        return message.proto

    def _value(self, proto: _Field, *, direction: str) -> dict[str, Any]:
        """The schema of one value of the field (one element of a repeated field)."""
        if proto.type in (
            _Field.TYPE_MESSAGE,
            _Field.TYPE_ENUM,
        ):
            if self._map_entry(proto) is not None:
                return {}
            return self.ref(_type_name(proto.type_name), direction=direction)
        if proto.type not in _SCALARS:
            raise ValueError(f"field {proto.name}: unsupported type {proto.type}")
        return dict(_SCALARS[proto.type])

    def _enum(self, enum: _Enum) -> dict[str, Any]:
        values = [v for v in enum.proto.value if not _is_unspecified(v)]
        lines = [enum.comment] if enum.comment else []
        lines += [
            f"- `{v.name}`: {_first_paragraph(enum.value_comments.get(v.name, ''))}".rstrip()
            for v in values
        ]
        return {"type": "string", "enum": [v.name for v in values], "description": "\n".join(lines)}

    def error(self) -> dict[str, Any]:
        """The google.rpc.Status schema, its `details` narrowed to the types the server sends."""
        status = self.ref(STATUS_TYPE, direction="response")
        component = self.components[status["$ref"].rsplit("/", 1)[-1]]
        component["description"] = (
            "An error: the google.rpc.Status of the failed call, with the HTTP status the gateway "
            "maps its code to. Errors the gateway raises itself have the same shape, without "
            "`details`."
        )
        # The gateway prints details only when there are some, and its own errors have none.
        component["required"] = ["code", "message"]
        details = component["properties"]["details"]
        details["items"] = {"anyOf": [self._detail(name) for name in ERROR_DETAIL_TYPES]}
        return status

    def _detail(self, full_name: str) -> dict[str, Any]:
        """A detail as the gateway prints an Any: the message's fields plus its type URL."""
        name = self._component_name(full_name)
        if name not in self.components:
            schema = self.message(full_name, direction="response")
            type_url = f"{TYPE_URL_PREFIX}{full_name}"
            schema["properties"] = {"@type": {"const": type_url}, **schema["properties"]}
            schema["required"] = ["@type"]
            self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}


def build_openapi(
    descriptor_set: descriptor_pb2.FileDescriptorSet, *, services: Sequence[str] = SERVICES
) -> dict[str, Any]:
    """The OpenAPI document of the services' HTTP rules, as the gateway serves them.

    The first service names the API and opens its description; each has a tag of its own.
    """
    package = services[0].rpartition(".")[0]
    contract = _Contract.read(descriptor_set, package=package)
    missing = [service for service in services if service not in contract.services]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in the descriptor set")
    described = [contract.services[service] for service in services]
    schemas = _Schemas(contract)
    error = schemas.error()
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for service, owner in zip(services, described, strict=True):
        for method in owner.methods:
            for number, (verb, template, rule) in enumerate(_bindings(method), start=1):
                path = _PATH_VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template)
                if verb in paths.get(path, {}):
                    raise ValueError(f"{verb.upper()} {path} is bound twice")
                operation = _operation(
                    method,
                    path=path,
                    verb=verb,
                    rule=rule,
                    service=service,
                    schemas=schemas,
                    error=error,
                    tag=owner.name,
                )
                if number > 1:  # an additional binding: operation ids must be unique
                    operation["operationId"] += str(number)
                if operation["operationId"] in operation_ids:
                    raise ValueError(f"two operations are called {operation['operationId']}")
                operation_ids.add(operation["operationId"])
                paths.setdefault(path, {})[verb] = operation
    first = described[0]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{first.name} REST API",
            "version": package.rsplit(".", 1)[-1],
            "description": _api_description(first),
        },
        # Relative: "Try it out" calls the gateway that served the document.
        "servers": [{"url": "/"}],
        "tags": [{"name": owner.name, "description": owner.comment} for owner in described],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _api_description(service: _Service) -> str:
    return "\n\n".join(
        [
            service.comment,
            f"This document is generated from the `{service.package}` protobuf contract, which "
            "also defines the gRPC API. Native gRPC and gRPC-Web are served on this same port. "
            "JSON follows the proto3 JSON mapping: field names as in the contract (snake_case; "
            "requests also accept lowerCamelCase), enum values as their names, 64-bit integers "
            "as strings, timestamps as RFC 3339 strings. Unset optional fields are left out of "
            "responses. Errors are a google.rpc.Status (`code`, `message`, `details`) with the "
            "HTTP status the gateway maps the gRPC code to.",
            "Every operation needs a credential, sent as `Authorization: Bearer <token>` (the "
            "Authorize button on this page keeps one for its requests): 401 without a valid one, "
            "403 without the scope the operation needs, 429 with `Retry-After` above the "
            "credential's request rate.",
        ]
    )


def _bindings(method: _Method) -> Iterator[tuple[str, str, http_pb2.HttpRule]]:
    """(verb, path template, rule) for the method's HTTP rule and its additional bindings."""
    options = method.proto.options
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    for binding in (rule, *rule.additional_bindings):
        pattern = binding.WhichOneof("pattern")
        if pattern in _HTTP_VERBS:
            yield pattern, getattr(binding, pattern), binding
        elif pattern == "custom":
            yield binding.custom.kind.lower(), binding.custom.path, binding


def _operation(
    method: _Method,
    *,
    path: str,
    verb: str,
    rule: http_pb2.HttpRule,
    service: str,
    schemas: _Schemas,
    error: dict[str, Any],
    tag: str,
) -> dict[str, Any]:
    proto = method.proto
    if proto.client_streaming:
        raise ValueError(f"{proto.name}: client streaming has no REST mapping")
    request_name = _type_name(proto.input_type)
    request = schemas.contract.messages[request_name]
    fields = {f.name: f for f in request.proto.field}
    path_fields = _PATH_VARIABLE.findall(path)
    unknown = [name for name in path_fields if name not in fields]
    if unknown:
        raise ValueError(f"{proto.name}: path variables {unknown} are not top-level fields")
    parameters = [_parameter(request, fields[name], "path", schemas) for name in path_fields]
    bound = set(path_fields)
    if rule.body and rule.body != "*":
        bound.add(rule.body)
    if rule.body != "*":
        parameters += [
            _parameter(request, fields[name], "query", schemas)
            for name in fields
            if name not in bound and _is_query_field(fields[name])
        ]
    parameters += [
        _header_parameter(request, header, fields[stands_for], schemas)
        for header, stands_for in HEADER_PARAMETERS.get(proto.name, ())
    ]
    operation: dict[str, Any] = {
        "tags": [tag],
        "operationId": proto.name,
        "summary": _summary(method.comment),
        "description": _operation_description(method, path=path, verb=verb, service=service),
        "security": [{SECURITY_SCHEME: []}],
    }
    if parameters:
        operation["parameters"] = parameters
    if rule.body:
        operation["requestBody"] = _request_body(rule, request_name, path_fields, schemas)
    operation["responses"] = _responses(
        method, path=path, verb=verb, rule=rule, schemas=schemas, error=error
    )
    return operation


def _is_query_field(proto: _Field) -> bool:
    """Scalars, enums and lists of them: what the transcoder reads from a query string."""
    return proto.type != _Field.TYPE_MESSAGE


def _parameter(request: _Message, proto: _Field, where: str, schemas: _Schemas) -> dict[str, Any]:
    """A path or query parameter bound to a request field."""
    schema = schemas.field(request, proto, direction="request")
    description = schema.pop("description", "")
    parameter: dict[str, Any] = {
        "name": proto.name,
        "in": where,
        "required": where == "path" or field_behavior_pb2.REQUIRED in _behaviors(proto),
        "schema": schema,
    }
    if description:
        parameter["description"] = description
    if proto.label == _Field.LABEL_REPEATED:
        # `?data=1&data=2`: the transcoder reads a repeated field from repeated parameters.
        parameter["style"] = "form"
        parameter["explode"] = True
    return parameter


def _header_parameter(
    request: _Message, header: str, stands_for: _Field, schemas: _Schemas
) -> dict[str, Any]:
    """A request header the server reads in place of a field, described by that field."""
    parameter = _parameter(request, stands_for, "header", schemas)
    parameter["name"] = header
    parameter["required"] = False
    parameter["description"] = f"Works like the `{stands_for.name}` field: " + parameter.get(
        "description", ""
    )
    return parameter


def _is_submit(verb: str, path: str) -> bool:
    """The submit route (at the collection, with or without a trailing slash)."""
    return verb == "post" and re.fullmatch(SUBMIT_PATH_REGEX, path) is not None


def _is_create(verb: str, path: str) -> bool:
    """The submit routes, which the gateway answers with 201 instead of the transcoder's 200."""
    return _is_submit(verb, path) or (verb == "post" and path == BATCH_SUBMIT_PATH)


def _operation_description(method: _Method, *, path: str, verb: str, service: str) -> str:
    parts = [method.comment]
    if _is_submit(verb, path):
        parts.append(
            f"Also accepted at `{path}/` (with a trailing slash), the address the first "
            "version of this API used."
        )
    if method.proto.server_streaming:
        parts.append(
            "Each Server-Sent Event is one line `data: <message as JSON>` and a blank line. "
            "The gateway writes no `id:` lines, so `EventSource` does not resume by itself."
        )
    parts.append(f"gRPC: `{service}/{method.proto.name}`.")
    return "\n\n".join(part for part in parts if part)


def _request_body(
    rule: http_pb2.HttpRule, request_name: str, path_fields: list[str], schemas: _Schemas
) -> dict[str, Any]:
    request = schemas.contract.messages[request_name]
    if rule.body == "*":
        schema = schemas.message(request_name, direction="request", without=path_fields)
    else:
        (proto,) = [f for f in request.proto.field if f.name == rule.body]
        schema = schemas.field(request, proto, direction="request")
    body: dict[str, Any] = {
        "required": bool(schema.get("required")) or rule.body != "*",
        "content": {"application/json": {"schema": schema}},
    }
    example = _example(schema, schemas)
    if example:
        body["content"]["application/json"]["example"] = example
    return body


def _example(schema: dict[str, Any], schemas: _Schemas) -> dict[str, Any]:
    """A body with the required fields only, so "Try it out" starts from a request that works.

    Swagger UI's own example would fill every field, including the idempotency key.
    """
    example: dict[str, Any] = {}
    for name in schema.get("required", []):
        example[name] = _sample(schema["properties"][name], schemas)
    return example


def _sample(schema: dict[str, Any], schemas: _Schemas, number: int = 1) -> Any:
    if "$ref" in schema:
        return _sample(schemas.components[schema["$ref"].rsplit("/", 1)[-1]], schemas, number)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "array":
        return [_sample(schema["items"], schemas, n) for n in (1, 2, 3)]
    if kind == "object":
        return _example(schema, schemas)
    return {"number": number, "integer": number, "boolean": True}.get(str(kind), "string")


def _responses(
    method: _Method,
    *,
    path: str,
    verb: str,
    rule: http_pb2.HttpRule,
    schemas: _Schemas,
    error: dict[str, Any],
) -> dict[str, Any]:
    proto = method.proto
    response_name = _type_name(proto.output_type)
    if rule.response_body:
        response = schemas.contract.messages[response_name]
        (body_field,) = [f for f in response.proto.field if f.name == rule.response_body]
        schema = schemas.field(response, body_field, direction="response")
    else:
        schema = schemas.ref(response_name, direction="response")
    created = _is_create(verb, path)
    success: dict[str, Any]
    if proto.server_streaming:
        # Each event as the SSE parser sees it, its `data` field holding one message as JSON:
        # the pre-3.2 reading of `schema` for `text/event-stream`, where 3.2 has `itemSchema`.
        event = {
            "type": "object",
            "description": f"One Server-Sent Event: `data:` holds one {response_name} as JSON.",
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema,
                }
            },
            "required": ["data"],
        }
        success = {
            "description": "A stream of Server-Sent Events, one per message, until the stream ends.",
            "content": {"text/event-stream": {"schema": event}},
        }
    else:
        success = {
            "description": "Created." if created else "OK.",
            "content": {"application/json": {"schema": schema}},
        }
    statuses = {400, 503, *ACCESS_STATUSES}
    if _PATH_VARIABLE.search(path):
        statuses.add(404)
    if rule.body:
        statuses.add(413)
    statuses.update(GRPC_CODE_STATUSES[code] for code in _documented_errors(method.comment))
    responses: dict[str, Any] = {"201" if created else "200": success}
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _status_description(status),
            "content": {"application/json": {"schema": error}},
        }
        if status in STATUS_HEADERS:
            responses[str(status)]["headers"] = {
                name: {"description": description, "schema": {"type": "string"}}
                for name, description in STATUS_HEADERS[status].items()
            }
    responses["default"] = {
        "description": DEFAULT_ERROR_DESCRIPTION,
        "content": {"application/json": {"schema": error}},
    }
    return responses


def _documented_errors(comment: str) -> list[str]:
    """The gRPC codes named in the comment's `Errors:` paragraph (the contract's convention)."""
    paragraphs = [p for p in comment.split("\n\n") if p.startswith("Errors:")]
    return re.findall(r"\b(" + "|".join(GRPC_CODE_STATUSES) + r")\b", " ".join(paragraphs))


def _status_description(status: int) -> str:
    if status in STATUS_DESCRIPTIONS:
        return STATUS_DESCRIPTIONS[status]
    return (
        " or ".join(code for code, mapped in GRPC_CODE_STATUSES.items() if mapped == status) + "."
    )


def docs_page(*, title: str) -> str:
    """The Swagger UI page: the assets Envoy serves under DOCS_PATH, loading OPENAPI_PATH."""
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(title)}</title>
  <link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: {json.dumps(OPENAPI_PATH)},
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // The Authorize button's credential survives a reload (in this origin's localStorage,
      // until Logout), instead of being asked for again.
      persistAuthorization: true,
    }});
  </script>
</body>
</html>
"""


def write_web_files(descriptor_path: Path, out_dir: Path) -> None:
    """Write OPENAPI_FILE and DOCS_FOLDER/index.html for the descriptor set at `descriptor_path`."""
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes())
    document = build_openapi(descriptor_set)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OPENAPI_FILE).write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    docs = out_dir / DOCS_FOLDER
    docs.mkdir(exist_ok=True)
    (docs / "index.html").write_text(docs_page(title=document["info"]["title"]), encoding="utf-8")
