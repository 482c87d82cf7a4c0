"""Reference R1: a bare grpc.aio server that answers SubmitJob with a constant Job.

It speaks the service's own contract, so the load generator runs exactly the same
client code against it: the difference to the real SubmitJob is the service's work.
Run as `python -m benchmarks.echo_server PORT`; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from jobs.v1 import jobs_service_pb2 as pb


def _reply() -> pb.Job:
    now = Timestamp()
    now.GetCurrentTime()
    return pb.Job(
        id="019ad2c4-5e1b-7c31-9a0e-3f6b2d1c8e47",
        status=pb.PENDING,
        operation=pb.square_sum,
        created_at=now,
        updated_at=now,
    )


def submit_job_handler() -> grpc.GenericRpcHandler:
    """SubmitJob without validation, storage or queueing: the floor of any gRPC service here."""
    reply = _reply()

    async def submit_job(
        _request: pb.SubmitJobRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        return reply

    return grpc.method_handlers_generic_handler(
        "jobs.v1.JobService",
        {
            "SubmitJob": grpc.unary_unary_rpc_method_handler(
                submit_job,
                request_deserializer=pb.SubmitJobRequest.FromString,
                response_serializer=pb.Job.SerializeToString,
            )
        },
    )


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((submit_job_handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
