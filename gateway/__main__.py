"""Write the Envoy bootstrap (gateway/envoy.yaml filled in): `python -m gateway --out FILE ...`.

The defaults are the local layout: everything on loopback, gRPC server on 127.0.0.1:50051.
Containers pass `--listen-host 0.0.0.0 --upstream server:50051 --dns`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from gateway.config import GatewayOptions, write_config


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_args(argv: Sequence[str] | None = None) -> tuple[GatewayOptions, Path]:
    """Turn command line arguments into gateway options and the output path."""
    defaults = GatewayOptions(
        listen_host="127.0.0.1",
        listen_port=8000,
        admin_host="127.0.0.1",
        admin_port=9901,
        upstream_host="127.0.0.1",
        upstream_port=50051,
        upstream_dns=False,
        descriptor_path=Path("gen/envoy/jobs.binpb"),
    )
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where to write the YAML")
    parser.add_argument("--listen-host", default=defaults.listen_host)
    parser.add_argument("--listen-port", type=int, default=defaults.listen_port)
    parser.add_argument(
        "--admin-host",
        default=defaults.admin_host,
        help="the admin interface has no authentication: keep it on loopback",
    )
    parser.add_argument("--admin-port", type=int, default=defaults.admin_port)
    parser.add_argument(
        "--upstream",
        type=_host_port,
        default=f"{defaults.upstream_host}:{defaults.upstream_port}",
        metavar="HOST:PORT",
        help="the gRPC server (default %(default)s)",
    )
    parser.add_argument(
        "--dns",
        action="store_true",
        help="resolve the upstream host name and balance over every address behind it",
    )
    parser.add_argument(
        "--descriptor",
        type=Path,
        default=defaults.descriptor_path,
        help="descriptor set of the contract (made by `make proto`)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=int(os.environ.get("GATEWAY_MAX_REQUEST_BYTES", defaults.max_request_bytes)),
        help="larger REST bodies are answered with 413 (default: GATEWAY_MAX_REQUEST_BYTES or 16 MiB)",
    )
    parser.add_argument(
        "--health-check-interval-seconds",
        type=float,
        default=defaults.health_check_interval_seconds,
    )
    args = parser.parse_args(argv)
    upstream_host, upstream_port = args.upstream
    try:
        options = GatewayOptions(
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            upstream_host=upstream_host,
            upstream_port=upstream_port,
            upstream_dns=args.dns,
            # Envoy resolves a relative path against its own working directory, not ours.
            descriptor_path=args.descriptor.absolute(),
            max_request_bytes=args.max_request_bytes,
            health_check_interval_seconds=args.health_check_interval_seconds,
        )
    except ValueError as error:
        parser.error(str(error))
    return options, args.out


def main(argv: Sequence[str] | None = None) -> None:
    """Render the bootstrap to the requested file."""
    options, out = parse_args(argv)
    write_config(options, out)


if __name__ == "__main__":
    main()
