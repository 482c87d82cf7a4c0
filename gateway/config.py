"""Envoy v3 bootstrap for the job service gateway, built as a plain dict.

One listener serves REST (transcoded to gRPC with the contract's descriptor), native gRPC and
gRPC-Web (for browsers, with CORS) on the same port, and Envoy itself answers `GET /health` from
active gRPC health checks of the upstream servers. It also serves the API's OpenAPI document
(`/openapi.json`, generated from the descriptor by `make proto`) and Swagger UI (`/docs`, from
the npm package `swagger-ui-dist`) as static files. Building the config in Python gives local
runs, tests and the container image one typed source in which only hosts and ports differ.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE = "jobs.v1.JobService"
CLUSTER = "jobs_grpc"
HEALTH_PATH = "/health"
REST_PREFIX = "/api/"
# Envoy's transcoder accepts `/api/v1/jobs`, `/api/v1/jobs/` and `/api/v1/jobs//` for the submit
# mapping, so the route that turns its 200 into 201 must match all of them.
SUBMIT_PATH_REGEX = "^/api/v1/jobs/*$"
WATCH_PATH_REGEX = "^/api/v1/jobs/[^/]+/watch/*$"
GRPC_WATCH_PATH = f"/{SERVICE}/WatchJob"
# Every REST path below the collection addresses one job through the `{job_id}` path variable
# (`/api/v1/jobs/{job_id}/status`, `/api/v1/jobs/{job_id}:cancel`, ...).
JOB_PATH_REGEX = "^/api/v1/jobs/[^/]+(/.*)?$"
PATH_VARIABLE = "job_id"

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# The generated files (gateway/openapi.py) sit in the web folder under their URL paths.
WEB_PATH_REGEX = "^/(openapi\\.json|docs/?)$"
# What the docs page loads from the `swagger-ui-dist` package: only these are served.
SWAGGER_UI_PACKAGE = Path("node_modules") / "swagger-ui-dist"
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
STATIC_CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "png": "image/png",
}
# Envoy reads static files on a small thread pool, off its event loops.
FILE_THREADS = 1

# gRPC metadata keys may only hold [0-9a-z_.-], and the gRPC server fails a call that carries any
# other key with INTERNAL (a 500 over REST), so such request headers are dropped, pseudo-headers
# (`:path`) excepted. The regex matches a whole header name.
INVALID_METADATA_KEY_REGEX = "[^0-9a-z_.:-].*|[0-9a-z_.-]+[^0-9a-z_.-].*"
# REST clients have no use for gRPC's own headers or binary (`-bin`) metadata, and malformed ones
# (`grpc-timeout: soon`, `x-bin: not base64`) fail the call the same way: dropped on REST routes.
REST_DROPPED_HEADERS_REGEX = "grpc-.*|.*-bin"

# Browsers call the API from any origin (REST and gRPC-Web); nothing relies on cookies, so no
# credentials are allowed. gRPC-Web clients read the status from these response headers.
CORS_ALLOW_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "idempotency-key",
    "last-event-id",
)
CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
CORS_MAX_AGE_SECONDS = 86400

# HTTP status of a reply Envoy generates itself -> the gRPC code put in its JSON body: the
# inverse of the transcoder's gRPC -> HTTP mapping, so REST clients see one error shape.
LOCAL_REPLY_GRPC_CODES: dict[int, int] = {
    400: 3,  # INVALID_ARGUMENT: unparsable JSON, wrong type, unknown query parameter or enum
    404: 5,  # NOT_FOUND: no RPC is mapped to this method and path
    405: 12,  # UNIMPLEMENTED: the static files answer GET and HEAD only
    408: 4,  # DEADLINE_EXCEEDED: the client did not finish its request within the idle timeout
    413: 8,  # RESOURCE_EXHAUSTED: what gRPC itself answers for an oversized message
    431: 3,  # INVALID_ARGUMENT: request headers too large
    503: 14,  # UNAVAILABLE: no upstream reachable (connection refused, reset, overflow)
    504: 4,  # DEADLINE_EXCEEDED: the upstream sent nothing within the stream idle timeout
}
# Anything else Envoy might answer on its own.
UNKNOWN_GRPC_CODE = 2

# Every SSE watcher over HTTP/1.1 holds a connection of its own; beyond this Envoy refuses new ones
# rather than running out of file descriptors.
MAX_DOWNSTREAM_CONNECTIONS = 50_000

# Circuit breaker ceiling. Each watcher holds one upstream HTTP/2 stream for the life of its job,
# and Envoy's default of 1024 concurrent requests per cluster would answer the 1025th with 503.
MAX_UPSTREAM_REQUESTS = 100_000

# The submit route's script. On the way in: the transcoder silently drops JSON fields the
# contract does not have, so a misspelt or unsupported top-level field would be ignored; this
# scans the body's top-level keys and answers 400 naming the first unknown one. On the way
# back: the transcoder answers every success with 200; the REST API promised 201 for a
# submit (errors keep their status). The lua filter sits before the transcoder.
SUBMIT_FIELDS = ("data", "operation", "request_id", "requestId")
SUBMIT_LUA = (
    """\
