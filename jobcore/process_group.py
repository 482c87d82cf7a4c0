"""Identical processes run as one: `python -m server` with SERVER_PROCESSES and `python -m worker`
with WORKER_PROCESSES above 1 (one Python process uses one core, whatever the machine has).

That is all it owns: start N, pass SIGTERM/SIGINT on, and end them all together, with the
first failure's exit status, as soon as one ends; each also dies with it if it is killed
outright (jobcore.parent_death). It never restarts one: restarting belongs to the process
manager (Compose, Kubernetes, devstack for `make run` and the tests), which sees the group
fail as one process and starts it again whole.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from jobcore.parent_death import run_dying_with_parent

logger = logging.getLogger(__name__)


def run_process_group(target: Callable[[int], object], *, count: int, name: str) -> int:
    """Run target(0) ... target(count - 1), each in a process of its own, until one ends;
    the group's exit status.

    `target` must be picklable (a module-level function, or a partial of one): the processes
    are spawned, not forked.
    """
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = [
        context.Process(
            # Killed with this process (by SIGTERM, so it drains): none is left holding a port.
            target=run_dying_with_parent,
            args=(signal.SIGTERM, target, index),
            name=f"{name}-{index}",
        )
        for index in range(count)
    ]
    for process in processes:
        process.start()

    signalled: set[int] = set()

    def drain_all(*_: object) -> None:
        # SIGTERM once each: each drains as a lone process would (a second one may cut a
        # Celery worker's warm shutdown short).
        for index, process in enumerate(processes):
            if process.exitcode is None and index not in signalled:
                signalled.add(index)
                process.terminate()

    signal.signal(signal.SIGTERM, drain_all)
    signal.signal(signal.SIGINT, drain_all)
    multiprocessing.connection.wait([process.sentinel for process in processes])
    # The status of the first to fail is the group's, not that of the others stopped after it.
    failed = [process.exitcode for process in processes if process.exitcode]
    for process in processes:
        if process.exitcode:
            logger.error(
                "%s exited with status %d; stopping the others", process.name, process.exitcode
            )
    # One ended (drained, or crashed): end the rest, so the whole group is restarted as one.
    drain_all()
    for process in processes:
        process.join()
    # Non-zero if any failed (a death by signal too), so the process manager sees it.
    return abs(failed[0]) if failed else max(abs(process.exitcode or 0) for process in processes)
