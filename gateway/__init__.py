"""Envoy gateway: REST (JSON transcoding), gRPC-Web and native gRPC in front of the job servers.

The configuration is envoy.yaml (with submit.lua) filled in by `render_config`, so that local runs,
tests and the container image share it; `python -m gateway` writes it for `envoy -c`.
"""

from gateway.config import GatewayOptions, render_config, write_config

__all__ = ["GatewayOptions", "render_config", "write_config"]