local allowed = {"""
    + ", ".join(f'["{name}"] = true' for name in SUBMIT_FIELDS)
    + """}

-- The first top-level key of a JSON object that is not allowed, or nil.
local function unknown_key(text)
  local depth, i, n = 0, 1, #text
  local top_is_object, expect_key = false, false
  while i <= n do
    local c = text:byte(i)
    if c == 34 then -- a string: skip it, honouring escapes
      local j = i + 1
      while j <= n do
        local d = text:byte(j)
        if d == 92 then j = j + 2 elseif d == 34 then break else j = j + 1 end
      end
      if depth == 1 and top_is_object and expect_key then
        local key = text:sub(i + 1, j - 1)
        if not allowed[key] then return key end
        expect_key = false
      end
      i = j + 1
    else
      if c == 123 or c == 91 then -- { or [
        depth = depth + 1
        if depth == 1 then top_is_object = (c == 123); expect_key = top_is_object end
      elseif c == 125 or c == 93 then -- } or ]
        depth = depth - 1
      elseif c == 44 and depth == 1 then -- ,
        expect_key = top_is_object
      end
      i = i + 1
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local body = request_handle:body()
  if body == nil or body:length() == 0 then return end
  local key = unknown_key(body:getBytes(0, body:length()))
  if key ~= nil then
    local shown = key:sub(1, 40):gsub("[^%w_%-%.]", "?")
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "application/json"},
      '{"code":3,"message":"unknown field \\"' .. shown ..
        '\\" in the request body; known fields: data, operation, request_id"}')
  end
end

function envoy_on_response(response_handle)
  if response_handle:headers():get(":status") == "200" then
    response_handle:headers():replace(":status", "201")
  end
