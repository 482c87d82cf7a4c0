"""Runs one load generator in a fresh process pinned to its CPUs, with a hard time limit.

A fresh process per measurement means no client state (channels, threads, memory)
leaks from one measurement into the next, and the orchestrating process (which
supervises the stack) never competes with the load for the GIL.

The load generator does not collect cycles while it runs (like timeit): holding 10,000
streams, its own collector paused it for 50-130 ms every few seconds and up to 500 ms at
times (measured), and those pauses landed in the service's latency figures. Each run is
short and its process exits, so the uncollected garbage (about 400 MB at most) goes too.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TypeVar

Samples = dict[str, list[float]]
SpecT = TypeVar("SpecT")

_JOIN_SECONDS = 10


class LoadGeneratorError(RuntimeError):
    """The load generator failed or overran its time limit."""


def _child(
    function: Callable[[SpecT], Samples],
    spec: SpecT,
    cpus: frozenset[int] | None,
    sender: Connection,
) -> None:
    if cpus is not None:
        # Before any thread exists, so gRPC's and asyncio's threads inherit the mask.
        os.sched_setaffinity(0, cpus)
    gc.collect()
    gc.disable()
    try:
        sender.send(("ok", function(spec)))
    except BaseException:  # report anything to the parent rather than dying silently
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()


def run_pinned(
    function: Callable[[SpecT], Samples],
    spec: SpecT,
    *,
    cpus: frozenset[int] | None,
    timeout_seconds: float,
) -> Samples:
    """Call function(spec) in a spawned process on `cpus`; its samples, or LoadGeneratorError."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(function, spec, cpus, sender), name=function.__name__
    )
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_seconds):
            raise LoadGeneratorError(
                f"{function.__name__} did not finish within {timeout_seconds:.0f} s"
            )
        status, payload = receiver.recv()
    except EOFError as error:
        raise LoadGeneratorError(f"{function.__name__} exited without a result") from error
    finally:
        receiver.close()
        process.join(_JOIN_SECONDS)
        if process.is_alive():
            process.terminate()
            process.join()
    if status != "ok":
        raise LoadGeneratorError(f"{function.__name__} failed:\n{payload}")
    samples: Samples = payload
    return samples
