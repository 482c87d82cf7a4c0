"""Principals, scopes, tenant names and the `authorization: Bearer` value, and the guard that
turns a call's metadata into its principal (server.auth), without any I/O."""

from __future__ import annotations

import pytest

from jobcore.errors import InvalidJobError, PermissionDeniedError, UnauthenticatedError
from jobcore.identity import (
    ALL_SCOPES,
    ANONYMOUS,
    MAX_TOKEN_CHARS,
    Principal,
    Scope,
    bearer_token,
    check_tenant,
    parse_scopes,
)
from server.auth import METHOD_SCOPES, CallGuard


class _Verifier:
    """Accepts exactly one token; what a key ring or JWT verifier does, in memory."""

    def __init__(self, token: str, principal: Principal) -> None:
        self.token = token
        self.principal = principal

    def verify(self, token: str) -> Principal:
        if token != self.token:
            raise UnauthenticatedError("invalid credentials: unknown")
        return self.principal


READER = Principal("acme", frozenset({Scope.JOBS_READ}), "key:jobs_0000read")
WRITER = Principal("acme", frozenset({Scope.JOBS_WRITE}), "key:jobs_000write")


def test_write_includes_read_but_nothing_includes_admin() -> None:
    assert WRITER.allows(Scope.JOBS_READ)
    assert WRITER.allows(Scope.JOBS_WRITE)
    assert not READER.allows(Scope.JOBS_WRITE)
    assert not WRITER.allows(Scope.ADMIN)
    assert ANONYMOUS.scopes == ALL_SCOPES


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc.def-_~+/=", "abc.def-_~+/="),
        ("bearer  jobs_0123abcd_secret", "jobs_0123abcd_secret"),
        ("  BEARER x  ", "x"),
    ],
)
def test_a_bearer_value_gives_its_token(value: str, token: str) -> None:
    assert bearer_token(value) == token


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer two tokens", "malformed"),
        ("Bearer tok\u00e9n", "malformed"),
        ("Bearer " + "a" * MAX_TOKEN_CHARS, "too long"),
    ],
)
def test_anything_else_is_unauthenticated_saying_why(value: str | None, reason: str) -> None:
    with pytest.raises(UnauthenticatedError, match=reason):
        bearer_token(value)


def test_a_refused_credential_is_never_echoed() -> None:
    with pytest.raises(UnauthenticatedError) as raised:
        bearer_token("Bearer s3cr3t-value with-a-space")

    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize("tenant", ["acme", "a", "team-7_prod", "x" * 64])
def test_tenant_names(tenant: str) -> None:
    assert check_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "a b", "x" * 65, "ac/me", "ácme"])
def test_bad_tenant_names_name_the_field(tenant: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        check_tenant(tenant, field="tenant")
    [violation] = raised.value.violations
    assert violation.field == "tenant"


def test_scopes_are_parsed_and_unknown_ones_refused() -> None:
    assert parse_scopes(["jobs.read", "admin", "jobs.read"]) == {Scope.JOBS_READ, Scope.ADMIN}
    for bad in ([], ["jobs.delete"], ["JOBS.READ"]):
        with pytest.raises(InvalidJobError) as raised:
            parse_scopes(bad)
        assert raised.value.violations[0].field == "scopes"


def test_every_method_of_both_services_has_a_scope() -> None:
    from jobs.v1 import jobs_service_pb2 as pb  # noqa: PLC0415 - generated at build time

    declared = {
        f"/{service.full_name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert declared == set(METHOD_SCOPES)


def test_the_guard_routes_keys_and_tokens_to_their_verifier() -> None:
    keys = _Verifier("jobs_0000read_s3cret", READER)
    jwts = _Verifier("header.claims.signature", WRITER)
    guard = CallGuard(api_keys=keys, jwts=jwts, rate_limiter=None)

    assert guard.authenticate("Bearer jobs_0000read_s3cret") is READER
    assert guard.authenticate("Bearer header.claims.signature") is WRITER
    for unknown in ("Bearer jobs_0000read_wrong", "Bearer a.b.c", "Bearer opaque-token"):
        with pytest.raises(UnauthenticatedError):
            guard.authenticate(unknown)


def test_without_verifiers_every_caller_is_the_anonymous_one() -> None:
    guard = CallGuard(api_keys=None, jwts=None, rate_limiter=None)

    assert not guard.required
    assert guard.authenticate(None) is ANONYMOUS
    assert guard.authenticate("Bearer anything") is ANONYMOUS


def test_missing_scope_is_permission_denied_naming_it() -> None:
    error = PermissionDeniedError(Scope.JOBS_WRITE.value)

    assert error.scope == "jobs.write"
    assert "jobs.write" in str(error)
