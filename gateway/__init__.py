"""Envoy gateway: REST (JSON transcoding) and native gRPC in front of the job servers.

The configuration is rendered from Python (`build_config`) so that local runs, tests and the
container image share it; `python -m gateway` writes it as YAML for `envoy -c`.
"""

from gateway.config import GatewayOptions, build_config, write_config

__all__ = ["GatewayOptions", "build_config", "write_config"]
