"""Who may call what: every JobService and AdminService call is authenticated, authorized and
rate-limited here, before its handler runs (server.interceptor calls `CallGuard.admit`).

The server verifies every call itself, whichever way it came (its own port, or Envoy): a
credential is an API key the service issued (jobcore.keys.KeyRing, held in memory and
refreshed, so verifying costs no database round trip) or a JWT of the configured identity
provider (jobcore.jwt_tokens). AUTH_MODE=none makes every call the one anonymous caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Final, NoReturn, Protocol

import grpc

from jobcore.errors import PermissionDeniedError, TransientError, UnauthenticatedError
from jobcore.identity import ANONYMOUS, Principal, Scope, bearer_token, set_current_principal
from jobcore.keys.material import KEY_PREFIX

logger = logging.getLogger(__name__)

# A call's metadata, as grpc.aio hands it over: (key, value) pairs.
Metadata = Collection[tuple[str, str | bytes]]

# The scope each method needs. A method missing here is refused: a new RPC must be listed.
METHOD_SCOPES: Final[Mapping[str, Scope]] = {
    "/jobs.v1.JobService/SubmitJob": Scope.JOBS_WRITE,
    "/jobs.v1.JobService/BatchSubmitJobs": Scope.JOBS_WRITE,
    "/jobs.v1.JobService/CancelJob": Scope.JOBS_WRITE,
    "/jobs.v1.JobService/GetStatus": Scope.JOBS_READ,
    "/jobs.v1.JobService/GetResult": Scope.JOBS_READ,
    "/jobs.v1.JobService/WatchJob": Scope.JOBS_READ,
    "/jobs.v1.JobService/WatchJobs": Scope.JOBS_READ,
    "/jobs.v1.JobService/ListJobs": Scope.JOBS_READ,
    "/jobs.v1.AdminService/CreateApiKey": Scope.ADMIN,
    "/jobs.v1.AdminService/ListApiKeys": Scope.ADMIN,
    "/jobs.v1.AdminService/RevokeApiKey": Scope.ADMIN,
}
# How often the credentials of open streams are verified again (OpenStreams): well within the
# 5 s in which a revocation must take effect everywhere.
STREAM_RECHECK_SECONDS: Final = 1.0
# The supervised task that does it (and the name of its fault file).
STREAM_CREDENTIALS_TASK: Final = "stream-credentials"
# API keys start with KEY_PREFIX (jobcore.keys); anything else with two dots is taken for a JWT.
API_KEY_PREFIX: Final = KEY_PREFIX


class TokenVerifier(Protocol):
    """Turns one kind of bearer token into its principal, or raises UnauthenticatedError."""

    def verify(self, token: str) -> Principal:
        """The principal the token stands for (no I/O: called on every call)."""
        ...


class RateLimiter(Protocol):
    """Counts a principal's calls in a store every replica shares."""

    async def hit(self, principal: Principal) -> None:
        """Count one call; RateLimitedError (with when to retry) once over the rate."""
        ...


# The metadata of the context it was last read from, in the current task: grpc.aio converts all
# of a call's metadata into new objects on every `invocation_metadata()`, and a call is asked for
# its credential and then for its headers. Keyed by the context, so that a task that serves
# several contexts (a test calling handlers directly) never reads another's.
_read_metadata: contextvars.ContextVar[tuple[object, Metadata] | None] = contextvars.ContextVar(
    "read_metadata", default=None
)


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """A metadata value of the call (REST clients' headers arrive through Envoy as metadata)."""
    read = _read_metadata.get()
    if read is not None and read[0] is context:
        metadata = read[1]
    else:
        metadata = context.invocation_metadata() or ()
        _read_metadata.set((context, metadata))
    for name, value in metadata:
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def authorization_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The call's `authorization` metadata value, if any."""
    return metadata_value(context, "authorization")


class OpenStreams:
    """The streams open under each credential, ended once the credential stops working.

    A credential is checked when a call starts; a stream may then stay open for hours. Every
    STREAM_RECHECK_SECONDS the credentials of open streams are verified again (in memory, once
    per distinct credential), and the streams of one that is now revoked, expired or unknown
    are cancelled; the interceptor ends them UNAUTHENTICATED.
    """

    def __init__(self, authenticate: Callable[[str | None], Principal]) -> None:
        self._authenticate = authenticate
        self._by_credential: dict[str | None, set[asyncio.Task[Any]]] = {}
        self._refused: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    @contextlib.contextmanager
    def held(self, authorization: str | None) -> Iterator[None]:
        """Count the current task as a stream opened with `authorization` while the block runs."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._by_credential.setdefault(authorization, set()).add(task)
        try:
            yield
        finally:
            tasks = self._by_credential.get(authorization)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._by_credential[authorization]

    def refused(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether `task` was cancelled because its credential stopped working."""
        return task is not None and task in self._refused

    def check(self) -> int:
        """Cancel the streams whose credential no longer verifies; how many."""
        ended = 0
        for authorization, tasks in list(self._by_credential.items()):
            try:
                self._authenticate(authorization)
            except UnauthenticatedError:
                for task in list(tasks):
                    if task not in self._refused:
                        self._refused.add(task)
                        task.cancel()
                        ended += 1
            except TransientError:
                continue  # the keys are not loaded yet: nothing is known to be revoked
        return ended

    async def run(self) -> NoReturn:
        """Check every STREAM_RECHECK_SECONDS, forever (a supervised task of the server)."""
        while True:
            await asyncio.sleep(STREAM_RECHECK_SECONDS)
            ended = self.check()
            if ended:
                logger.info("ended %d streams whose credentials stopped working", ended)


class CallGuard:
    """Authenticates, authorizes and rate-limits one call, and records its principal."""

    def __init__(
        self,
        *,
        api_keys: TokenVerifier | None,
        jwts: TokenVerifier | None,
        rate_limiter: RateLimiter | None,
    ) -> None:
        """With neither verifier, no credential is needed (AUTH_MODE=none)."""
        self._api_keys = api_keys
        self._jwts = jwts
        self._rate_limiter = rate_limiter
        self._required = api_keys is not None or jwts is not None
        self.open_streams = OpenStreams(self.authenticate)

    @property
    def required(self) -> bool:
        """Whether calls need a credential."""
        return self._required

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `authorization` metadata value; UnauthenticatedError if none."""
        if not self._required:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token.startswith(API_KEY_PREFIX) and self._api_keys is not None:
            return self._api_keys.verify(token)
        if token.count(".") == 2 and self._jwts is not None:
            return self._jwts.verify(token)
        raise UnauthenticatedError("invalid credentials: not an API key or token of this service")

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of `method`, once it is known, allowed and within its rate."""
        principal = self.authenticate(authorization_of(context) if self._required else None)
        needed = METHOD_SCOPES.get(method)
        if needed is None:
            # Not listed: nobody may call it until someone decides who may.
            raise PermissionDeniedError("(a method without a declared scope)")
        if not principal.allows(needed):
            raise PermissionDeniedError(needed.value)
        if self._rate_limiter is not None:
            await self._rate_limiter.hit(principal)
        set_current_principal(principal)
        return principal
