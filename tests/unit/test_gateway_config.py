"""Every Envoy configuration the gateway renders is one Envoy accepts; the CLI builds the options.

What each part of the configuration does is tested through a running Envoy (tests/e2e); here the
envoy binary only checks rendered files (`--mode validate`, which loads the descriptor and compiles
the Lua script without serving).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway.config
from devstack.stack import DESCRIPTOR
from gateway import GatewayOptions, render_config
from gateway.__main__ import parse_args
from gateway.config import (
    BATCH_MAX_REQUESTS,
    SERVICES,
    batch_body_limit,
    submit_body_limit,
)
from server.submit_wire import MAX_BATCH_REQUESTS
from tests.tls import ThrowawayCa

ENVOY = str(Path(sys.executable).parent / "envoy")


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


def envoy_validate(config: str, folder: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "envoy.yaml"
    path.write_text(config, encoding="utf-8")
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def descriptor() -> None:
    if not DESCRIPTOR.is_file():
        pytest.fail(f"{DESCRIPTOR} is missing: run `make proto`")


@pytest.mark.parametrize("upstream_dns", [False, True], ids=["static", "dns"])
@pytest.mark.parametrize("own_folders", [False, True], ids=["checkout-layout", "own-folders"])
def test_every_configuration_the_gateway_renders_is_valid(
    tmp_path: Path, upstream_dns: bool, own_folders: bool
) -> None:
    config = render_config(
        options(
            listen_host="0.0.0.0",
            listen_port=8123,
            admin_port=9911,
            upstream_host="server" if upstream_dns else "10.0.0.7",
            upstream_port=6000,
            upstream_dns=upstream_dns,
            max_request_bytes=1234,
            health_check_interval_seconds=0.5,
            web_dir=tmp_path / "web" if own_folders else None,
            swagger_ui_dir=tmp_path / "swagger" if own_folders else None,
            dashboard_dir=tmp_path / "dashboard" if own_folders else None,
        )
    )

    validated = envoy_validate(config, tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("upstream_tls", [False, True], ids=["upstream-plaintext", "upstream-tls"])
@pytest.mark.parametrize("upstream_dns", [False, True], ids=["static", "dns"])
@pytest.mark.parametrize(
    ("cors_origins", "allowed_hosts"),
    [
        ((), ("localhost", "127.0.0.1", "[::1]")),
        (("https://app.example", "http://localhost:3000"), ("*",)),
        (("https://app.example",), ("jobs.example", "*.jobs.example")),
    ],
    ids=["defaults", "origins-any-host", "origins-host-list"],
)
def test_every_tls_cors_and_host_combination_is_valid(  # noqa: PLR0917 - pytest parameters
    tmp_path: Path,
    tls: bool,
    upstream_tls: bool,
    upstream_dns: bool,
    cors_origins: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
) -> None:
    ca = ThrowawayCa.create(tmp_path / "tls")
    gateway_files = ca.issue(tmp_path / "tls", "gateway", dns_names=("localhost",), addresses=())
    config = render_config(
        options(
            upstream_host="server" if upstream_dns else "10.0.0.7",
            upstream_dns=upstream_dns,
            tls_cert_file=gateway_files.cert_file if tls else None,
            tls_key_file=gateway_files.key_file if tls else None,
            upstream_tls_ca_file=ca.ca_file if upstream_tls else None,
            cors_origins=cors_origins,
            allowed_hosts=allowed_hosts,
        )
    )

    assert ("DownstreamTlsContext" in config) == tls
    assert ("UpstreamTlsContext" in config) == upstream_tls
    assert ("refused_hosts" in config) == (allowed_hosts != ("*",))
    assert not [line for line in config.splitlines() if line.strip().startswith(("#if ", "#endif"))]
    validated = envoy_validate(config, tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_paths_with_yaml_syntax_in_them_reach_envoy_intact(tmp_path: Path) -> None:
    folder = tmp_path / 'a "folder": #1, {with} [yaml] \\ syntax'
    folder.mkdir()
    shutil.copyfile(DESCRIPTOR, folder / DESCRIPTOR.name)

    config = render_config(options(descriptor_path=folder / DESCRIPTOR.name))

    # Envoy opens the descriptor at load time: a mangled path fails the validation.
    validated = envoy_validate(config, tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_the_validation_would_catch_a_broken_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "submit.lua"
    broken.write_text("function envoy_on_request(handle\n", encoding="utf-8")
    monkeypatch.setattr(gateway.config, "SUBMIT_LUA", broken)

    validated = envoy_validate(render_config(options()), tmp_path)

    assert validated.returncode != 0
    assert "script load error" in validated.stdout + validated.stderr


def _connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    filters = _connection_manager(config)["http_filters"]
    (found,) = [f for f in filters if f["name"] == name]
    typed: dict[str, Any] = found["typed_config"]
    return typed


def test_the_transcoder_serves_every_service_the_openapi_document_describes() -> None:
    config = yaml.safe_load(render_config(options()))

    transcoder = _filter(config, "envoy.filters.http.grpc_json_transcoder")

    assert transcoder["services"] == list(SERVICES)


def test_browsers_on_listed_origins_may_send_credentials_and_read_what_errors_ask() -> None:
    config = yaml.safe_load(render_config(options(cors_origins=("https://app.example",))))
    virtual_host = _connection_manager(config)["route_config"]["virtual_hosts"][0]

    cors = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]

    assert "authorization" in cors["allow_headers"].split(", ")
    assert {"www-authenticate", "retry-after"} <= set(cors["expose_headers"].split(", "))
    # The credential is a header, never a cookie.
    assert "allow_credentials" not in cors


def test_a_host_name_without_dns_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream_dns"):
        options(upstream_host="server")


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_request_bytes": 0},
        {"max_batch_request_bytes": 0},
        {"max_request_bytes": 2**32},
        {"max_other_request_bytes": 0},
        {"health_check_interval_seconds": 0},
        {"request_headers_timeout_seconds": 0},
        {"watch_idle_timeout_seconds": 0},
        {"tls_cert_file": Path("/tls/cert.pem")},
        {"cors_origins": ("*",)},
        {"allowed_hosts": ("*", "localhost")},
    ],
)
def test_values_envoy_would_refuse_are_refused_early(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        options(**overrides)


def test_the_cli_defaults_match_a_local_run() -> None:
    parsed, out = parse_args(["--out", "/tmp/envoy.yaml"], environ={})

    assert out == Path("/tmp/envoy.yaml")
    assert (parsed.listen_host, parsed.listen_port) == ("127.0.0.1", 8000)
    assert (parsed.admin_host, parsed.admin_port) == ("127.0.0.1", 9901)
    assert (parsed.upstream_host, parsed.upstream_port, parsed.upstream_dns) == (
        "127.0.0.1",
        50051,
        False,
    )
    assert parsed.descriptor_path.is_absolute()
    # The largest valid submit of the default MAX_JOB_NUMBERS; far less for anything else.
    assert parsed.max_request_bytes == submit_body_limit(100_000)
    assert parsed.max_other_request_bytes == 64 * 1024
    # The largest batch the server's default message limit (16 MiB) lets through.
    assert parsed.max_batch_request_bytes == batch_body_limit(16 * 1024 * 1024)
    assert parsed.tls_cert_file is None
    assert parsed.upstream_tls_ca_file is None
    assert parsed.cors_origins == ()
    assert parsed.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert parsed.watch_idle_timeout_seconds == 60


def test_the_cli_reads_the_gateway_environment() -> None:
    parsed, _ = parse_args(
        ["--out", "/tmp/envoy.yaml"],
        environ={
            "MAX_JOB_NUMBERS": "1000",
            "GRPC_MAX_MESSAGE_BYTES": "65536",
            "WATCH_HEARTBEAT_SECONDS": "30",
            "GATEWAY_TLS_CERT_FILE": "/tls/gateway.pem",
            "GATEWAY_TLS_KEY_FILE": "/tls/gateway.key",
            "GATEWAY_UPSTREAM_TLS_CA_FILE": "/tls/ca.pem",
            "GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example",
            "GATEWAY_ALLOWED_HOSTS": "jobs.example",
            "GATEWAY_REQUEST_HEADERS_TIMEOUT_SECONDS": "5",
        },
    )

    assert parsed.max_request_bytes == submit_body_limit(1000)
    assert parsed.max_batch_request_bytes == batch_body_limit(65536)
    assert parsed.tls_cert_file == Path("/tls/gateway.pem")
    assert parsed.tls_key_file == Path("/tls/gateway.key")
    assert parsed.upstream_tls_ca_file == Path("/tls/ca.pem")
    assert parsed.cors_origins == ("https://a.example", "https://b.example")
    assert parsed.allowed_hosts == ("jobs.example",)
    assert parsed.request_headers_timeout_seconds == 5
    # Four heartbeats.
    assert parsed.watch_idle_timeout_seconds == 120


def test_a_watch_idle_timeout_within_the_heartbeat_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(
            ["--out", "/tmp/envoy.yaml", "--watch-idle-timeout-seconds", "10"],
            environ={"WATCH_HEARTBEAT_SECONDS": "15"},
        )


def test_a_valid_submit_of_max_job_numbers_fits_its_limit() -> None:
    # The longest shortest-round-trip doubles, pretty-printed with a 4-space indent.
    numbers = [-2.2250738585072014e-308] * 1000
    body = json.dumps(
        {"data": numbers, "operation": "square_sum", "request_id": "x" * 200}, indent=4
    )

    assert len(body.encode()) <= submit_body_limit(1000)


def test_a_batch_of_as_many_numbers_as_a_message_holds_fits_its_limit() -> None:
    message_bytes = 64 * 1024
    # As many numbers as fit in the gRPC message, spread over a full batch, each request with
    # the longest key written with escapes only, pretty-printed.
    numbers = [-2.2250738585072014e-308] * (message_bytes // 8 // BATCH_MAX_REQUESTS)
    key = "\u00e9" * 128
    requests = [
        f'{{"data": {json.dumps(numbers)}, "operation": "square_sum", "request_id": "{key}"}}'
        for _ in range(BATCH_MAX_REQUESTS)
    ]
    body = '{\n    "requests": [\n        ' + ",\n        ".join(requests) + "\n    ]\n}"

    assert len(body.encode()) <= batch_body_limit(message_bytes)
    # The contract's limit, which the gateway and the server each know.
    assert BATCH_MAX_REQUESTS == MAX_BATCH_REQUESTS


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
    assert parsed.descriptor_path == Path("/app/gen/envoy/jobs.binpb")
    assert parsed.max_request_bytes == 1024


def test_the_cli_refuses_a_host_name_without_dns() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", "/tmp/envoy.yaml", "--upstream", "server:50051"])


def test_several_upstreams_make_one_balanced_health_checked_cluster(tmp_path: Path) -> None:
    rendered = render_config(
        options(upstream_host="10.77.0.11", more_upstreams=(("10.77.0.12", 50051),))
    )
    config = yaml.safe_load(rendered)

    (cluster,) = config["static_resources"]["clusters"]
    (locality,) = cluster["load_assignment"]["endpoints"]
    addresses = [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in locality["lb_endpoints"]
    ]
    assert addresses == [("10.77.0.11", 50051), ("10.77.0.12", 50051)]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    # Each endpoint is probed with the gRPC health check, and NOT_SERVING takes it out at the
    # next probe.
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == "jobs.v1.JobService"
    validated = envoy_validate(rendered, tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_upstream_tls_accepts_each_servers_own_address(tmp_path: Path) -> None:
    ca = ThrowawayCa.create(tmp_path / "tls")
    config = yaml.safe_load(
        render_config(
            options(
                upstream_host="10.77.0.11",
                more_upstreams=(("10.77.0.12", 50051),),
                upstream_tls_ca_file=ca.ca_file,
            )
        )
    )

    (cluster,) = config["static_resources"]["clusters"]
    validation = cluster["transport_socket"]["typed_config"]["common_tls_context"][
        "validation_context"
    ]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.77.0.11"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.77.0.12"}},
    ]


@pytest.mark.parametrize(
    "more_upstreams",
    [(("server-b", 50051),), (("127.0.0.1", 50051),)],
    ids=["name-without-dns", "listed-twice"],
)
def test_bad_extra_upstreams_are_refused(more_upstreams: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(ValueError, match="upstream"):
        options(more_upstreams=more_upstreams)


def test_the_cli_takes_several_upstreams() -> None:
    parsed, _ = parse_args(
        [
            "--out",
            "/tmp/envoy.yaml",
            "--upstream",
            "10.77.0.11:50051",
            "--upstream",
            "10.77.0.12:50052",
        ],
        environ={},
    )

    assert parsed.upstreams == [("10.77.0.11", 50051), ("10.77.0.12", 50052)]
    assert parsed.upstream_dns is False


def _route_for(config: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The first route of the API's virtual host that Envoy would pick for this request."""
    virtual_host = _connection_manager(config)["route_config"]["virtual_hosts"][0]
    for route in virtual_host["routes"]:
        match = route["match"]
        if "prefix" in match and not path.startswith(match["prefix"]):
            continue
        if "path" in match and path != match["path"]:
            continue
        if "safe_regex" in match and not re.fullmatch(match["safe_regex"]["regex"], path):
            continue
        wanted_method = [
            h["string_match"]["exact"] for h in match.get("headers", []) if h["name"] == ":method"
        ]
        if wanted_method and wanted_method != [method]:
            continue
        if any(h["name"] == ":path" for h in match.get("headers", [])):
            continue  # the query-parameter guards: these requests carry no query
        found: dict[str, Any] = route
        return found
    raise AssertionError(f"no route for {method} {path}")


