"""The Envoy bootstrap of the gateway: envoy.yaml, beside this module, with what varies filled in.

envoy.yaml is the whole configuration as an Envoy user reads it, and submit.lua the submit routes'
script. Python holds only what differs between a local run, the tests and the container image
(addresses, whether the upstream is a DNS name, TLS files, the edge limits, the accepted origins
and hosts, file paths), and the few names the OpenAPI generator shares with the routes.

Besides `${name}` placeholders, envoy.yaml has optional blocks: the lines between `#if name` and
`#endif` (each alone on its line) are kept only when `name` is on (see `template_switches`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().with_name("envoy.yaml")
SUBMIT_LUA = Path(__file__).resolve().with_name("submit.lua")
# `${name}` only: a bare `$` is common in the template's regexes.
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
BLOCK_START = re.compile(r"^\s*#if (\w+)\s*$")
BLOCK_END = re.compile(r"^\s*#endif\s*$")

# What envoy.yaml's routes also spell out, for the OpenAPI document and docs page (openapi.py).
# The services the transcoder serves as REST (its `services`), the first one naming the API.
SERVICES = ("jobs.v1.JobService", "jobs.v1.AdminService")
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# The submit route, which answers 201 instead of the transcoder's 200.
SUBMIT_PATH_REGEX = "^/api/v1/jobs/*$"
# The batch submit route, which answers 201 too.
BATCH_SUBMIT_PATH = "/api/v1/jobs:batchSubmit"
# What the docs page loads from the `swagger-ui-dist` package: only these are served.
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
SWAGGER_UI_PACKAGE = Path("node_modules") / "swagger-ui-dist"
# The jobs dashboard, served at /ui: Vite's build of dashboard/ (`make dashboard`).
DASHBOARD_PATH = "/ui"
DASHBOARD_BUILD = Path("dashboard") / "dist"

# The longest JSON text of one number a valid submit can carry, with its separator and room for
# pretty-printing: the shortest round-trip form of any double is at most 24 characters
# ("-2.2250738585072014e-308").
SUBMIT_BYTES_PER_NUMBER = 32
# Room for the other fields of a submit (operation, request_id) and the JSON around them.
SUBMIT_BYTES_SLACK = 64 * 1024
# The bytes of one number in a gRPC message (a packed double).
MESSAGE_BYTES_PER_NUMBER = 8
# The most requests in one batch (the contract's limit), and room for the fields of each besides
# its numbers: a request_id of 128 characters, each written as a 6-character escape, and the rest.
BATCH_MAX_REQUESTS = 1000
BATCH_BYTES_PER_REQUEST = 1024
# The gRPC server's message limit when GRPC_MAX_MESSAGE_BYTES is not set (jobcore.settings).
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Hosts accepted by default: the names a browser or client on this machine uses. A DNS name an
# attacker controls that resolves to 127.0.0.1 (DNS rebinding) is refused.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def submit_body_limit(max_job_numbers: int) -> int:
    """The largest REST submit body worth reading when a job may carry `max_job_numbers` numbers."""
    return max_job_numbers * SUBMIT_BYTES_PER_NUMBER + SUBMIT_BYTES_SLACK


def batch_body_limit(max_message_bytes: int) -> int:
    """The largest REST batch submit body worth reading when the gRPC server takes messages of
    up to `max_message_bytes`: as many numbers as fit in such a message, each as long as JSON
    may write it, and 1,000 requests' other fields."""
    numbers = max_message_bytes // MESSAGE_BYTES_PER_NUMBER
    return (
        numbers * SUBMIT_BYTES_PER_NUMBER
        + BATCH_MAX_REQUESTS * BATCH_BYTES_PER_REQUEST
        + SUBMIT_BYTES_SLACK
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
    # True: resolve upstream_host and balance over every address behind it (compose replicas).
    upstream_dns: bool
    descriptor_path: Path
    # More gRPC servers (host, port) beside upstream_host: one cluster, balanced over all of
    # them, each health-checked (servers on hosts of their own); addresses unless upstream_dns.
    more_upstreams: tuple[tuple[str, int], ...] = ()
    # The submit route's body cap (its body is buffered for submit.lua): the largest valid submit.
    max_request_bytes: int = submit_body_limit(100_000)
    # The batch submit route's (buffered too): the largest batch the gRPC server takes.
    max_batch_request_bytes: int = batch_body_limit(DEFAULT_GRPC_MAX_MESSAGE_BYTES)
    # Every other REST body (cancel) is small.
    max_other_request_bytes: int = 64 * 1024
    health_check_interval_seconds: float = 1.0
    # TLS at the listener (both files, or neither: plaintext).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # TLS to the gRPC servers, verified against this CA and the upstream host's name or address.
    upstream_tls_ca_file: Path | None = None
    # Edge limits (Envoy's edge best practices), in seconds and bytes.
    request_headers_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 60.0
    unary_timeout_seconds: float = 30.0
    stream_idle_timeout_seconds: float = 300.0
    # Watch streams (REST SSE and gRPC) have no overall timeout; this must exceed the heartbeat.
    watch_idle_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 300.0
    max_connections: int = 50_000
    max_heap_bytes: int = 1024 * 1024 * 1024
    # Origins allowed to read responses cross-origin (CORS); none: same-origin only.
    cors_origins: tuple[str, ...] = ()
    # Host header values served (any port); "*" alone accepts every host.
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    # None: the layout of a checkout and of the gateway image, <root>/gen/envoy/jobs.binpb, where
    # `make proto` writes openapi.json and docs/ beside the descriptor and npm installs Swagger UI
    # into <root>/node_modules/swagger-ui-dist.
    web_dir: Path | None = None
    swagger_ui_dir: Path | None = None
    # None: <root>/dashboard/dist, beside <root>/gen.
    dashboard_dir: Path | None = None

    def __post_init__(self) -> None:
        """Reject values Envoy would refuse later with a far less helpful message."""
        self._check_upstreams()
        for name in ("max_request_bytes", "max_other_request_bytes", "max_batch_request_bytes"):
            if not 0 < getattr(self, name) < 2**32:
                raise ValueError(f"{name} must be between 1 and 2**32 - 1")
        if self.health_check_interval_seconds < 0.001:
            raise ValueError("health_check_interval_seconds must be at least 0.001")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for name in (
            "request_headers_timeout_seconds",
            "request_timeout_seconds",
            "unary_timeout_seconds",
            "stream_idle_timeout_seconds",
            "watch_idle_timeout_seconds",
            "idle_timeout_seconds",
        ):
            # 0 would switch the limit off in Envoy; an edge keeps every one.
            if getattr(self, name) < 0.001:
                raise ValueError(f"{name} must be at least 0.001")
        if self.max_connections < 1 or self.max_heap_bytes < 1:
            raise ValueError("max_connections and max_heap_bytes must be positive")
        for origin in self.cors_origins:
            if not re.fullmatch(r"https?://[^/\s*]+", origin):
                raise ValueError(f"cors_origins: {origin!r} is not scheme://host[:port]")
        if not self.allowed_hosts or ("*" in self.allowed_hosts and len(self.allowed_hosts) > 1):
            raise ValueError('allowed_hosts is a list of host names, or "*" alone for any host')

    def _check_upstreams(self) -> None:
        names = [host for host, _ in self.upstreams if not _is_address(host)]
        if names and not self.upstream_dns:
            raise ValueError(
                f"upstream host {names[0]!r} is not an IP address: "
                "a host name needs upstream_dns=True"
            )
        if len(set(self.upstreams)) != len(self.upstreams):
            raise ValueError("an upstream is listed twice: Envoy would count it as two servers")

    @property
    def upstreams(self) -> list[tuple[str, int]]:
        """Every gRPC server (host, port), the first one first."""
        return [(self.upstream_host, self.upstream_port), *self.more_upstreams]

    @property
    def tls(self) -> bool:
        """Whether the listener terminates TLS."""
        return self.tls_cert_file is not None

    @property
    def web_root(self) -> Path:
        """The folder with the generated openapi.json and docs/index.html."""
        return self.web_dir or self.descriptor_path.parent

    @property
    def swagger_ui_root(self) -> Path:
        """The installed `swagger-ui-dist` package."""
        return self.swagger_ui_dir or self.descriptor_path.parent.parent.parent / SWAGGER_UI_PACKAGE

    @property
    def dashboard_root(self) -> Path:
        """The dashboard's build: index.html and assets/."""
        return self.dashboard_dir or self.descriptor_path.parent.parent.parent / DASHBOARD_BUILD

    def static_files(self) -> list[Path]:
        """Every file the gateway serves from disk; Envoy would answer 404 for a missing one."""
        return [
            self.web_root / OPENAPI_PATH.removeprefix("/"),
            self.web_root / DOCS_PATH.removeprefix("/") / "index.html",
            *(self.swagger_ui_root / name for name in SWAGGER_UI_FILES),
            self.dashboard_root / "index.html",
        ]

    def tls_files(self) -> list[Path]:
        """The certificate, key and CA files Envoy reads at start (and refuses to start without)."""
        files = (self.tls_cert_file, self.tls_key_file, self.upstream_tls_ca_file)
        return [file for file in files if file is not None]


def _seconds(value: float) -> str:
    """A protobuf JSON duration; `:g` could produce an exponent."""
    return f"{value:.3f}s"


def template_values(options: GatewayOptions) -> dict[str, object]:
    """The value of each placeholder in envoy.yaml."""
    return {
        "admin_host": options.admin_host,
        "admin_port": options.admin_port,
        "listen_host": options.listen_host,
        "listen_port": options.listen_port,
        "upstream_type": "STRICT_DNS" if options.upstream_dns else "STATIC",
        "upstream_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            for host, port in options.upstreams
        ],
        "descriptor": str(options.descriptor_path),
        "web_root": str(options.web_root),
        "swagger_ui_root": str(options.swagger_ui_root),
        "dashboard_root": str(options.dashboard_root),
        "submit_lua": str(SUBMIT_LUA),
        "max_request_bytes": options.max_request_bytes,
        "max_other_request_bytes": options.max_other_request_bytes,
        "max_batch_request_bytes": options.max_batch_request_bytes,
        "health_check_interval": _seconds(options.health_check_interval_seconds),
        "tls_cert_file": str(options.tls_cert_file or ""),
        "tls_key_file": str(options.tls_key_file or ""),
        "upstream_tls_ca_file": str(options.upstream_tls_ca_file or ""),
        # SNI needs a name; an address is checked against the certificate's IP addresses. The
        # cluster sends one SNI value: the first upstream's name.
        "upstream_sni": "" if _is_address(options.upstream_host) else options.upstream_host,
        "upstream_san_matchers": [
            {"san_type": "IP_ADDRESS" if _is_address(host) else "DNS", "matcher": {"exact": host}}
            for host, _ in options.upstreams
        ],
        "request_headers_timeout": _seconds(options.request_headers_timeout_seconds),
        "request_timeout": _seconds(options.request_timeout_seconds),
        "unary_timeout": _seconds(options.unary_timeout_seconds),
        "stream_idle_timeout": _seconds(options.stream_idle_timeout_seconds),
        "watch_idle_timeout": _seconds(options.watch_idle_timeout_seconds),
        "idle_timeout": _seconds(options.idle_timeout_seconds),
        "max_connections": options.max_connections,
        "max_heap_bytes": options.max_heap_bytes,
        "cors_origins": [{"exact": origin} for origin in options.cors_origins],
        "allowed_hosts": list(options.allowed_hosts),
    }


