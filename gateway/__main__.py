"""Write the Envoy bootstrap (gateway/envoy.yaml filled in): `python -m gateway --out FILE ...`.

The defaults are the local layout: everything on loopback, gRPC server on 127.0.0.1:50051.
Containers pass `--listen-host 0.0.0.0 --upstream server:50051 --dns`; servers on hosts of their
own are each named, `--upstream 10.0.0.11:50051 --upstream 10.0.0.12:50051`. TLS, the edge limits and
the accepted origins and hosts default to the GATEWAY_* environment variables (.env.example).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.config import (
    DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    GatewayOptions,
    batch_body_limit,
    submit_body_limit,
    write_config,
)

# The server's heartbeat default (jobcore.settings): a watch idle timeout must exceed it.
DEFAULT_WATCH_HEARTBEAT_SECONDS = 15.0
DEFAULT_MAX_JOB_NUMBERS = 100_000


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _path_or_none(text: str) -> Path | None:
    return Path(text).absolute() if text else None


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[GatewayOptions, Path]:
    """Turn command line arguments (defaults from `environ`) into gateway options and the path."""
    env = os.environ if environ is None else environ
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
    default_upstream = f"{defaults.upstream_host}:{defaults.upstream_port}"
    parser.add_argument(
        "--upstream",
        type=_host_port,
        action="append",
        metavar="HOST:PORT",
        help="a gRPC server; repeat it for several, balanced and each health-checked "
        f"(default {default_upstream})",
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
    max_job_numbers = int(env.get("MAX_JOB_NUMBERS", DEFAULT_MAX_JOB_NUMBERS))
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=int(env.get("GATEWAY_MAX_REQUEST_BYTES") or submit_body_limit(max_job_numbers)),
        help="larger submit bodies are answered with 413 (default: GATEWAY_MAX_REQUEST_BYTES, "
        "else derived from MAX_JOB_NUMBERS: 32 bytes per number plus 64 KiB)",
    )
    max_message_bytes = int(env.get("GRPC_MAX_MESSAGE_BYTES") or DEFAULT_GRPC_MAX_MESSAGE_BYTES)
    parser.add_argument(
        "--max-batch-request-bytes",
        type=int,
        default=int(
            env.get("GATEWAY_MAX_BATCH_REQUEST_BYTES") or batch_body_limit(max_message_bytes)
        ),
        help="larger batch submit bodies are answered with 413 (default: "
        "GATEWAY_MAX_BATCH_REQUEST_BYTES, else derived from the gRPC server's "
        "GRPC_MAX_MESSAGE_BYTES: 32 bytes per 8 of the message, 1 KiB per request, 64 KiB)",
    )
    parser.add_argument(
        "--max-other-request-bytes",
        type=int,
        default=int(env.get("GATEWAY_MAX_OTHER_REQUEST_BYTES") or defaults.max_other_request_bytes),
        help="the same for every other REST body (default: GATEWAY_MAX_OTHER_REQUEST_BYTES "
        "or 64 KiB)",
    )
    parser.add_argument(
        "--tls-cert-file",
        default=env.get("GATEWAY_TLS_CERT_FILE", ""),
        help="serve TLS with this certificate chain, PEM (default: GATEWAY_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-key-file",
        default=env.get("GATEWAY_TLS_KEY_FILE", ""),
        help="the certificate's private key, PEM (default: GATEWAY_TLS_KEY_FILE)",
    )
    parser.add_argument(
        "--upstream-tls-ca-file",
        default=env.get("GATEWAY_UPSTREAM_TLS_CA_FILE", ""),
        help="talk TLS to the gRPC servers, trusting this CA (default: "
        "GATEWAY_UPSTREAM_TLS_CA_FILE; unset: plaintext)",
    )
    for option, variable, default, what in (
        ("request-headers-timeout", "REQUEST_HEADERS", 10.0, "to send the request headers"),
        ("request-timeout", "REQUEST", 60.0, "to send the whole request"),
        ("unary-timeout", "UNARY", 30.0, "for the answer of a unary call"),
        ("stream-idle-timeout", "STREAM_IDLE", 300.0, "of silence on a stream"),
        ("idle-timeout", "IDLE", 300.0, "of a connection without streams"),
    ):
        parser.add_argument(
            f"--{option}-seconds",
            type=float,
            default=float(env.get(f"GATEWAY_{variable}_TIMEOUT_SECONDS") or default),
            help=f"longest wait {what} (default: GATEWAY_{variable}_TIMEOUT_SECONDS or {default:g})",
        )
    heartbeat = float(env.get("WATCH_HEARTBEAT_SECONDS") or DEFAULT_WATCH_HEARTBEAT_SECONDS)
    parser.add_argument(
        "--watch-idle-timeout-seconds",
        type=float,
        default=float(env.get("GATEWAY_WATCH_IDLE_TIMEOUT_SECONDS") or max(60.0, 4 * heartbeat)),
        help="a watch stream silent this long is reset; must exceed WATCH_HEARTBEAT_SECONDS "
        "(default: GATEWAY_WATCH_IDLE_TIMEOUT_SECONDS, else the larger of 60 and 4 heartbeats)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=int(env.get("GATEWAY_MAX_CONNECTIONS") or defaults.max_connections),
        help="downstream connections beyond this are refused (default: GATEWAY_MAX_CONNECTIONS "
        "or 50000)",
    )
    parser.add_argument(
        "--max-heap-bytes",
        type=int,
        default=int(env.get("GATEWAY_MAX_HEAP_BYTES") or defaults.max_heap_bytes),
        help="Envoy's heap limit: at 95%% new requests get 503 (default: GATEWAY_MAX_HEAP_BYTES "
        "or 1 GiB)",
    )
    parser.add_argument(
        "--cors-origins",
        type=_names,
        default=_names(env.get("GATEWAY_CORS_ORIGINS", "")),
        help="comma-separated origins (scheme://host[:port]) whose pages may read the API "
        "(default: GATEWAY_CORS_ORIGINS; none: same-origin only)",
    )
    parser.add_argument(
        "--allowed-hosts",
        type=_names,
        default=_names(env.get("GATEWAY_ALLOWED_HOSTS", "")) or defaults.allowed_hosts,
        help='comma-separated Host names served, any port; "*" for any (default: '
        "GATEWAY_ALLOWED_HOSTS or localhost,127.0.0.1,[::1])",
    )
    parser.add_argument(
        "--health-check-interval-seconds",
        type=float,
        default=defaults.health_check_interval_seconds,
    )
    args = parser.parse_args(argv)
    (upstream_host, upstream_port), *more_upstreams = args.upstream or [
        (defaults.upstream_host, defaults.upstream_port)
    ]
    try:
        options = GatewayOptions(
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            upstream_host=upstream_host,
            upstream_port=upstream_port,
            upstream_dns=args.dns,
            more_upstreams=tuple(more_upstreams),
            # Envoy resolves a relative path against its own working directory, not ours.
            descriptor_path=args.descriptor.absolute(),
            max_request_bytes=args.max_request_bytes,
            max_other_request_bytes=args.max_other_request_bytes,
            max_batch_request_bytes=args.max_batch_request_bytes,
            health_check_interval_seconds=args.health_check_interval_seconds,
            tls_cert_file=_path_or_none(args.tls_cert_file),
            tls_key_file=_path_or_none(args.tls_key_file),
            upstream_tls_ca_file=_path_or_none(args.upstream_tls_ca_file),
            request_headers_timeout_seconds=args.request_headers_timeout_seconds,
            request_timeout_seconds=args.request_timeout_seconds,
            unary_timeout_seconds=args.unary_timeout_seconds,
            stream_idle_timeout_seconds=args.stream_idle_timeout_seconds,
            watch_idle_timeout_seconds=args.watch_idle_timeout_seconds,
            idle_timeout_seconds=args.idle_timeout_seconds,
            max_connections=args.max_connections,
            max_heap_bytes=args.max_heap_bytes,
            cors_origins=args.cors_origins,
            allowed_hosts=args.allowed_hosts,
        )
        if options.watch_idle_timeout_seconds <= heartbeat:
            raise ValueError(
                f"the watch idle timeout ({options.watch_idle_timeout_seconds:g} s) must exceed "
                f"WATCH_HEARTBEAT_SECONDS ({heartbeat:g} s), or idle watches are cut"
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
