"""`jobs` command line: turn arguments into a request, call JobService (or AdminService for
`jobs keys`), render the answer. Every call presents $JOBS_API_KEY (or --api-key)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from cli import client
from cli.output import Output, choose_output, report_error
from jobcore.keys.expiry import EXPIRES_HELP, parse_expiry

# Distinct exit codes, so scripts can tell "fix your input" from "try again later".
EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server refused the call (invalid, not found, already finished …)
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_UNAVAILABLE = 3  # the server could not be reached, or a watch could not be resumed
EXIT_JOB_UNSUCCESSFUL = 4  # a watched job ended FAILED or CANCELLED
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# Every operation the generated enum knows, so a new one needs no change here.
OPERATIONS = [value.name for value in pb.Operation.DESCRIPTOR.values if value.number != 0]
API_KEY_ENV = "JOBS_API_KEY"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _expiry(text: str) -> Timestamp:
    try:
        moment = parse_expiry(text, now=datetime.now(UTC))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _add_common_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--target, --cacert, --api-key and --json, accepted before the command and after it.

    Each parser gets its own option objects (argparse's `parents` would share them); a
    subcommand's are SUPPRESSed so that, when not repeated, the value given before stays.
    """
    parser.add_argument(
        "--target",
        default=None if top_level else argparse.SUPPRESS,
        help="server HOST:PORT, or https://HOST:PORT for TLS "
        f"(default: $JOBS_TARGET or {client.DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--cacert",
        type=Path,
        default=None if top_level else argparse.SUPPRESS,
        metavar="FILE",
        help="use TLS and trust the CA certificates in FILE, PEM (default: $JOBS_CA_FILE; "
        "an https:// target without it trusts the system's CAs)",
    )
    parser.add_argument(
        "--api-key",
        default=None if top_level else argparse.SUPPRESS,
        metavar="KEY",
        help=f"the API key every call presents (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="print JSON lines (the default when stdout is not a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `jobs` parser: one subcommand per RPC."""
    parser = argparse.ArgumentParser(
        prog="jobs",
        description="Submit math jobs to the job service over gRPC and follow them.",
        epilog="exit codes: 0 ok, 1 refused by the server, 2 usage, 3 server unavailable, "
        "4 watched job FAILED or CANCELLED",
    )
    _add_common_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="submit a job (or --count jobs)")
    _add_common_options(submit, top_level=False)
    submit.add_argument("operation", choices=OPERATIONS, help="the computation")
    submit.add_argument(
        "numbers", nargs="*", type=float, metavar="NUMBER", help="the numbers to compute over"
    )
    submit.add_argument(
        "--watch", action="store_true", help="follow the job (or jobs) until finished"
    )
    submit.add_argument(
        "--request-id",
        default="",
        metavar="KEY",
        help="idempotency key: resubmitting with the same key returns the same job "
        "(with --count, job i gets KEY-i)",
    )
    submit.add_argument(
        "--count",
        type=_positive,
        default=1,
        metavar="N",
        help="submit N identical jobs, up to 1,000 per call (BatchSubmitJobs); each has a "
        "request id, so a call sent again after an error returns the same jobs",
    )

    listing = commands.add_parser("list", help="list jobs, newest first")
    _add_common_options(listing, top_level=False)
    listing.add_argument(
        "--filter",
        default="",
        metavar="EXPR",
        help='e.g. \'status = "FAILED" AND create_time > "2026-11-01T00:00:00Z"\'',
    )
    listing.add_argument("--page-size", type=_positive, default=50, metavar="N")
    listing.add_argument("--all", action="store_true", help="follow next_page_token to the end")

    for name, summary in (
        ("status", "show a job's state"),
        ("result", "show a job with its result, once it has finished"),
        ("cancel", "cancel a pending or running job"),
    ):
        command = commands.add_parser(name, help=summary)
        _add_common_options(command, top_level=False)
        command.add_argument("job_id", metavar="ID", help="the id printed by submit")
    watch = commands.add_parser("watch", help="follow jobs until each has finished")
    _add_common_options(watch, top_level=False)
    watch.add_argument(
        "job_ids",
        nargs="+",
        metavar="ID",
        help="the ids printed by submit (several: one WatchJobs stream for all)",
    )
    _add_keys_commands(commands)
    return parser


def _add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`jobs keys create|list|revoke`: AdminService, with a key that has the `admin` scope."""
    keys = commands.add_parser("keys", help="make, list and revoke API keys (needs `admin`)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = key_commands.add_parser("create", help="make a key and print it (only this once)")
    _add_common_options(create, top_level=False)
    create.add_argument("--tenant", required=True, help="the tenant whose jobs the key reaches")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="what the key may do: jobs.read, jobs.write or admin; repeat for several",
    )
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument("--expires", type=_expiry, default=None, help=EXPIRES_HELP)
    listing = key_commands.add_parser("list", help="list the keys that work now, newest first")
    _add_common_options(listing, top_level=False)
    listing.add_argument("--all", action="store_true", help="also revoked and expired keys")
    revoke = key_commands.add_parser("revoke", help="stop a key from working on every server")
    _add_common_options(revoke, top_level=False)
    revoke.add_argument("key_id", metavar="ID", help="the key's id, as create or list print it")


async def _follow(
    stub: pb_grpc.JobServiceAsyncStub, channel: grpc.aio.Channel, job: pb.Job, output: Output
) -> int:
    """Render every update of one job; exit code by how it ended."""
    final = job
    with output.follow(job) as show:
        async for update in client.watch_job(
            stub, channel, job.id, on_resume=lambda note: print(f"jobs: {note}", file=sys.stderr)
        ):
            show(update)
            final = update.job
    return EXIT_OK if final.status == pb.SUCCESS else EXIT_JOB_UNSUCCESSFUL


async def _follow_many(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    job_ids: Sequence[str],
    output: Output,
) -> int:
    """Render the states of several jobs on one stream; exit code by how they all ended."""
    unique = list(dict.fromkeys(job_ids))
    with output.follow_many(unique) as show:
        finished = await client.watch_jobs(
            stub,
            channel,
            unique,
            on_update=show,
            on_resume=lambda note: print(f"jobs: {note}", file=sys.stderr),
        )
    succeeded = all(job.status == pb.SUCCESS for job in finished)
    return EXIT_OK if succeeded else EXIT_JOB_UNSUCCESSFUL


async def _submit(
    stub: pb_grpc.JobServiceAsyncStub,
    channel: grpc.aio.Channel,
    args: argparse.Namespace,
    output: Output,
) -> int:
    """One job (shown, or followed with --watch) or a --count batch with progress."""
    request = pb.SubmitJobRequest(
        data=args.numbers,
        operation=pb.Operation.Value(args.operation),
        request_id=args.request_id,
    )
    if args.count == 1:
        job = await stub.SubmitJob(request, timeout=client.UNARY_TIMEOUT_SECONDS)
        if args.watch:
            return await _follow(stub, channel, job, output)
        output.job(job)
        return EXIT_OK
    with output.batch(count=args.count, watch=args.watch) as view:
        finished = await client.submit_batch(
            stub,
            channel,
            client.batch_requests(request, args.count),
            watch=args.watch,
            on_submitted=view.submitted,
            on_finished=view.finished,
        )
    succeeded = all(job.status == pb.SUCCESS for job in finished)
    return EXIT_OK if succeeded else EXIT_JOB_UNSUCCESSFUL


async def _list(stub: pb_grpc.JobServiceAsyncStub, args: argparse.Namespace, output: Output) -> int:
    """One page, or every page with --all; the next page's token goes to stderr."""
    token = ""
    while True:
        page = await stub.ListJobs(
            pb.ListJobsRequest(page_size=args.page_size, page_token=token, filter=args.filter),
            timeout=client.UNARY_TIMEOUT_SECONDS,
        )
        output.jobs(page.jobs)
        token = page.next_page_token
        if not token:
            return EXIT_OK
        if not args.all:
            print(f"jobs: more jobs; next page token: {token}", file=sys.stderr)
            return EXIT_OK


async def _keys(channel: grpc.aio.Channel, args: argparse.Namespace, output: Output) -> int:
    """One AdminService call: make, list or revoke keys."""
    stub = pb_grpc.AdminServiceStub(channel)
    timeout = client.UNARY_TIMEOUT_SECONDS
    match args.keys_command:
        case "create":
            created = await stub.CreateApiKey(
                pb.CreateApiKeyRequest(
                    tenant=args.tenant, scopes=args.scopes, name=args.name, expires_at=args.expires
                ),
                timeout=timeout,
            )
            output.new_api_key(created)
        case "list":
            listed = await stub.ListApiKeys(
                pb.ListApiKeysRequest(include_inactive=args.all), timeout=timeout
            )
            output.api_keys(listed.api_keys)
        case "revoke":
            revoked = await stub.RevokeApiKey(
                pb.RevokeApiKeyRequest(key_id=args.key_id), timeout=timeout
            )
            output.api_keys([revoked])
        case _:  # pragma: no cover - argparse allows only the commands above
            raise AssertionError(args.keys_command)
    return EXIT_OK


async def run(args: argparse.Namespace, output: Output) -> int:
    """Open the channel, make the calls the command needs and render them."""
    async with client.open_channel(
        args.target, ca_file=args.cacert, api_key=args.api_key
    ) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        timeout = client.UNARY_TIMEOUT_SECONDS
        match args.command:
            case "keys":
                return await _keys(channel, args, output)
            case "submit":
                return await _submit(stub, channel, args, output)
            case "watch" if len(args.job_ids) == 1:
                return await _follow(stub, channel, pb.Job(id=args.job_ids[0]), output)
            case "watch":
                return await _follow_many(stub, channel, args.job_ids, output)
            case "list":
                return await _list(stub, args, output)
            case "status":
                job = await stub.GetStatus(pb.GetStatusRequest(job_id=args.job_id), timeout=timeout)
            case "result":
                job = await stub.GetResult(pb.GetResultRequest(job_id=args.job_id), timeout=timeout)
            case "cancel":
                job = await stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id), timeout=timeout)
            case _:  # pragma: no cover - argparse allows only the commands above
                raise AssertionError(args.command)
        output.job(job)
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobs` console script (and `python -m cli`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.target = args.target or os.environ.get("JOBS_TARGET") or client.DEFAULT_TARGET
    args.api_key = (args.api_key or os.environ.get(API_KEY_ENV) or "").strip() or None
    if args.api_key is not None and not (args.api_key.isascii() and args.api_key.isprintable()):
        # gRPC would refuse it as a header value, with a less helpful message.
        parser.error(f"the API key (--api-key or ${API_KEY_ENV}) has characters no key has")
    if args.cacert is None and os.environ.get("JOBS_CA_FILE"):
        args.cacert = Path(os.environ["JOBS_CA_FILE"])
    output = choose_output(json_lines=args.json)
    try:
        return asyncio.run(run(args, output))
    except grpc.aio.AioRpcError as error:
        report_error(error, target=args.target, api_key_given=args.api_key is not None)
        return EXIT_UNAVAILABLE if error.code() in UNAVAILABLE_CODES else EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