end
"""
)


@dataclass(frozen=True)
class GatewayOptions:
    """Where the gateway listens and where the gRPC servers are; the rest is fixed policy."""

    listen_host: str
    listen_port: int
    admin_host: str
    admin_port: int
    upstream_host: str
    upstream_port: int
    upstream_dns: bool
    descriptor_path: Path
    max_request_bytes: int = 16 * 1024 * 1024
    health_check_interval_seconds: float = 1.0
    # None: the layout of a checkout and of the gateway image, <root>/gen/envoy/jobs.binpb, where
    # `make proto` writes openapi.json and docs/ beside the descriptor and npm installs Swagger UI
    # into <root>/node_modules/swagger-ui-dist.
    web_dir: Path | None = None
    swagger_ui_dir: Path | None = None

    def __post_init__(self) -> None:
        """Reject values Envoy would refuse later with a far less helpful message."""
        if not self.upstream_dns:
            try:
                ipaddress.ip_address(self.upstream_host)
            except ValueError:
                raise ValueError(
                    f"upstream host {self.upstream_host!r} is not an IP address: "
                    "a host name needs upstream_dns=True"
                ) from None
        if not 0 < self.max_request_bytes < 2**32:
            raise ValueError("max_request_bytes must be between 1 and 2**32 - 1")
        if self.health_check_interval_seconds < 0.001:
            raise ValueError("health_check_interval_seconds must be at least 0.001")

    @property
    def web_root(self) -> Path:
        """The folder with the generated openapi.json and docs/index.html."""
        return self.web_dir or self.descriptor_path.parent

    @property
    def swagger_ui_root(self) -> Path:
        """The installed `swagger-ui-dist` package."""
        return self.swagger_ui_dir or self.descriptor_path.parent.parent.parent / SWAGGER_UI_PACKAGE

    def static_files(self) -> list[Path]:
        """Every file the gateway serves from disk; Envoy would answer 404 for a missing one."""
        return [
            self.web_root / OPENAPI_PATH.removeprefix("/"),
            self.web_root / DOCS_PATH.removeprefix("/") / "index.html",
            *(self.swagger_ui_root / name for name in SWAGGER_UI_FILES),
        ]


def build_config(options: GatewayOptions) -> dict[str, Any]:
    """Return the complete Envoy bootstrap for these options."""
    return {
        # No authentication on the admin interface: keep it on loopback unless told otherwise.
        "admin": {"address": _address(options.admin_host, options.admin_port)},
        "static_resources": {
            "listeners": [_listener(options)],
            "clusters": [_cluster(options)],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": _typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS,
                    ),
                }
            ]
        },
    }


def write_config(options: GatewayOptions, path: Path) -> None:
    """Write the bootstrap as YAML, the format `envoy -c` reads.

    Refuses when a static file is missing: Envoy would start and answer 404 for it.
    """
    missing = [str(file) for file in options.static_files() if not file.is_file()]
    if missing:
        raise FileNotFoundError(
            "the gateway's static files are missing (`make proto` generates openapi.json and "
            "docs/; `npm ci` installs swagger-ui-dist): " + ", ".join(missing)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(build_config(options), sort_keys=False), encoding="utf-8")


def path_with_query_parameter_regex(names: tuple[str, ...]) -> str:
    """Match a whole raw `:path` whose query has a parameter in `names`, literal or %-encoded.

    The transcoder percent-decodes parameter names before looking them up, so `job%5Fid` sets
    the same field as `job_id`, whereas Envoy's query parameter matcher compares raw names.
    Envoy regex header matchers must match the entire value, hence the leading and trailing parts.
    """
    alternatives = "|".join(
        "".join(f"(?:{c}|%{ord(c) >> 4:X}{_hex_digit(ord(c) & 0xF)})" for c in name)
        for name in names
    )
    return f"[^?]*\\?(?:[^&]*&)*(?:{alternatives})(?:[=&].*)?"


def json_name(field: str) -> str:
    """The proto3 JSON name of a snake_case field, which the transcoder also accepts."""
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _hex_digit(nibble: int) -> str:
    digit = f"{nibble:X}"
    return f"[{digit}{digit.lower()}]" if digit.isalpha() else digit


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    # Protobuf JSON durations take decimal seconds; `:g` could produce an exponent.
    return f"{seconds:.3f}s"


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _disabled(*filter_names: str) -> dict[str, Any]:
    return {
        name: _typed("envoy.config.route.v3.FilterConfig", disabled=True) for name in filter_names
    }


def _listener(options: GatewayOptions) -> dict[str, Any]:
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress",
        # AUTO: HTTP/1.1 for REST clients and prior-knowledge HTTP/2 (h2c) for gRPC, one port.
        codec_type="AUTO",
        route_config=_route_config(options),
        http_filters=_http_filters(options),
        local_reply_config=_local_reply_config(options),
    )
    return {
        "name": "ingress",
        "address": _address(options.listen_host, options.listen_port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _route_config(options: GatewayOptions) -> dict[str, Any]:
    # `timeout: 0s` on every route: a WatchJob stream (REST SSE or gRPC) lives as long as its job.
    # Routes match the path the client sent (see `match_incoming_request_route`).
    to_cluster = {"cluster": CLUSTER, "timeout": "0s"}
    # A watched job can stay PENDING with nothing to send for longer than the connection
    # manager's 5 minute stream idle timeout, so watch streams have none.
    to_cluster_no_idle_timeout = {**to_cluster, "idle_timeout": "0s"}
    rest_headers = {
        "envoy.filters.http.header_mutation": _typed(
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
            mutations={"request_mutations": [_remove_headers(REST_DROPPED_HEADERS_REGEX)]},
        )
    }
    path_variable_in_query = path_with_query_parameter_regex(
        (PATH_VARIABLE, json_name(PATH_VARIABLE))
    )
    routes = [
        # Static files, answered by the file server filter on these routes (its per-route
        # mappings); the direct response is only reached if it does not answer.
        {
            "match": {"safe_regex": {"regex": WEB_PATH_REGEX}},
            "direct_response": {"status": 404},
            "typed_per_filter_config": {
                "envoy.filters.http.file_server": _file_server("/", options.web_root)
            },
        },
        {
            "match": {
                "safe_regex": {
                    "regex": f"^{DOCS_PATH}/({'|'.join(re.escape(n) for n in SWAGGER_UI_FILES)})$"
                }
            },
            "direct_response": {"status": 404},
            "typed_per_filter_config": {
                "envoy.filters.http.file_server": _file_server(
                    f"{DOCS_PATH}/", options.swagger_ui_root
                )
            },
        },
        {
            # The transcoder lets `?job_id=` (or `?jobId=`) silently replace the id taken from
            # the path. Refuse it before it is transcoded; the local reply mapper turns the text
            # into the JSON error.
            "match": {
                "safe_regex": {"regex": JOB_PATH_REGEX},
                "headers": [
                    {
                        "name": ":path",
                        "string_match": {"safe_regex": {"regex": path_variable_in_query}},
                    }
                ],
            },
            "direct_response": {
                "status": 400,
                "body": {
                    "inline_string": (
                        f'query parameter "{PATH_VARIABLE}" is not allowed: '
                        "the job id is taken from the path"
                    )
                },
            },
            "typed_per_filter_config": _disabled("envoy.filters.http.grpc_json_transcoder"),
        },
        {
            "match": {
                "safe_regex": {"regex": SUBMIT_PATH_REGEX},
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "route": to_cluster,
            # The script reads the whole body; let it buffer up to the REST body limit (the
            # default buffer, 1 MiB, would turn a valid 100,000-number job into a 413).
            "per_request_buffer_limit_bytes": options.max_request_bytes,
            "typed_per_filter_config": {
                "envoy.filters.http.lua": _typed(
                    "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                    source_code={"inline_string": SUBMIT_LUA},
                ),
                **rest_headers,
            },
        },
        {
            "match": {"safe_regex": {"regex": WATCH_PATH_REGEX}},
            "route": to_cluster_no_idle_timeout,
            "typed_per_filter_config": rest_headers,
        },
        {
            "match": {"prefix": REST_PREFIX},
            "route": to_cluster,
            "typed_per_filter_config": rest_headers,
        },
        # Native gRPC below. Message size limits are the gRPC server's own.
        {
            "match": {"path": GRPC_WATCH_PATH},
            "route": to_cluster_no_idle_timeout,
            "typed_per_filter_config": _disabled("envoy.filters.http.body_size_limit"),
        },
        {
            # Also every other path, which the transcoder answers with 404.
            "match": {"prefix": "/"},
            "route": to_cluster,
            "typed_per_filter_config": _disabled("envoy.filters.http.body_size_limit"),
        },
    ]
    cors = _typed(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"safe_regex": {"regex": ".*"}}],
        allow_methods="GET, POST, OPTIONS",
        allow_headers=", ".join(CORS_ALLOW_HEADERS),
        expose_headers=", ".join(CORS_EXPOSE_HEADERS),
        max_age=str(CORS_MAX_AGE_SECONDS),
    )
    return {
        "name": "jobs",
        "virtual_hosts": [
            {
                "name": "jobs",
                "domains": ["*"],
                "routes": routes,
                "typed_per_filter_config": {"envoy.filters.http.cors": cors},
            }
        ],
    }


def _remove_headers(name_regex: str) -> dict[str, Any]:
    """A header mutation removing every request header whose whole name matches."""
    return {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": name_regex}}}}


def _file_server(request_prefix: str, folder: Path) -> dict[str, Any]:
    """Per-route file server config: `request_prefix` + name -> `folder`/name.

    Mapping a prefix to a single file is refused by the filter (the joined path is not
    normalized), so folders are mapped and the route's path decides which files are reachable.
    """
    return _typed(
        "envoy.extensions.filters.http.file_server.v3.FileServerConfig",
        manager_config=_file_manager(),
        path_mappings=[{"request_path_prefix": request_prefix, "file_path_prefix": str(folder)}],
        content_types=STATIC_CONTENT_TYPES,
        directory_behaviors=[{"default_file": "index.html"}],
    )


def _file_manager() -> dict[str, Any]:
    # One shared manager: Envoy refuses the same (empty) id with different settings.
    return {"thread_pool": {"thread_count": FILE_THREADS}}


def _http_filters(options: GatewayOptions) -> list[dict[str, Any]]:
    health_check = _typed(
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        pass_through_mode=False,
        headers=[{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
        # Percentages are truncated to integers: 1 means "at least one healthy host" for up to
        # 100 replicas, and no healthy host (or an empty cluster) answers 503.
        cluster_min_healthy_percentages={CLUSTER: {"value": 1.0}},
    )
    # The transcoder's own `max_request_body_size` only bounds what it holds unparsed at once
    # (a 17 MB body went through), so the total size is capped by this filter, before it.
    body_size_limit = _typed(
        "envoy.extensions.filters.http.body_size_limit.v3.BodySizeLimit",
        max_request_bytes=options.max_request_bytes,
    )
    transcoder = _typed(
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=str(options.descriptor_path),
        services=[SERVICE],
        print_options={
            "preserve_proto_field_names": True,
            "always_print_primitive_fields": True,
            # WatchJob over REST: one `data: {...}` Server-Sent Event per message.
            "stream_sse_style_delimited": True,
        },
        convert_grpc_status=True,
        # Form-style query strings (Python's urlencode, HTML forms) encode spaces as `+`;
        # a ListJobs filter such as `status = "FAILED"` must survive them.
        query_param_unescape_plus=True,
        request_validation_options={
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            # A `body: "*"` mapping with a path variable (CancelJob) would otherwise let
            # `{"job_id": ...}` in the body replace the id in the path.
            "reject_binding_body_field_collisions": True,
        },
        # Route on the path the client sent, not the gRPC path it becomes: the REST routes carry
        # per-route settings (the submit status script) that must still apply on the way back.
        match_incoming_request_route=True,
    )
    return [
        # First, so that every response (the health check's and the file server's too) gets
        # its headers, and preflight requests are answered before anything else.
        {
            "name": "envoy.filters.http.cors",
            "typed_config": _typed("envoy.extensions.filters.http.cors.v3.Cors"),
        },
        {"name": "envoy.filters.http.health_check", "typed_config": health_check},
        # gRPC-Web -> gRPC before the transcoder, which then passes the call through untouched.
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": _typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
        },
        # No mappings here: only the static routes configure it.
        {
            "name": "envoy.filters.http.file_server",
            "typed_config": _typed(
                "envoy.extensions.filters.http.file_server.v3.FileServerConfig",
                manager_config=_file_manager(),
            ),
        },
        # Before the transcoder, so that REST headers are cleaned before they become metadata.
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": _typed(
                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                mutations={"request_mutations": [_remove_headers(INVALID_METADATA_KEY_REGEX)]},
            ),
        },
        {"name": "envoy.filters.http.body_size_limit", "typed_config": body_size_limit},
        # Before the transcoder, so that on the way back it sees the transcoded response. No
        # default script: it runs only where a route attaches one.
        {
            "name": "envoy.filters.http.lua",
            "typed_config": _typed("envoy.extensions.filters.http.lua.v3.Lua"),
        },
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        },
    ]


def _status_filter(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"local_reply.status_{status}"},
            }
        }
    }


def _header_filter(matcher: dict[str, Any]) -> dict[str, Any]:
    return {"header_filter": {"header": matcher}}


def _path_filter(path: str) -> dict[str, Any]:
    return _header_filter({"name": ":path", "string_match": {"exact": path}})


def _grpc_error_body(code: int) -> dict[str, Any]:
    return {"json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%"}}


def _local_reply_config(options: GatewayOptions) -> dict[str, Any]:
    # Replies Envoy makes itself (transcoder rejections, no upstream, oversized body, /health)
    # would be plain text or empty. The first matching mapper rewrites them into the JSON shape
    # of a transcoded gRPC error, keeping Envoy's text (which names the field) as the message.
    native_grpc = {
        # Native gRPC callers get Envoy's text as grpc-message (their status comes from the HTTP
        # code). Transcoded REST calls carry a gRPC content type by then too, but also the
        # x-envoy-original-path header the transcoder adds, which tells them apart.
        "filter": {
            "and_filter": {
                "filters": [
                    _header_filter(
                        {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
                    ),
                    _header_filter(
                        {
                            "name": "x-envoy-original-path",
                            "present_match": True,
                            "invert_match": True,
                        }
                    ),
                ]
            }
        },
        "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}},
    }
    health = [
        {
            "filter": {"and_filter": {"filters": [_path_filter(HEALTH_PATH), _status_filter(200)]}},
            "body_format_override": {"json_format": {"status": "SERVING"}},
        },
        {
            "filter": _path_filter(HEALTH_PATH),
            "body_format_override": {"json_format": {"status": "NOT_SERVING"}},
        },
    ]
    errors: list[dict[str, Any]] = []
    for status, code in LOCAL_REPLY_GRPC_CODES.items():
        mapper: dict[str, Any] = {
            "filter": _status_filter(status),
            "body_format_override": _grpc_error_body(code),
        }
        if status == 413:
            # The size filter says only "content length too large"; name the limit instead.
            mapper["body"] = {
                "inline_string": f"request body is larger than {options.max_request_bytes} bytes"
            }
        errors.append(mapper)
    return {
        "mappers": [native_grpc, *health, *errors],
        "body_format": _grpc_error_body(UNKNOWN_GRPC_CODE),
    }


# Requests in flight on one upstream HTTP/2 connection before Envoy opens another.
UPSTREAM_STREAMS_PER_CONNECTION = 16


def _cluster(options: GatewayOptions) -> dict[str, Any]:
    interval = _duration(options.health_check_interval_seconds)
    cluster: dict[str, Any] = {
        "name": CLUSTER,
        # STRICT_DNS makes every address behind the name (compose replicas) a host of its own.
        "type": "STRICT_DNS" if options.upstream_dns else "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # A cap on streams per connection makes Envoy open more connections under
                # load, which the kernel spreads over SERVER_PROCESSES sharing the port.
                explicit_http_config={
                    "http2_protocol_options": {
                        "max_concurrent_streams": UPSTREAM_STREAMS_PER_CONNECTION
                    }
                },
            )
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_requests": MAX_UPSTREAM_REQUESTS,
                    "max_pending_requests": MAX_UPSTREAM_REQUESTS,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": _address(options.upstream_host, options.upstream_port)
                            }
                        }
                    ]
                }
            ],
        },
        # When every host fails its check, Envoy's panic threshold still routes to all of them,
        # so requests get the server's own gRPC error rather than "no healthy upstream".
        "health_checks": [
            {
                "timeout": interval,
                "interval": interval,
                # Without this a cluster that has not carried traffic yet is probed only every
                # 60 s, and /health would lag far behind the servers.
                "no_traffic_interval": interval,
                # An explicit NOT_SERVING takes a host out at once; a timeout or refused
                # connection must happen twice, so one slow probe on a busy machine does not flap
                # /health. One success brings the host back.
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": SERVICE},
            }
        ],
    }
    if options.upstream_dns:
        # Servers listen on IPv4 in compose; AUTO would prefer an AAAA record if one existed.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster
