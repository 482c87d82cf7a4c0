"""JWT verification without I/O: keys and tokens minted here, the JWKS read from memory.

A token is accepted only when one of the JWKS's RS256/ES256 keys signed it for our issuer and
audience within its validity; every refusal is an UnauthenticatedError that says why and never
quotes the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from jobcore.errors import UnauthenticatedError
from jobcore.identity import Scope
from jobcore.jwt_tokens import JwksSource, JwtVerifier, parse_jwks
from tests.eventually import eventually
from tests.jwt_keys import SigningKey, TokenMinter, unsigned_token

LEEWAY_SECONDS = 10.0


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    """One identity provider for the tests that do not change its keys."""
    return TokenMinter(tenant_claim="org")


def _source(
    read: Callable[[], bytes],
    *,
    refresh_interval: timedelta = timedelta(hours=1),
    early_refresh_min_interval: timedelta = timedelta(seconds=5),
) -> JwksSource:
    return JwksSource(
        read,
        where="the test JWKS",
        setting="AUTH_JWKS_FILE",
        refresh_interval=refresh_interval,
        early_refresh_min_interval=early_refresh_min_interval,
    )


@pytest.fixture
async def verifier(minter: TokenMinter) -> JwtVerifier:
    source = _source(minter.jwks_json)
    await source.load()
    return minter.verifier(source, leeway_seconds=LEEWAY_SECONDS)


def _refused(verifier: JwtVerifier, token: str, reason: str) -> None:
    """`token` is refused for `reason`, and the message quotes no part of it."""
    with pytest.raises(UnauthenticatedError, match=reason) as refused:
        verifier.verify(token)
    message = str(refused.value)
    assert all(part not in message for part in token.split(".") if len(part) > 3)


async def test_an_rs256_token_is_its_tenant_scopes_and_subject(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    token = minter.token(tenant="acme", scopes=["jobs.read", "admin"], subject="alice@acme")

    principal = verifier.verify(token)

    assert principal.tenant == "acme"
    assert principal.scopes == {Scope.JOBS_READ, Scope.ADMIN}
    assert principal.actor == "jwt:alice@acme"


async def test_an_es256_token_with_scp_as_a_list_or_a_string(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    as_list = minter.token(algorithm="ES256", scopes=["jobs.write"], scope_claim="scp")
    as_string = minter.token(
        algorithm="ES256", scopes=[], extra_claims={"scp": "jobs.read other.thing"}
    )

    assert verifier.verify(as_list).scopes == {Scope.JOBS_WRITE}
    assert verifier.verify(as_string).scopes == {Scope.JOBS_READ}


async def test_scopes_of_other_services_are_ignored(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    ours_and_theirs = minter.token(scopes=["openid", "profile", "jobs.read", "JOBS.WRITE"])
    theirs_only = minter.token(scopes=["openid", "email"])

    assert verifier.verify(ours_and_theirs).scopes == {Scope.JOBS_READ}
    # Known but with no scope of ours: the guard answers PERMISSION_DENIED.
    assert verifier.verify(theirs_only).scopes == frozenset()


async def test_a_scope_claim_of_another_type_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    token = minter.token(scopes=[], extra_claims={"scope": {"jobs.read": True}})

    _refused(verifier, token, "`scope` must be a string or a list of strings")


async def test_the_audience_may_be_one_of_several(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    token = minter.token(audience=["another-api", minter.audience])

    assert verifier.verify(token).tenant == "default"


async def test_the_actor_is_cut_to_200_characters(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    principal = verifier.verify(minter.token(subject="s" * 1000))

    assert principal.actor == "jwt:" + "s" * 196


async def test_expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    _refused(verifier, minter.token(expires_in=timedelta(minutes=-1)), "expired")
    _refused(verifier, minter.token(not_before=timedelta(minutes=1)), "not yet valid")
    # A clock a few seconds apart from the provider's is tolerated.
    assert verifier.verify(minter.token(expires_in=timedelta(seconds=-3)))
    assert verifier.verify(minter.token(not_before=timedelta(seconds=3)))


async def test_an_iat_in_the_future_is_refused(minter: TokenMinter, verifier: JwtVerifier) -> None:
    claims = minter.claims()
    claims["iat"] += 600

    _refused(verifier, minter.key().sign(claims), "not yet valid")


async def test_another_audience_or_issuer_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    _refused(verifier, minter.token(audience="another-api"), "wrong audience")
    _refused(verifier, minter.token(issuer="https://evil.example"), "wrong issuer")


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
async def test_a_token_without_a_required_claim_is_refused(
    minter: TokenMinter, verifier: JwtVerifier, claim: str
) -> None:
    claims = minter.claims()
    del claims[claim]

    _refused(verifier, minter.key().sign(claims), f"no `{claim}` claim")


async def test_a_token_without_a_valid_tenant_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    _refused(verifier, minter.token(tenant=None), "no tenant")
    _refused(verifier, minter.token(extra_claims={"org": ["acme"]}), "no tenant")
    _refused(verifier, minter.token(tenant="Acme Corp"), "not a valid tenant name")
    _refused(verifier, minter.token(tenant=""), "not a valid tenant name")


async def test_a_tampered_payload_fails_the_signature(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    header, _, signature = minter.token(tenant="acme").split(".")
    forged_claims = unsigned_token({}, minter.claims(tenant="globex"), b"").split(".")[1]

    _refused(verifier, f"{header}.{forged_claims}.{signature}", "bad signature")


async def test_a_token_signed_by_another_key_with_a_known_kid_fails_the_signature(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    impostor = SigningKey.generate("RS256", kid=minter.key("RS256").kid)

    _refused(verifier, impostor.sign(minter.claims()), "bad signature")


async def test_hs256_signed_with_the_public_key_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    # Algorithm confusion: a verifier that let the header pick HMAC would check this with the
    # RSA key's public bytes as the secret, and accept it.
    key = minter.key("RS256")
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    claims = minter.claims(tenant="acme")
    signing_input = ".".join(unsigned_token(header, claims, b"").split(".")[:2])
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()

    _refused(verifier, unsigned_token(header, claims, mac), "algorithm not allowed")


@pytest.mark.parametrize("algorithm", ["none", "None", "NONE", "", "RS384", "PS256", "EdDSA"])
async def test_other_algorithms_are_refused(
    minter: TokenMinter, verifier: JwtVerifier, algorithm: str
) -> None:
    header = {"alg": algorithm, "kid": minter.key("RS256").kid}

    _refused(verifier, unsigned_token(header, minter.claims(), b""), "algorithm not allowed")


async def test_a_header_algorithm_unlike_its_keys_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    # ES256 in the header, the RSA key's kid: the key decides, and they disagree.
    rsa_key = minter.key("RS256")
    _, claims, signature = rsa_key.sign(minter.claims()).split(".")
    header = unsigned_token({"alg": "ES256", "kid": rsa_key.kid}, {}, b"").split(".")[0]
    forged = f"{header}.{claims}.{signature}"
    # Signed with the EC key but naming the RSA key.
    signed_by_ec = minter.key("ES256").sign(minter.claims(), headers={"kid": rsa_key.kid})

    _refused(verifier, forged, "its algorithm is not its key's")
    _refused(verifier, signed_by_ec, "its algorithm is not its key's")


async def test_a_token_of_an_unknown_key_is_refused(
    minter: TokenMinter, verifier: JwtVerifier
) -> None:
    stranger = SigningKey.generate("ES256")

    _refused(verifier, stranger.sign(minter.claims()), "unknown signing key")
    _refused(verifier, stranger.sign(minter.claims(), headers={"kid": None}), "unknown")


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "...",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        unsigned_token({"alg": ["RS256"]}, {}, b"x"),
        unsigned_token({"alg": {"RS256": 1}}, {}, b"x"),
        unsigned_token({"alg": "RS256", "kid": 7}, {}, b"x"),
        unsigned_token({"alg": "RS256", "crit": ["exp"]}, {}, b"x"),
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        "W10.e30.c2ln",  # the header is a JSON list
    ],
)
async def test_malformed_tokens_are_refused_as_unauthenticated(
    verifier: JwtVerifier, token: str
) -> None:
    with pytest.raises(UnauthenticatedError, match=r"malformed|not allowed|unknown"):
        verifier.verify(token)


async def test_a_token_without_kid_matches_a_jwks_of_one_key() -> None:
    single = TokenMinter()
    single.keys = [single.key("ES256")]
    source = _source(single.jwks_json)
    await source.load()
    token = single.key("ES256").sign(single.claims(), headers={"kid": None})

    assert (
        single.verifier(source, leeway_seconds=LEEWAY_SECONDS).verify(token).actor
        == "jwt:test-user"
    )


def _jwk(key: Any, **extra: Any) -> dict[str, Any]:
    algorithm = (
        RSAAlgorithm if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) else ECAlgorithm
    )
    jwk = algorithm.to_jwk(key, as_dict=True)
    assert isinstance(jwk, dict)
    return {**jwk, **extra}


def test_the_jwks_keeps_only_public_rs256_and_es256_signature_keys() -> None:
    good_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good_ec = ec.generate_private_key(ec.SECP256R1())
    document = {
        "keys": [
            _jwk(good_rsa.public_key(), kid="rsa"),
            _jwk(good_ec.public_key(), kid="ec"),
            _jwk(good_ec.public_key(), kid="rsa"),  # a second key of a kid already seen
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "hmac"},
            _jwk(good_rsa.public_key(), kid="encryption", use="enc"),
            _jwk(good_rsa.public_key(), kid="pss", alg="PS256"),
            _jwk(
                rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
                kid="short",
            ),
            _jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), kid="p384"),
            _jwk(good_ec, kid="private"),  # a private key published by mistake
            {"kty": "RSA", "kid": "broken"},
            "not a key",
        ]
    }

    keys = parse_jwks(json.dumps(document).encode())

    assert sorted(keys.by_kid) == ["ec", "rsa"]
    assert keys.by_kid["rsa"].algorithm_name == "RS256"
    assert keys.by_kid["ec"].algorithm_name == "ES256"
    assert keys.skipped == 9


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "`keys` list"),
        (b'{"keys": {}}', "`keys` list"),
        (b'{"keys": []}', "no key"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no RS256 or ES256"),
    ],
)
def test_a_jwks_without_a_usable_key_is_refused(document: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_jwks(document)


async def test_the_first_load_must_succeed() -> None:
    def unreachable() -> bytes:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(RuntimeError, match=r"the test JWKS: Connection refused.*AUTH_JWKS_FILE"):
        await _source(unreachable).load()
    with pytest.raises(RuntimeError, match="no RS256 or ES256"):
        await _source(lambda: b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}').load()


async def test_a_failed_refresh_keeps_the_keys() -> None:
    rotating = TokenMinter()
    served = [rotating.jwks_json()]
    source = _source(lambda: served[-1])
    await source.load()
    verifier = rotating.verifier(source, leeway_seconds=LEEWAY_SECONDS)
    served.append(b"<html>oops</html>")

    with pytest.raises(Exception, match="the keys loaded before stay in use"):
        await source.refresh()
    assert verifier.verify(rotating.token()).tenant == "default"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_unknown_kid_asks_for_one_early_refresh_at_most_every_few_seconds() -> None:
    rotating = TokenMinter()
    clock = _Clock()
    source = JwksSource(
        rotating.jwks_json,
        where="the test JWKS",
        setting="AUTH_JWKS_FILE",
        early_refresh_min_interval=timedelta(seconds=5),
        clock=clock,
    )
    await source.load()
    verifier = rotating.verifier(source, leeway_seconds=LEEWAY_SECONDS)
    stranger = SigningKey.generate("RS256").sign(rotating.claims())

    clock.now += 4
    _refused(verifier, stranger, "unknown signing key")
    assert not source.refresh_requested
    clock.now += 1
    _refused(verifier, stranger, "unknown signing key")
    assert source.refresh_requested


async def test_run_fetches_a_rotated_key_early_when_a_token_names_it() -> None:
    rotating = TokenMinter()
    fetches: list[int] = []

    def read() -> bytes:
        fetches.append(1)
        return rotating.jwks_json()

    source = _source(
        read,
        refresh_interval=timedelta(hours=1),
        early_refresh_min_interval=timedelta(seconds=0),
    )
    await source.load()
    verifier = rotating.verifier(source, leeway_seconds=LEEWAY_SECONDS)
    refresher = asyncio.create_task(source.run())
    try:
        new_key = rotating.rotate("ES256")
        token = rotating.token(algorithm="ES256")
        assert rotating.key("ES256") is new_key
        _refused(verifier, token, "unknown signing key")

        async def tenant() -> str | None:
            try:
                return verifier.verify(token).tenant
            except UnauthenticatedError:
                return None

        assert await eventually(tenant, until=lambda found: found == "default") == "default"
        assert len(fetches) >= 2
    finally:
        refresher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await refresher


def test_a_verifier_needs_an_issuer_and_an_audience(minter: TokenMinter) -> None:
    source = _source(minter.jwks_json)
    with pytest.raises(ValueError, match="issuer"):
        JwtVerifier(source, issuer="", audience="a", tenant_claim="t", leeway_seconds=0)
    with pytest.raises(ValueError, match="audience"):
        JwtVerifier(source, issuer="i", audience="", tenant_claim="t", leeway_seconds=0)
