"""The Envoy bootstrap of the gateway: envoy.yaml, beside this module, with what varies filled in.

envoy.yaml is the whole configuration as an Envoy user reads it, and submit.lua the submit route's
script. Python holds only what differs between a local run, the tests and the container image
(addresses, whether the upstream is a DNS name, the body limit, the health check interval, file
paths), and the few names the OpenAPI generator shares with the routes.
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

# What envoy.yaml's routes also spell out, for the OpenAPI document and docs page (openapi.py).
SERVICE = "jobs.v1.JobService"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# The submit route, which answers 201 instead of the transcoder's 200.
SUBMIT_PATH_REGEX = "^/api/v1/jobs/*$"
# What the docs page loads from the `swagger-ui-dist` package: only these are served.
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
SWAGGER_UI_PACKAGE = Path("node_modules") / "swagger-ui-dist"


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


def template_values(options: GatewayOptions) -> dict[str, str | int]:
    """The value of each placeholder in envoy.yaml."""
    return {
        "admin_host": options.admin_host,
        "admin_port": options.admin_port,
        "listen_host": options.listen_host,
        "listen_port": options.listen_port,
        "upstream_type": "STRICT_DNS" if options.upstream_dns else "STATIC",
        "upstream_host": options.upstream_host,
        "upstream_port": options.upstream_port,
        "descriptor": str(options.descriptor_path),
        "web_root": str(options.web_root),
        "swagger_ui_root": str(options.swagger_ui_root),
        "submit_lua": str(SUBMIT_LUA),
        "max_request_bytes": options.max_request_bytes,
        # Protobuf JSON durations take decimal seconds; `:g` could produce an exponent.
        "health_check_interval": f"{options.health_check_interval_seconds:.3f}s",
    }


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
    return PLACEHOLDER.sub(lambda match: values[match[1]], template)


def write_config(options: GatewayOptions, path: Path) -> None:
    """Write the bootstrap for `envoy -c`.

    Refuses when a static file is missing: Envoy would start and answer 404 for it.
    """
    missing = [str(file) for file in options.static_files() if not file.is_file()]
    if missing:
        raise FileNotFoundError(
            "the gateway's static files are missing (`make proto` generates openapi.json and "
            "docs/; `npm ci` installs swagger-ui-dist): " + ", ".join(missing)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(options), encoding="utf-8")
