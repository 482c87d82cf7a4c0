"""The rendered Envoy bootstrap: what each part must say for the gateway to behave (no I/O)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import GatewayOptions, build_config
from gateway.__main__ import parse_args
from gateway.config import (
    CLUSTER,
    INVALID_METADATA_KEY_REGEX,
    LOCAL_REPLY_GRPC_CODES,
    SERVICE,
    SWAGGER_UI_FILES,
    json_name,
    path_with_query_parameter_regex,
)

DESCRIPTOR = Path("/app/gen/envoy/jobs.binpb")


def options(**overrides: Any) -> GatewayOptions:
    values: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 8000,
        "admin_host": "127.0.0.1",
        "admin_port": 9901,
        "upstream_host": "127.0.0.1",
        "upstream_port": 50051,
        "upstream_dns": False,
        "descriptor_path": DESCRIPTOR,
    }
    return GatewayOptions(**(values | overrides))


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    typed_config: dict[str, Any] = network_filter["typed_config"]
    return typed_config


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [f["typed_config"] for f in hcm(config)["http_filters"] if f["name"] == name]
    return found


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (virtual_host,) = hcm(config)["route_config"]["virtual_hosts"]
    found: list[dict[str, Any]] = virtual_host["routes"]
    return found


def route_for(config: dict[str, Any], path: str, method: str = "GET") -> dict[str, Any]:
    """The first route Envoy would pick: path matchers ignore the query, `:path` has it."""
    without_query = path.partition("?")[0]
    for route in routes(config):
        match = route["match"]
        if "prefix" in match:
            matched = without_query.startswith(match["prefix"])
        elif "path" in match:
            matched = without_query == match["path"]
        else:
            matched = re.fullmatch(match["safe_regex"]["regex"], without_query) is not None
        for header in match.get("headers", []):
            if header["name"] == ":method":
                matched = matched and header["string_match"]["exact"] == method
            if header["name"] == ":path":
                matched = matched and bool(
                    re.fullmatch(header["string_match"]["safe_regex"]["regex"], path)
                )
        if matched:
            return route
    raise AssertionError(f"no route for {method} {path}")


def cluster(config: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = config["static_resources"]["clusters"]
    assert found["name"] == CLUSTER
    return found


def test_one_listener_serves_http1_and_h2c_on_the_configured_address() -> None:
    config = build_config(options(listen_host="0.0.0.0", listen_port=8123))

    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8123}
    assert hcm(config)["codec_type"] == "AUTO"


def test_admin_listens_where_told() -> None:
    config = build_config(options(admin_port=9911))

    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9911,
    }


def test_filters_run_in_the_order_the_behaviour_depends_on() -> None:
    names = [f["name"] for f in hcm(build_config(options()))["http_filters"]]

    assert names == [
        "envoy.filters.http.cors",
        "envoy.filters.http.health_check",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.file_server",
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.body_size_limit",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]


def test_transcoder_reads_the_descriptor_and_is_strict() -> None:
    transcoder = http_filter(build_config(options()), "envoy.filters.http.grpc_json_transcoder")

    assert transcoder["proto_descriptor"] == str(DESCRIPTOR)
    assert transcoder["services"] == [SERVICE]
    assert transcoder["print_options"] == {
        "preserve_proto_field_names": True,
        "always_print_primitive_fields": True,
        "stream_sse_style_delimited": True,
    }
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
        "reject_binding_body_field_collisions": True,
    }
    assert transcoder["match_incoming_request_route"] is True


def test_no_route_cuts_streams() -> None:
    config = build_config(options())

    forwarding = [route["route"] for route in routes(config) if "route" in route]
    assert forwarding
    assert all(r == r | {"cluster": CLUSTER, "timeout": "0s"} for r in forwarding)
    for path in (
        "/api/v1/jobs/abc/watch",
        "/api/v1/jobs/abc/watch/",
        "/jobs.v1.JobService/WatchJob",
    ):
        assert route_for(config, path)["route"]["idle_timeout"] == "0s"
    for path in ("/api/v1/jobs/abc/status", "/jobs.v1.JobService/GetStatus"):
        assert "idle_timeout" not in route_for(config, path)["route"]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/", "/api/v1/jobs//"])
def test_a_submit_answers_201_on_every_spelling_of_the_collection(path: str) -> None:
    route = route_for(build_config(options()), path, method="POST")

    script = route["typed_per_filter_config"]["envoy.filters.http.lua"]["source_code"]
    assert '"200"' in script["inline_string"]
    assert '"201"' in script["inline_string"]


def test_only_the_submit_route_changes_the_status() -> None:
    config = build_config(options())

    for path, method in [
        ("/api/v1/jobs", "GET"),
        ("/api/v1/jobs/abc/status", "GET"),
        ("/jobs.v1.JobService/SubmitJob", "POST"),
    ]:
        route = route_for(config, path, method)
        assert "envoy.filters.http.lua" not in route.get("typed_per_filter_config", {})


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/abc/status?job_id=zzz",
        "/api/v1/jobs/abc/result?x=1&job_id=zzz",
        "/api/v1/jobs/abc/watch?job_id",
        "/api/v1/jobs/abc/status?jobId=zzz",
        "/api/v1/jobs/abc/status?job%5Fid=zzz",
        "/api/v1/jobs/abc/status?%6Aob_id=zzz",
        "/api/v1/jobs/abc/status?jo%62Id=zzz",
        "/api/v1/jobs/abc:cancel?job_id=zzz",
    ],
)
def test_the_path_variable_cannot_be_overridden_from_the_query(path: str) -> None:
    route = route_for(build_config(options()), path)
    regex = route["match"]["headers"][0]["string_match"]["safe_regex"]["regex"]

    assert re.fullmatch(regex, path)
    assert route["direct_response"]["status"] == 400
    assert '"job_id"' in route["direct_response"]["body"]["inline_string"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/abc/status",
        "/api/v1/jobs/abc/status?job_idx=1",
        "/api/v1/jobs/abc/status?x=job_id",
        "/api/v1/jobs/abc/status?JOB_ID=1",
    ],
)
def test_other_query_parameters_are_left_to_the_transcoder(path: str) -> None:
    regex = path_with_query_parameter_regex(("job_id", "jobId"))

    assert re.fullmatch(regex, path) is None


def test_json_names_follow_the_proto3_rule() -> None:
    assert json_name("job_id") == "jobId"
    assert json_name("data") == "data"


def test_rest_bodies_are_capped_and_native_grpc_is_not() -> None:
    config = build_config(options(max_request_bytes=1234))

    size_limit = http_filter(config, "envoy.filters.http.body_size_limit")
    assert size_limit["max_request_bytes"] == 1234
    assert "envoy.filters.http.body_size_limit" not in route_for(config, "/api/v1/jobs").get(
        "typed_per_filter_config", {}
    )
    for grpc_path in ("/jobs.v1.JobService/SubmitJob", "/jobs.v1.JobService/WatchJob"):
        grpc_route = route_for(config, grpc_path, method="POST")
        disabled = grpc_route["typed_per_filter_config"]["envoy.filters.http.body_size_limit"]
        assert disabled["disabled"] is True


def mappers(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hcm(config)["local_reply_config"]["mappers"]
    return found


def status_of(mapper: dict[str, Any]) -> int | None:
    status_filter = mapper["filter"].get("status_code_filter")
    return (
        None
        if status_filter is None
        else int(status_filter["comparison"]["value"]["default_value"])
    )


def test_envoy_errors_get_the_json_shape_of_grpc_errors() -> None:
    config = build_config(options(max_request_bytes=1000))

    by_status = {status_of(m): m for m in mappers(config) if status_of(m) is not None}
    assert set(by_status) == set(LOCAL_REPLY_GRPC_CODES)
    for status, code in LOCAL_REPLY_GRPC_CODES.items():
        body = by_status[status]["body_format_override"]["json_format"]
        assert body == {"code": code, "message": "%LOCAL_REPLY_BODY%"}
    assert LOCAL_REPLY_GRPC_CODES[400] == 3
    assert LOCAL_REPLY_GRPC_CODES[404] == 5
    assert LOCAL_REPLY_GRPC_CODES[503] == 14
    assert "1000 bytes" in by_status[413]["body"]["inline_string"]
    fallback = hcm(config)["local_reply_config"]["body_format"]["json_format"]
    assert fallback == {"code": 2, "message": "%LOCAL_REPLY_BODY%"}


def test_native_grpc_errors_keep_a_plain_message_and_come_first() -> None:
    first = mappers(build_config(options()))[0]

    headers = [f["header_filter"]["header"] for f in first["filter"]["and_filter"]["filters"]]
    assert {"name": "content-type", "string_match": {"prefix": "application/grpc"}} in headers
    assert {"name": "x-envoy-original-path", "present_match": True, "invert_match": True} in headers
    assert first["body_format_override"] == {
        "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}
    }


def test_health_is_answered_by_envoy_from_upstream_health_checks() -> None:
    config = build_config(options(health_check_interval_seconds=0.5))

    health = http_filter(config, "envoy.filters.http.health_check")
    assert health["pass_through_mode"] is False
    assert health["headers"] == [{"name": ":path", "string_match": {"exact": "/health"}}]
    assert health["cluster_min_healthy_percentages"] == {CLUSTER: {"value": 1.0}}
    (check,) = cluster(config)["health_checks"]
    assert check["grpc_health_check"] == {"service_name": SERVICE}
    assert check["interval"] == check["no_traffic_interval"] == "0.500s"
    assert check["healthy_threshold"] == 1
    assert check["unhealthy_threshold"] <= 2
    health_mappers = [m for m in mappers(config) if "/health" in str(m["filter"])]
    assert [m["body_format_override"]["json_format"] for m in health_mappers] == [
        {"status": "SERVING"},
        {"status": "NOT_SERVING"},
    ]
    assert "200" in str(health_mappers[0]["filter"])


def test_static_upstream_speaks_http2_round_robin_over_capped_connections() -> None:
    upstream = cluster(build_config(options(upstream_host="10.0.0.7", upstream_port=6000)))

    assert upstream["type"] == "STATIC"
    assert upstream["lb_policy"] == "ROUND_ROBIN"
    protocol = upstream["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    # Streams per connection are capped, so load opens connections the kernel can spread
    # over server processes sharing the port.
    assert protocol["explicit_http_config"] == {
        "http2_protocol_options": {"max_concurrent_streams": 16}
    }
    (endpoints,) = upstream["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "10.0.0.7",
        "port_value": 6000,
    }
    assert "dns_lookup_family" not in upstream


def test_dns_upstream_balances_over_every_address_behind_the_name() -> None:
    upstream = cluster(build_config(options(upstream_host="server", upstream_dns=True)))

    assert upstream["type"] == "STRICT_DNS"
    assert upstream["dns_lookup_family"] == "V4_PREFERRED"


def test_a_host_name_without_dns_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream_dns"):
        options(upstream_host="server")


def test_the_config_survives_a_yaml_round_trip() -> None:
    config = build_config(options())

    assert yaml.safe_load(yaml.safe_dump(config, sort_keys=False)) == config


def test_the_cli_defaults_match_a_local_run() -> None:
    parsed, out = parse_args(["--out", "/tmp/envoy.yaml"])

    assert out == Path("/tmp/envoy.yaml")
    assert (parsed.listen_host, parsed.listen_port) == ("127.0.0.1", 8000)
    assert (parsed.admin_host, parsed.admin_port) == ("127.0.0.1", 9901)
    assert (parsed.upstream_host, parsed.upstream_port, parsed.upstream_dns) == (
        "127.0.0.1",
        50051,
        False,
    )
    assert parsed.descriptor_path.is_absolute()
    assert parsed.max_request_bytes == 16 * 1024 * 1024


def test_the_cli_takes_the_container_layout() -> None:
    parsed, _ = parse_args(
        [
            "--out",
            "/tmp/envoy.yaml",
            "--listen-host",
            "0.0.0.0",
            "--upstream",
            "server:50051",
            "--dns",
            "--descriptor",
            "/app/gen/envoy/jobs.binpb",
            "--max-request-bytes",
            "1024",
        ]
    )

    assert parsed.listen_host == "0.0.0.0"
    assert (parsed.upstream_host, parsed.upstream_port, parsed.upstream_dns) == (
        "server",
        50051,
        True,
    )
    assert parsed.descriptor_path == DESCRIPTOR
    assert parsed.max_request_bytes == 1024


def test_the_cli_refuses_a_host_name_without_dns() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", "/tmp/envoy.yaml", "--upstream", "server:50051"])


# --------------------------------------------------------------------------- browsers


def file_server(route: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = route["typed_per_filter_config"]["envoy.filters.http.file_server"]
    return found


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/docs/"])
def test_generated_web_files_are_served_from_beside_the_descriptor(path: str) -> None:
    route = route_for(build_config(options()), path)

    server = file_server(route)
    assert server["path_mappings"] == [
        {"request_path_prefix": "/", "file_path_prefix": "/app/gen/envoy"}
    ]
    # `/docs` is a folder: its index.html is the page.
    assert server["directory_behaviors"] == [{"default_file": "index.html"}]
    assert route["direct_response"] == {"status": 404}  # only if the file server did not answer


@pytest.mark.parametrize("name", SWAGGER_UI_FILES)
def test_swagger_ui_assets_come_from_the_npm_package(name: str) -> None:
    server = file_server(route_for(build_config(options()), f"/docs/{name}"))

    assert server["path_mappings"] == [
        {
            "request_path_prefix": "/docs/",
            "file_path_prefix": "/app/node_modules/swagger-ui-dist",
        }
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/docs/index.html",  # the package's own page loads the Petstore example
        "/docs/swagger-initializer.js",
        "/docs/swagger-ui-bundle.js.map",
        "/openapi.jsonx",
        "/docs//",
        "/api/v1/jobs",
    ],
)
def test_nothing_else_is_read_from_disk(path: str) -> None:
    route = route_for(build_config(options()), path)

    assert "envoy.filters.http.file_server" not in route.get("typed_per_filter_config", {})


def test_static_folders_can_be_placed_elsewhere() -> None:
    custom = options(web_dir=Path("/srv/web"), swagger_ui_dir=Path("/srv/swagger"))
    config = build_config(custom)

    mapping = file_server(route_for(config, "/openapi.json"))["path_mappings"][0]
    assert mapping["file_path_prefix"] == "/srv/web"
    mapping = file_server(route_for(config, "/docs/swagger-ui.css"))["path_mappings"][0]
    assert mapping["file_path_prefix"] == "/srv/swagger"
    assert custom.static_files() == [
        Path("/srv/web/openapi.json"),
        Path("/srv/web/docs/index.html"),
        *(Path("/srv/swagger") / name for name in SWAGGER_UI_FILES),
    ]


def test_every_file_server_config_shares_one_file_manager() -> None:
    config = build_config(options())

    # Envoy refuses one manager id with two different settings.
    managers = [
        file_server(route)["manager_config"]
        for route in routes(config)
        if "envoy.filters.http.file_server" in route.get("typed_per_filter_config", {})
    ]
    assert len(managers) == 2
    filter_level = http_filter(config, "envoy.filters.http.file_server")
    assert "path_mappings" not in filter_level
    assert all(m == filter_level["manager_config"] for m in managers)
    assert file_server(route_for(config, "/docs"))["content_types"]["html"].startswith("text/html")


def test_cors_lets_any_origin_call_the_api_without_credentials() -> None:
    (virtual_host,) = hcm(build_config(options()))["route_config"]["virtual_hosts"]

    policy = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["@type"].endswith("envoy.extensions.filters.http.cors.v3.CorsPolicy")
    assert policy["allow_origin_string_match"] == [{"safe_regex": {"regex": ".*"}}]
    assert "allow_credentials" not in policy
    allowed = policy["allow_headers"].split(", ")
    assert {"content-type", "x-grpc-web", "idempotency-key", "last-event-id"} <= set(allowed)
    assert policy["expose_headers"].split(", ") == [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
    ]


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("bad$name", True),
        ("x y", True),
        ("über", True),
        ("$", True),
        (":path", False),
        (":authority", False),
        ("idempotency-key", False),
        ("last-event-id", False),
        ("traceparent", False),
        ("x-request_id.v2", False),
    ],
)
def test_headers_grpc_metadata_cannot_carry_are_dropped(name: str, dropped: bool) -> None:
    config = build_config(options())

    (mutation,) = http_filter(config, "envoy.filters.http.header_mutation")["mutations"][
        "request_mutations"
    ]
    regex = mutation["remove_on_match"]["key_matcher"]["safe_regex"]["regex"]
    assert regex == INVALID_METADATA_KEY_REGEX
    assert bool(re.fullmatch(regex, name)) is dropped


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("grpc-timeout", True),
        ("grpc-encoding", True),
        ("x-trace-bin", True),
        ("idempotency-key", False),
        ("x-grpc-web", False),
        ("binary", False),
    ],
)
def test_rest_routes_also_drop_grpc_headers(name: str, dropped: bool) -> None:
    config = build_config(options())

    for path, method in [
        ("/api/v1/jobs", "POST"),
        ("/api/v1/jobs", "GET"),
        ("/api/v1/jobs/abc/watch", "GET"),
        ("/api/v1/jobs/abc:cancel", "POST"),
    ]:
        per_route = route_for(config, path, method)["typed_per_filter_config"]
        (mutation,) = per_route["envoy.filters.http.header_mutation"]["mutations"][
            "request_mutations"
        ]
        regex = mutation["remove_on_match"]["key_matcher"]["safe_regex"]["regex"]
        assert bool(re.fullmatch(regex, name)) is dropped
    for grpc_path in ("/jobs.v1.JobService/SubmitJob", "/jobs.v1.JobService/WatchJob"):
        grpc_route = route_for(config, grpc_path, "POST")
        assert "envoy.filters.http.header_mutation" not in grpc_route["typed_per_filter_config"]


def test_grpc_web_is_translated_before_the_transcoder_sees_it() -> None:
    config = build_config(options())
    names = [f["name"] for f in hcm(config)["http_filters"]]

    assert names.index("envoy.filters.http.grpc_web") < names.index(
        "envoy.filters.http.grpc_json_transcoder"
    )
    assert names[0] == "envoy.filters.http.cors"
    assert http_filter(config, "envoy.filters.http.grpc_web")["@type"].endswith("GrpcWeb")
