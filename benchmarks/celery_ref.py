"""References R2 and R3: a bare Celery app as the seed used it (default prefork pool).

R2 round-trips a no-op task; R3 runs the seed's processing model, a task that blocks
its prefork process for the simulated delay. The worker is started with
`celery -A benchmarks.celery_ref worker` and BENCH_CELERY_URL naming a Redis database.
"""

from __future__ import annotations

import os
import time

from celery import Celery

NOOP_TASK = "bench.noop"
SLEEP_TASK = "bench.sleep"
URL_VARIABLE = "BENCH_CELERY_URL"


def create_app(url: str) -> Celery:
    """A Celery app with every default except the broker and result backend (one Redis database)."""
    return Celery("bench", broker=url, backend=url)


app = create_app(os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379/15"))


@app.task(name=NOOP_TASK)  # type: ignore[untyped-decorator]
def noop() -> None:
    """Do nothing: what is left is Celery's own cost of a round trip."""


@app.task(name=SLEEP_TASK)  # type: ignore[untyped-decorator]
def sleep(seconds: float) -> None:
    """Hold the prefork process for the simulated delay, as the seed's task did."""
    time.sleep(seconds)
