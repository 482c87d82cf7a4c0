"""Who is calling: the principal a credential stands for, its tenant and its scopes.

Every JobService and AdminService call is made by a Principal. The server's interceptor
finds it from the call's `authorization: Bearer <token>` metadata (server.auth) and the
servicers read it with `current_principal()`; every job read or written is the principal's
tenant's.
"""

from __future__ import annotations

import contextvars
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from jobcore.errors import FieldViolation, InvalidJobError, UnauthenticatedError


class Scope(enum.StrEnum):
    """What a credential may do."""

    # GetStatus, GetResult, WatchJob, ListJobs.
    JOBS_READ = "jobs.read"
    # SubmitJob and CancelJob; it includes JOBS_READ.
    JOBS_WRITE = "jobs.write"
    # AdminService: the API keys of every tenant.
    ADMIN = "admin"


ALL_SCOPES: Final = frozenset(Scope)
# The tenant of every job stored before tenants existed, and of make run's development key.
DEFAULT_TENANT: Final = "default"
# Tenants are names in URLs, logs and metrics: short, lower case, no spaces.
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TENANT_RULE = "must be 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"


@dataclass(frozen=True, slots=True)
class Principal:
    """The tenant a call acts for, what it may do, and who it is (recorded with its changes)."""

    tenant: str
    scopes: frozenset[Scope]
    # `key:<prefix>` for an API key, `jwt:<subject>` for a token, `anonymous` without either.
    actor: str

    def allows(self, needed: Scope) -> bool:
        """Whether this principal may call a method that needs `needed`."""
        return needed in self.scopes or (
            needed is Scope.JOBS_READ and Scope.JOBS_WRITE in self.scopes
        )


# AUTH_MODE=none: every call is this one caller, of the default tenant, with every scope.
ANONYMOUS: Final = Principal(DEFAULT_TENANT, ALL_SCOPES, "anonymous")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def set_current_principal(principal: Principal) -> None:
    """Record who makes the current call (the interceptor, once per call)."""
    _current.set(principal)


def current_principal() -> Principal:
    """Who makes the current call; a LookupError outside an authenticated call is a bug."""
    return _current.get()


def check_tenant(tenant: str, *, field: str = "tenant") -> str:
    """`tenant` if it is a valid tenant name; InvalidJobError naming `field` if not."""
    if _TENANT_NAME.fullmatch(tenant) is None:
        raise InvalidJobError([FieldViolation(field, _TENANT_RULE)])
    return tenant


def parse_scopes(names: Iterable[str], *, field: str = "scopes") -> frozenset[Scope]:
    """The scopes named (at least one); InvalidJobError naming `field` for an unknown one."""
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(scope.value for scope in Scope)
            raise InvalidJobError(
                [FieldViolation(field, f"unknown scope {name[:40]!r}; known scopes: {known}")]
            ) from None
    if not scopes:
        raise InvalidJobError([FieldViolation(field, "name at least one scope")])
    return frozenset(scopes)


# RFC 6750: `Bearer` (any case), one space or more, then the token's characters.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(?P<token>[A-Za-z0-9\-._~+/]+=*)")
# No credential this service accepts is longer; a longer header is refused unread.
MAX_TOKEN_CHARS: Final = 8192


def bearer_token(authorization: str | None) -> str:
    """The token of an `authorization: Bearer <token>` value; UnauthenticatedError otherwise."""
    if authorization is None or authorization == "":
        raise UnauthenticatedError("missing credentials: send `authorization: Bearer <token>`")
    if len(authorization) > MAX_TOKEN_CHARS:
        raise UnauthenticatedError("malformed credentials: the authorization value is too long")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise UnauthenticatedError(
            "malformed credentials: expected `authorization: Bearer <token>`"
        )
    return match["token"]
