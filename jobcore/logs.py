"""Logging set-up shared by every process."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """One readable line per record, with the process role in the logger name."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
