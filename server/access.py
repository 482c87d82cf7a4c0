"""The server's access control, assembled from the settings: the call guard every JobService
and AdminService call passes (server.auth), and the AdminService that manages API keys.

AUTH_MODE=none: no credentials, one anonymous tenant, no AdminService. Otherwise API keys
(held in memory by a KeyRing refreshed under the server's supervisor), JWTs when a JWKS is
configured, and the per-credential rate limit when RATE_LIMIT_PER_CREDENTIAL is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.errors import TransientError
from jobcore.jwt_tokens import jwt_verifier
from jobcore.keys.ring import API_KEYS_TASK, KeyRing
from jobcore.keys.store import KeyStore
from jobcore.rate_limits import RedisRateLimiter, rate_limiter
from jobcore.settings import Settings
from jobcore.store import JobStore
from jobcore.supervision import Supervisor
from server.admin import AdminServicer
from server.auth import STREAM_CREDENTIALS_TASK, CallGuard

logger = logging.getLogger(__name__)


@dataclass
class Access:
    """The guard of every call, and what it holds open."""

    guard: CallGuard
    # AdminService's servicer; None when no credentials are used.
    admin: pb_grpc.AdminServiceServicer | None
    rate_limiter: RedisRateLimiter | None

    @classmethod
    async def start(cls, settings: Settings, *, store: JobStore, supervisor: Supervisor) -> Access:
        """Load the API keys and the JWKS (then keep them fresh under `supervisor`)."""
        if settings.auth_mode == "none":
            logger.warning(
                "AUTH_MODE=none: no credentials are checked; every caller is the tenant 'default'"
            )
            return cls(
                guard=CallGuard(api_keys=None, jwts=None, rate_limiter=None),
                admin=None,
                rate_limiter=None,
            )
        keys = KeyStore(store.database)
        ring = KeyRing(keys)
        try:
            await ring.refresh()
        except TransientError as error:
            # The server starts all the same (as it does without PostgreSQL): until the keys
            # are read, a key is answered UNAVAILABLE, never UNAUTHENTICATED.
            logger.warning("API keys not loaded yet (%s); retrying in the background", error)
        else:
            logger.info("API keys loaded: %d", ring.size)
        supervisor.start(
            API_KEYS_TASK, ring.run(timedelta(seconds=settings.api_key_refresh_seconds))
        )
        limiter = rate_limiter(settings)
        guard = CallGuard(
            api_keys=ring,
            jwts=await jwt_verifier(settings, supervisor=supervisor),
            rate_limiter=limiter,
        )
        supervisor.start(STREAM_CREDENTIALS_TASK, guard.open_streams.run())
        return cls(
            guard=guard,
            admin=AdminServicer(keys=keys, ring=ring),
            rate_limiter=limiter,
        )

    async def close(self) -> None:
        """Close the rate limiter's connections."""
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
