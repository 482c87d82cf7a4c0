"""One worker process: the Celery worker on the jobs queue, as `python -m worker` runs it (alone,
or as one of the WORKER_PROCESSES of a group).

Its own module, not worker/__main__: a spawned process of the group finds its target here by
name (multiprocessing does not re-import a `__main__` module).
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def run_worker_process(index: int, *, argv: Sequence[str]) -> None:
    """Run the index-th worker process of the group until SIGTERM (warm shutdown: running jobs
    finish first). Process 0 is the Celery node `celery@<host>`, process N `celeryN@<host>`,
    serving its metrics on METRICS_PORT + N; `argv` goes to Celery's worker command."""
    if index:
        port = int(os.environ.get("METRICS_PORT") or 0)
        if port:
            os.environ["METRICS_PORT"] = str(port + index)
        argv = [*argv, f"--hostname=celery{index}@%h"]
    # Imported here, after the environment is final: the app reads its settings on import.
    from jobcore.celery_app import JOBS_QUEUE  # noqa: PLC0415
    from worker.app import app, settings  # noqa: PLC0415

    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={JOBS_QUEUE}",
            "--without-mingle",
            "--without-gossip",
            *argv,
        ]
    )
