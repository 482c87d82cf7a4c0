"""`python -m server`: run the gRPC server with settings from the environment.

With SERVER_PROCESSES above 1 this process runs that many server processes on the same
port (gRPC sets SO_REUSEPORT on Linux, so the kernel spreads connections over them): one
Python process uses one core, whatever the machine has.

That is all it owns: start N, pass SIGTERM/SIGINT on, and end them all together, with the
first failure's exit status, as soon as one ends; each also dies with it if it is killed
outright (jobcore.parent_death). It never restarts one: restarting belongs to the process
manager (Compose, Kubernetes, devstack for `make run` and the tests), which sees the server
fail as one process and starts it again whole.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
from multiprocessing.process import BaseProcess

from jobcore.logs import configure_logging
from jobcore.parent_death import run_dying_with_parent
from jobcore.settings import Settings, get_settings
from server.app import run_server_process

logger = logging.getLogger(__name__)


def _supervise(settings: Settings) -> int:
    """Run SERVER_PROCESSES servers; pass SIGTERM/SIGINT on; stop all when one stops."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = [
        context.Process(
            # Killed with this process (by SIGTERM, so it drains): none is left holding the port.
            target=run_dying_with_parent,
            args=(signal.SIGTERM, run_server_process, index),
            name=f"server-{index}",
        )
        for index in range(settings.server_processes)
    ]
    for process in processes:
        process.start()

    def drain_all(*_: object) -> None:
        for process in processes:
            if process.exitcode is None:
                process.terminate()  # SIGTERM: each drains as a lone server would

    signal.signal(signal.SIGTERM, drain_all)
    signal.signal(signal.SIGINT, drain_all)
    multiprocessing.connection.wait([process.sentinel for process in processes])
    # The status of the first to fail is the server's, not that of the others stopped after it.
    failed = [process.exitcode for process in processes if process.exitcode]
    for process in processes:
        if process.exitcode:
            logger.error(
                "%s exited with status %d; stopping the others", process.name, process.exitcode
            )
    # One ended (drained, or crashed): end the rest, so the whole server is restarted as one.
    drain_all()
    for process in processes:
        process.join()
    # Non-zero if any failed (a death by signal too), so the process manager sees it.
    return abs(failed[0]) if failed else max(abs(process.exitcode or 0) for process in processes)


def main() -> None:
    """Entry point for containers and `make run`."""
    settings = get_settings()
    if settings.server_processes == 1:
        run_server_process(0)
        return
    configure_logging(settings.log_level)
    sys.exit(_supervise(settings))


if __name__ == "__main__":
    main()
