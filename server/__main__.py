"""`python -m server`: run the gRPC server with settings from the environment.

With SERVER_PROCESSES above 1 this process runs that many server processes on the same
port (gRPC sets SO_REUSEPORT on Linux, so the kernel spreads connections over them), as one
group (jobcore.process_group): a failure of one ends them all.
"""

from __future__ import annotations

import sys

from jobcore.logs import configure_logging
from jobcore.process_group import run_process_group
from jobcore.settings import get_settings
from server.app import run_server_process


def main() -> None:
    """Entry point for containers and `make run`."""
    settings = get_settings()
    if settings.server_processes == 1:
        run_server_process(0)
        return
    configure_logging(settings.log_level)
    sys.exit(run_process_group(run_server_process, count=settings.server_processes, name="server"))


if __name__ == "__main__":
    main()
