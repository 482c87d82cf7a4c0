"""`python -m server`: run the gRPC server with settings from the environment."""

from __future__ import annotations

import asyncio

from jobcore.logs import configure_logging
from jobcore.settings import get_settings
from jobcore.tracing import configure_tracing
from server.app import serve


def main() -> None:
    """Entry point for containers and `make run`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    configure_tracing("jobs-server")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