def template_switches(options: GatewayOptions) -> dict[str, bool]:
    """Whether each `#if name` block of envoy.yaml is kept."""
    return {
        "tls": options.tls,
        "upstream_tls": options.upstream_tls_ca_file is not None,
        # With a list, hosts not on it reach a virtual host of their own that refuses them.
        "host_allowlist": options.allowed_hosts != ("*",),
    }


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _keep_switched_on(template: str, switches: dict[str, bool]) -> str:
    """The template without its switched-off blocks and without any `#if`/`#endif` line."""
    kept: list[str] = []
    current: str | None = None
    for number, line in enumerate(template.splitlines(keepends=True), start=1):
        start, end = BLOCK_START.match(line), BLOCK_END.match(line)
        if start:
            if current is not None or start[1] not in switches:
                raise ValueError(f"{TEMPLATE.name}:{number}: nested or unknown block {start[1]!r}")
            current = start[1]
        elif end:
            if current is None:
                raise ValueError(f"{TEMPLATE.name}:{number}: #endif without #if")
            current = None
        elif current is None or switches[current]:
            kept.append(line)
    if current is not None:
        raise ValueError(f"{TEMPLATE.name}: block {current!r} is never closed")
    return "".join(kept)


def render_config(options: GatewayOptions) -> str:
    """Return the bootstrap YAML for these options.

    Each `${name}` becomes the JSON form of its value (a quoted string or a number), which YAML
    reads as that same scalar whatever characters a path or host holds.
    """
    template = TEMPLATE.read_text(encoding="utf-8")
    values = {name: json.dumps(value) for name, value in template_values(options).items()}
    placeholders = set(PLACEHOLDER.findall(template))
    if placeholders != values.keys():
        raise ValueError(
            f"{TEMPLATE.name} and template_values() disagree on "
            f"{sorted(placeholders.symmetric_difference(values))}"
        )
    template = _keep_switched_on(template, template_switches(options))
    return PLACEHOLDER.sub(lambda match: values[match[1]], template)


def write_config(options: GatewayOptions, path: Path) -> None:
    """Write the bootstrap for `envoy -c`.

    Refuses when a static file is missing: Envoy would start and answer 404 for it.
    """
    missing = [str(file) for file in options.static_files() if not file.is_file()]
    if missing:
        raise FileNotFoundError(
            "the gateway's static files are missing (`make proto` generates openapi.json and "
            "docs/; `npm ci` installs swagger-ui-dist; `make dashboard` builds dashboard/dist): "
            + ", ".join(missing)
        )
    unreadable = [str(file) for file in options.tls_files() if not file.is_file()]
    if unreadable:
        raise FileNotFoundError("TLS files are missing: " + ", ".join(unreadable))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(options), encoding="utf-8")
