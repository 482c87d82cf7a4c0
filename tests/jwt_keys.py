"""A throwaway identity provider for tests: signing keys, their JWKS, and the JWTs they sign.

`TokenMinter` holds keys in memory (unit tests); `JwtIssuer.create(directory)` also publishes
its JWKS as a file, so a stack started with `issuer.environment()` accepts its tokens:

    issuer = JwtIssuer.create(tmp_path)
    env = {**env, **issuer.environment()}          # AUTH_JWKS_FILE, AUTH_JWT_ISSUER, ...
    token = issuer.token(tenant="acme", scopes=["jobs.read"])
    metadata = [("authorization", f"Bearer {token}")]

`token()` mints valid tokens unless told otherwise: `expires_in=timedelta(minutes=-5)` (expired),
`not_before=timedelta(minutes=5)` (not yet valid), `audience="other"`, `issuer="..."`,
`tenant=None` (no tenant claim). `rotate()` publishes a new key and `retire()` withdraws one.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from jobcore.jwt_tokens import JwksSource, JwtVerifier

Algorithm = Literal["RS256", "ES256"]

DEFAULT_ISSUER = "https://idp.jobs.test"
DEFAULT_AUDIENCE = "jobs-api"
DEFAULT_SUBJECT = "test-user"
DEFAULT_TENANT_CLAIM = "tenant"
DEFAULT_SCOPES = ("jobs.read", "jobs.write")


@dataclass(frozen=True)
class SigningKey:
    """One private signing key and what a JWKS publishes of it."""

    kid: str
    algorithm: Algorithm
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, algorithm: Algorithm, *, kid: str | None = None) -> SigningKey:
        """A new RSA 2048 (RS256) or P-256 (ES256) key."""
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm == "RS256":
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            kid=kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}",
            algorithm=algorithm,
            private_key=private_key,
        )

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with its `kid`, `use` and `alg`."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        assert isinstance(jwk, dict)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        """The public key, PEM (what an algorithm-confusion attack uses as an HMAC secret)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any], *, headers: Mapping[str, Any] | None = None) -> str:
        """`claims` signed with this key, its `kid` in the header; `headers` add to the header or
        replace its fields (a None value leaves that field out: `{"kid": None}`)."""
        merged = {"kid": self.kid, **(headers or {})}
        return jwt.encode(
            dict(claims),
            self.private_key,
            algorithm=self.algorithm,
            headers={name: value for name, value in merged.items() if value is not None},
        )


def unsigned_token(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes) -> str:
    """A compact JWT with any header and signature bytes: for forged tokens (`alg: none`, HS256)."""

    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{segment(json.dumps(header).encode())}.{segment(json.dumps(claims).encode())}"
    return f"{signing_input}.{segment(signature)}"


class TokenMinter:
    """An identity provider in memory: keys (one RS256, one ES256 at first), a JWKS, tokens."""

    def __init__(
        self,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        tenant_claim: str = DEFAULT_TENANT_CLAIM,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        # Published in the JWKS, oldest first.
        self.keys: list[SigningKey] = [SigningKey.generate("RS256"), SigningKey.generate("ES256")]

    def key(self, algorithm: Algorithm = "RS256") -> SigningKey:
        """The newest published key of `algorithm`."""
        return next(key for key in reversed(self.keys) if key.algorithm == algorithm)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document of the published keys."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    def jwks_json(self) -> bytes:
        """The JWKS document, as served."""
        return json.dumps(self.jwks()).encode()

    def rotate(self, algorithm: Algorithm = "RS256") -> SigningKey:
        """Publish a new key of `algorithm` (tokens then default to it); return it."""
        key = SigningKey.generate(algorithm)
        self.keys.append(key)
        self._published()
        return key

    def retire(self, key: SigningKey) -> None:
        """Withdraw `key` from the JWKS: tokens it signed then name an unknown key."""
        self.keys.remove(key)
        self._published()

    def _published(self) -> None:
        """Hook: the JWKS changed."""

    def verifier(self, keys: JwksSource, *, leeway_seconds: float) -> JwtVerifier:
        """A verifier that takes this minter's tokens (its issuer, audience and tenant claim)."""
        return JwtVerifier(
            keys,
            issuer=self.issuer,
            audience=self.audience,
            tenant_claim=self.tenant_claim,
            leeway_seconds=leeway_seconds,
        )

    def claims(
        self,
        *,
        tenant: str | None = "default",
        scopes: Iterable[str] = DEFAULT_SCOPES,
        scope_claim: Literal["scope", "scp"] = "scope",
        expires_in: timedelta = timedelta(minutes=5),
        not_before: timedelta | None = None,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        subject: str = DEFAULT_SUBJECT,
    ) -> dict[str, Any]:
        """A token's claims; times are relative to now, audience and issuer default to ours.

        `scope_claim="scope"` writes a space-separated string, `"scp"` a list. `tenant=None`
        leaves the tenant claim out.
        """
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": issuer if issuer is not None else self.issuer,
            "aud": audience if audience is not None else self.audience,
            "sub": subject,
            "iat": int(now.timestamp()),
            "exp": int((now + expires_in).timestamp()),
        }
        if not_before is not None:
            claims["nbf"] = int((now + not_before).timestamp())
        if tenant is not None:
            claims[self.tenant_claim] = tenant
        names = list(scopes)
        claims[scope_claim] = " ".join(names) if scope_claim == "scope" else names
        return claims

    def token(
        self,
        *,
        tenant: str | None = "default",
        scopes: Iterable[str] = DEFAULT_SCOPES,
        scope_claim: Literal["scope", "scp"] = "scope",
        expires_in: timedelta = timedelta(minutes=5),
        not_before: timedelta | None = None,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        subject: str = DEFAULT_SUBJECT,
        algorithm: Algorithm = "RS256",
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT signed by the newest key of `algorithm`: valid unless an argument says otherwise."""
        claims = self.claims(
            tenant=tenant,
            scopes=scopes,
            scope_claim=scope_claim,
            expires_in=expires_in,
            not_before=not_before,
            audience=audience,
            issuer=issuer,
            subject=subject,
        )
        return self.key(algorithm).sign({**claims, **(extra_claims or {})})


class JwtIssuer(TokenMinter):
    """A TokenMinter whose JWKS is published as a file, for a server started with AUTH_JWKS_FILE."""

    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        tenant_claim: str = DEFAULT_TENANT_CLAIM,
    ) -> None:
        super().__init__(issuer=issuer, audience=audience, tenant_claim=tenant_claim)
        self.jwks_file = jwks_file

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        tenant_claim: str = DEFAULT_TENANT_CLAIM,
    ) -> JwtIssuer:
        """A new issuer with an RS256 and an ES256 key, its JWKS written to `directory`/jwks.json."""
        directory.mkdir(parents=True, exist_ok=True)
        created = cls(
            directory / "jwks.json", issuer=issuer, audience=audience, tenant_claim=tenant_claim
        )
        created._published()
        return created

    def environment(self) -> dict[str, str]:
        """The variables that make a server accept this issuer's tokens."""
        return {
            "AUTH_JWKS_FILE": str(self.jwks_file),
            "AUTH_JWT_ISSUER": self.issuer,
            "AUTH_JWT_AUDIENCE": self.audience,
            "AUTH_JWT_TENANT_CLAIM": self.tenant_claim,
        }

    def _published(self) -> None:
        # Replaced whole, so a server re-reading it never sees half a file.
        partial = self.jwks_file.with_name(f".{self.jwks_file.name}.partial")
        partial.write_bytes(self.jwks_json())
        os.replace(partial, self.jwks_file)