def _retry_on(config: dict[str, Any], method: str, path: str) -> set[str]:
    virtual_host = _connection_manager(config)["route_config"]["virtual_hosts"][0]
    route = _route_for(config, method, path)["route"]
    policy = route.get("retry_policy", virtual_host["retry_policy"])
    return set(policy["retry_on"].split(","))


# Failures where the request never reached a server's handler: safe to retry for any call.
NEVER_SENT = {"reset-before-request", "connect-failure", "refused-stream"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/jobs.v1.JobService/SubmitJob"),
        ("POST", "/jobs.v1.JobService/BatchSubmitJobs"),
        ("POST", "/jobs.v1.JobService/CancelJob"),
        ("POST", "/jobs.v1.JobService/WatchJob"),
        ("POST", "/jobs.v1.JobService/WatchJobs"),
        ("POST", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs:batchSubmit"),
        ("POST", "/api/v1/jobs/abc:cancel"),
        ("GET", "/api/v1/jobs/abc/watch"),
    ],
)
def test_calls_that_change_state_or_stream_are_retried_only_when_never_sent(
    method: str, path: str
) -> None:
    config = yaml.safe_load(render_config(options()))

    # Never `unavailable` (the server may have stored the job before answering it) nor `reset`
    # (the request may have been sent).
    assert _retry_on(config, method, path) == NEVER_SENT


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/jobs.v1.JobService/GetStatus"),
        ("POST", "/jobs.v1.JobService/GetResult"),
        ("POST", "/jobs.v1.JobService/ListJobs"),
        ("GET", "/api/v1/jobs/abc/status"),
        ("GET", "/api/v1/jobs/abc/result"),
        ("GET", "/api/v1/jobs"),
    ],
)
def test_read_only_calls_are_also_retried_on_unavailable_elsewhere(method: str, path: str) -> None:
    config = yaml.safe_load(render_config(options(unary_timeout_seconds=7)))

    route = _route_for(config, method, path)["route"]
    policy = route["retry_policy"]
    assert set(policy["retry_on"].split(",")) == NEVER_SENT | {"unavailable"}
    assert 1 <= policy["num_retries"] <= 3
    # A try may take as long as the whole call: no try is cut short by the retry policy.
    assert policy["per_try_timeout"] == route["timeout"] == "7.000s"
    assert [p["name"] for p in policy["retry_host_predicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]
