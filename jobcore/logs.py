"""Logging for every process: JSON lines when not on a terminal, and the job id on each record."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The job the current task works on; set by the server per call and by the worker per job.
current_job_id: ContextVar[str | None] = ContextVar("current_job_id", default=None)

_HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _JobIdFilter(logging.Filter):
    """Stamps each record with the job id of the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    """Readable lines on a terminal, JSON lines otherwise; both carry the job id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobIdFilter())
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter(_HUMAN_FORMAT))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
