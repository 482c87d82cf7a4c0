"""`python -m worker`: Celery workers on the jobs queue, WORKER_PROCESSES of them (one per CPU
unless set), each keeping its WORKER_CONCURRENCY jobs in flight.

Above one process they run as one group (jobcore.process_group): a failure of one ends them
all. Process 0 is the Celery node `celery@<host>`, process N `celeryN@<host>`, serving its
metrics on METRICS_PORT + N. Arguments (for example --hostname) go to every process's Celery
worker.
"""

from __future__ import annotations

import functools
import sys

from jobcore.logs import configure_logging
from jobcore.process_group import run_process_group
from jobcore.settings import get_settings
from worker.process import run_worker_process


def main() -> None:
    """Entry point for containers and `make run`."""
    settings = get_settings()
    run = functools.partial(run_worker_process, argv=tuple(sys.argv[1:]))
    if settings.worker_process_count == 1:
        run(0)
        return
    configure_logging(settings.log_level)
    sys.exit(run_process_group(run, count=settings.worker_process_count, name="worker"))


if __name__ == "__main__":
    main()
