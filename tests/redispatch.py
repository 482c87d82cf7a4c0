"""How soon a stored job must start: far sooner than the redispatch sweep could resend it."""

from __future__ import annotations

from datetime import timedelta

from devstack.stack import Stack
from jobcore.settings import Settings

# Far below the sweep's age, so a job that starts within it was started by its submit's wake-up.
START_WITHIN = timedelta(seconds=10)


def redispatch_after(stack: Stack) -> timedelta:
    """The age at which the stack's sweep re-sends a PENDING job's wake-up."""
    configured = stack.config.env.get("REDISPATCH_AFTER_SECONDS")
    default = Settings.model_fields["redispatch_after_seconds"].default
    return timedelta(seconds=float(configured) if configured else default)
