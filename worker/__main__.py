"""`python -m worker`: start a Celery worker on the jobs queue with the configured concurrency."""

from __future__ import annotations

import sys

from jobcore.celery_app import JOBS_QUEUE
from worker.app import app, settings


def main() -> None:
    """Run the worker until SIGTERM (warm shutdown: running jobs finish first)."""
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={JOBS_QUEUE}",
            "--without-mingle",
            "--without-gossip",
            # Anything else (for example --hostname) is passed through to Celery.
            *sys.argv[1:],
        ]
    )


if __name__ == "__main__":
    main()
