"""`python -m tests.hosts.client`: the fault suite's careful clients, run on the `client` host.

The cluster's tests start this inside the `client` namespace (its sockets must be there, and
grpc's own threads would not follow a thread that joined it), while they break hosts from
outside. It submits through the gateway with idempotency keys and watches every job with
resume (tests/faults/harness.py), then audits every acknowledged job in PostgreSQL and prints
the audit as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
from dataclasses import asdict

from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from tests.credentials import aio_channel
from tests.faults.harness import LoadRecord, Submitted, audit, run_load, submit_grpc, watch_grpc

# Settings the cluster passes in the environment, never on a command line.
API_KEY_VARIABLE = "HOSTS_API_KEY"
DATABASE_URL_VARIABLE = "HOSTS_DATABASE_URL"


async def load_and_audit(args: argparse.Namespace) -> dict[str, object]:
    """Run the load for its duration, let every job settle, audit."""
    record, rng = LoadRecord(), random.Random(args.seed)
    async with aio_channel(args.target, os.environ[API_KEY_VARIABLE]) as channel:
        stub = pb_grpc.JobServiceStub(channel)

        async def watch(submitted: Submitted) -> None:
            seen = record.watched.setdefault(submitted.job_id, [])
            await watch_grpc(stub, submitted.job_id, seen)

        await run_load(
            lambda: submit_grpc(stub, record, rng),
            rate_per_second=args.rate,
            duration_seconds=args.seconds,
            watch=watch if args.watch else None,
        )
    result = await audit(
        os.environ[DATABASE_URL_VARIABLE], record, settle_seconds=args.settle_seconds
    )
    return asdict(result)


def main() -> None:
    """Parse the arguments, run, print the audit."""
    parser = argparse.ArgumentParser(prog="python -m tests.hosts.client")
    parser.add_argument("--target", required=True, help="the gateway, HOST:PORT")
    parser.add_argument("--rate", type=float, required=True, help="submissions a second")
    parser.add_argument("--seconds", type=float, required=True, help="how long to submit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--watch", action="store_true", help="watch every job to its end")
    parser.add_argument("--settle-seconds", type=float, default=120)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load_and_audit(args))))


if __name__ == "__main__":
    main()
