"""JWTs of an OpenID Connect identity provider, verified in memory against its JWKS.

A token is accepted only when a key of the JWKS (AUTH_JWKS_URL or AUTH_JWKS_FILE) signed it
with RS256 or ES256 (the algorithm is the key's: the token's header may only agree with it),
for the issuer AUTH_JWT_ISSUER and the audience AUTH_JWT_AUDIENCE, and the clock is within
its `nbf`..`exp` (with AUTH_JWT_LEEWAY_SECONDS of skew). Its tenant is the claim named
AUTH_JWT_TENANT_CLAIM; its scopes are those of ours named in `scope` or `scp`. PyJWT does the
cryptography.

The keys are loaded once before the server serves (a server that cannot verify tokens does not
start) and then refreshed by a supervised task: periodically, and early (rate-limited) when a
token names a key not yet known, as after the provider rotated its keys. Verification itself
never waits on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, NoReturn

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jobcore.errors import InvalidJobError, TransientError, UnauthenticatedError
from jobcore.identity import Principal, Scope, check_tenant
from jobcore.settings import Settings
from jobcore.supervision import Backoff, Supervisor, run_periodically

logger = logging.getLogger(__name__)

# The only signature algorithms accepted; `none`, HS* and the rest are refused, whatever a
# token's header asks for (RFC 8725 section 3.1: the verifier picks the algorithm).
ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "ES256"})
# The supervised task that keeps the keys fresh.
JWKS_TASK: Final = "jwks-refresh"
# How often the JWKS is fetched again: providers publish a new key well before signing with it.
JWKS_REFRESH_INTERVAL: Final = timedelta(minutes=5)
# A token signed by a key not yet held makes the next refresh come early, but never sooner than
# this after the last fetch: tokens with made-up key ids cannot make the server hammer the
# provider.
EARLY_REFRESH_MIN_INTERVAL: Final = timedelta(seconds=5)
# A fetch of the JWKS (connecting, reading) gives up after this long.
JWKS_FETCH_TIMEOUT_SECONDS: Final = 5.0
# A JWKS is a few keys; a larger document is refused unread.
MAX_JWKS_BYTES: Final = 1024 * 1024
# Actors are recorded with every event a principal causes.
MAX_ACTOR_CHARS: Final = 200
# Claims every token must carry (nbf and iat are checked when present).
REQUIRED_CLAIMS: Final = ("exp", "iss", "aud", "sub")
# RSA keys shorter than this are not trusted to sign (NIST SP 800-131A).
MIN_RSA_KEY_BITS: Final = 2048

_SCOPE_NAMES: Final = frozenset(scope.value for scope in Scope)
# Claims that may name scopes: OAuth's `scope` (RFC 8693, a space-separated string) and `scp`
# (Azure AD, Okta: a list or a string).
_SCOPE_CLAIMS: Final = ("scope", "scp")
# Why PyJWT refused a token, as a client is told it (the first match wins: subclasses first).
_REFUSALS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "invalid token: expired"),
    (jwt.ImmatureSignatureError, "invalid token: not yet valid"),
    (jwt.InvalidAudienceError, "invalid token: wrong audience"),
    (jwt.InvalidIssuerError, "invalid token: wrong issuer"),
    (jwt.InvalidSignatureError, "invalid token: bad signature"),
    (jwt.InvalidAlgorithmError, "invalid token: algorithm not allowed (RS256 and ES256 only)"),
    (jwt.InvalidKeyError, "invalid token: unusable signing key"),
)


@dataclass(frozen=True)
class SigningKeys:
    """The keys of one JWKS that may sign tokens here: RS256 and ES256 public signature keys."""

    by_kid: Mapping[str, jwt.PyJWK]
    # Keys published without a `kid`.
    unnamed: tuple[jwt.PyJWK, ...]
    # Keys of the document not usable here (other algorithms, encryption keys, short keys).
    skipped: int

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        """The key a token's `kid` names; a token without one only matches a JWKS of one key."""
        if kid is not None:
            return self.by_kid.get(kid)
        every = [*self.by_kid.values(), *self.unnamed]
        return every[0] if len(every) == 1 else None

    def same_as(self, other: SigningKeys) -> bool:
        """Whether `other` holds the same key ids, as far as the log is concerned."""
        return (self.by_kid.keys(), len(self.unnamed), self.skipped) == (
            other.by_kid.keys(),
            len(other.unnamed),
            other.skipped,
        )

    def describe(self) -> str:
        """How many keys, and their ids (public values), for the log."""
        kids = ", ".join(sorted(self.by_kid))[:300]
        text = f"{len(self.by_kid) + len(self.unnamed)} signing keys (kid: {kids or '-'})"
        return f"{text}; {self.skipped} other keys skipped" if self.skipped else text


def _usable(key: jwt.PyJWK) -> bool:
    """Whether `key` is a public RS256 or ES256 signature key of adequate strength."""
    if key.algorithm_name not in ALLOWED_ALGORITHMS or key.public_key_use not in (None, "sig"):
        return False
    public: object = key.key
    if key.algorithm_name == "RS256":
        return isinstance(public, rsa.RSAPublicKey) and public.key_size >= MIN_RSA_KEY_BITS
    return isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)


def parse_jwks(document: bytes) -> SigningKeys:
    """The signing keys of a JWKS document; ValueError (saying why) if it holds none."""
    try:
        parsed: object = json.loads(document)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise ValueError("it is not a JSON object with a `keys` list")
    try:
        key_set = jwt.PyJWKSet.from_dict(parsed)
    except jwt.PyJWKSetError:
        raise ValueError("it holds no key that PyJWT can read") from None
    except jwt.PyJWTError as error:
        raise ValueError(str(error)) from None
    by_kid: dict[str, jwt.PyJWK] = {}
    unnamed: list[jwt.PyJWK] = []
    skipped = len(parsed["keys"]) - len(key_set.keys)
    for key in key_set:
        kid = key.key_id
        if not _usable(key) or (kid is not None and (not isinstance(kid, str) or kid in by_kid)):
            skipped += 1
        elif kid is None:
            unnamed.append(key)
        else:
            by_kid[kid] = key
    if not by_kid and not unnamed:
        raise ValueError("it holds no RS256 or ES256 public signature key")
    return SigningKeys(by_kid=by_kid, unnamed=tuple(unnamed), skipped=skipped)


def _bounded(document: bytes) -> bytes:
    if len(document) > MAX_JWKS_BYTES:
        raise ValueError(f"it is larger than {MAX_JWKS_BYTES} bytes")
    return document


def _read_file(path: Path) -> bytes:
    with path.open("rb") as file:
        return _bounded(file.read(MAX_JWKS_BYTES + 1))


def _read_url(url: str, *, timeout_seconds: float) -> bytes:
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked to be http(s)
        url, headers={"Accept": "application/jwk-set+json, application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_seconds) as response:  # noqa: S310
        return _bounded(response.read(MAX_JWKS_BYTES + 1))


def _redacted(url: str) -> str:
    """`url` without credentials or query (they stay out of logs and error messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _reason(error: BaseException) -> str:
    """Why a fetch failed, in a few words."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP status {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class JwksSource:
    """The signing keys of a JWKS, held in memory and refreshed by `run()`.

    `read` returns the JWKS document; it blocks, so it runs in a thread. A failed refresh
    keeps the keys held before.
    """

    def __init__(
        self,
        read: Callable[[], bytes],
        *,
        where: str,
        setting: str,
        refresh_interval: timedelta = JWKS_REFRESH_INTERVAL,
        early_refresh_min_interval: timedelta = EARLY_REFRESH_MIN_INTERVAL,
        fetch_timeout_seconds: float = JWKS_FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`where` names the JWKS in messages, `setting` the variable that configures it."""
        self.where = where
        self._read = read
        self._setting = setting
        self._interval = refresh_interval
        self._early_min_seconds = early_refresh_min_interval.total_seconds()
        self._fetch_timeout_seconds = fetch_timeout_seconds
        self._clock = clock
        self._keys: SigningKeys | None = None
        self._last_fetch = -math.inf
        self._refresh_wanted = asyncio.Event()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        refresh_interval: timedelta = JWKS_REFRESH_INTERVAL,
        early_refresh_min_interval: timedelta = EARLY_REFRESH_MIN_INTERVAL,
        fetch_timeout_seconds: float = JWKS_FETCH_TIMEOUT_SECONDS,
    ) -> JwksSource:
        """The JWKS an identity provider publishes at `url` (http or https)."""
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            raise ValueError("AUTH_JWKS_URL must be an https:// (or http://) URL")
        return cls(
            functools.partial(_read_url, url, timeout_seconds=fetch_timeout_seconds),
            where=f"the JWKS at {_redacted(url)}",
            setting="AUTH_JWKS_URL",
            refresh_interval=refresh_interval,
            early_refresh_min_interval=early_refresh_min_interval,
            fetch_timeout_seconds=fetch_timeout_seconds,
        )

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        refresh_interval: timedelta = JWKS_REFRESH_INTERVAL,
        early_refresh_min_interval: timedelta = EARLY_REFRESH_MIN_INTERVAL,
    ) -> JwksSource:
        """The JWKS in a file (tests, air-gapped sites); it is re-read as a URL would be."""
        return cls(
            functools.partial(_read_file, path),
            where=f"the JWKS file {path}",
            setting="AUTH_JWKS_FILE",
            refresh_interval=refresh_interval,
            early_refresh_min_interval=early_refresh_min_interval,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> JwksSource | None:
        """AUTH_JWKS_URL's or AUTH_JWKS_FILE's JWKS; None when neither is set."""
        if settings.auth_jwks_url:
            return cls.from_url(settings.auth_jwks_url)
        if settings.auth_jwks_file:
            return cls.from_file(Path(settings.auth_jwks_file))
        return None

    @property
    def keys(self) -> SigningKeys | None:
        """The keys held now; None before the first load."""
        return self._keys

    @property
    def refresh_requested(self) -> bool:
        """Whether a token named an unknown key, so that `run()` fetches again without waiting."""
        return self._refresh_wanted.is_set()

    async def load(self) -> None:
        """The first load, before serving; RuntimeError (saying what to fix) if it fails."""
        try:
            await self.refresh()
        except TransientError as error:
            raise RuntimeError(
                f"{error}: JWTs cannot be verified without the identity provider's keys, so "
                f"the server does not start; check {self._setting} (or unset it to accept "
                "API keys only)"
            ) from error

    async def refresh(self) -> None:
        """Fetch the JWKS again; TransientError if that fails (the keys held stay in use)."""
        self._last_fetch = self._clock()
        try:
            document = await asyncio.wait_for(
                asyncio.to_thread(self._read), timeout=self._fetch_timeout_seconds
            )
            keys = parse_jwks(document)
        except (OSError, ValueError, http.client.HTTPException) as error:
            kept = "; the keys loaded before stay in use" if self._keys is not None else ""
            raise TransientError(f"cannot load {self.where}: {_reason(error)}{kept}") from error
        if self._keys is None or not self._keys.same_as(keys):
            logger.info("loaded %s: %s", self.where, keys.describe())
        self._keys = keys

    def signing_key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key `kid` names, or None; an unknown `kid` asks `run()` for an early refresh.

        Called on the event loop's thread (it sets an asyncio.Event).
        """
        found = self._keys.find(kid) if self._keys is not None else None
        if (
            found is None
            and kid is not None
            and self._clock() - self._last_fetch >= self._early_min_seconds
        ):
            self._refresh_wanted.set()
        return found

    async def run(self) -> NoReturn:
        """Refresh every interval, or sooner for an unknown key id (a supervised task).

        A failed refresh keeps the keys and is logged once per outage (run_periodically),
        then retried with backoff; `load()` must have succeeded first.
        """
        seconds = self._interval.total_seconds()
        await self._pause(seconds)
        await run_periodically(
            JWKS_TASK,
            self.refresh,
            interval=self._interval,
            backoff=Backoff(first_seconds=min(seconds, 1.0), cap_seconds=seconds),
            sleep=self._pause,
        )

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if a token named an unknown key meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._refresh_wanted.wait()
        self._refresh_wanted.clear()


class JwtVerifier:
    """Turns a JWT of the configured identity provider into its principal (server.auth.TokenVerifier)."""

    def __init__(
        self,
        keys: JwksSource,
        *,
        issuer: str,
        audience: str,
        tenant_claim: str,
        leeway_seconds: float,
    ) -> None:
        if not (issuer and audience and tenant_claim):
            raise ValueError("a JWT verifier needs an issuer, an audience and a tenant claim")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._tenant_claim = tenant_claim
        self._leeway_seconds = leeway_seconds

    def verify(self, token: str) -> Principal:
        """The principal `token` stands for; UnauthenticatedError saying why not (never the token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
            raise UnauthenticatedError(
                "invalid token: algorithm not allowed (RS256 and ES256 only)"
            )
        key = self._keys.signing_key(header.get("kid"))
        if key is None:
            raise UnauthenticatedError("invalid token: unknown signing key")
        if algorithm != key.algorithm_name:
            raise UnauthenticatedError("invalid token: its algorithm is not its key's")
        try:
            claims = jwt.decode(
                token,
                key=key,
                # The key's own algorithm (one of ALLOWED_ALGORITHMS), never the header's.
                algorithms=[key.algorithm_name],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as error:
            raise UnauthenticatedError(f"invalid token: no `{error.claim}` claim") from None
        except jwt.PyJWTError as error:
            raise UnauthenticatedError(_refusal(error)) from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]  # a string: PyJWT checks `sub`'s type
        if not subject:
            raise UnauthenticatedError("invalid token: empty `sub` claim")
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str):
            raise UnauthenticatedError(
                f"invalid token: no tenant (the `{self._tenant_claim}` claim, a string)"
            )
        try:
            check_tenant(tenant)
        except InvalidJobError:
            raise UnauthenticatedError(
                f"invalid token: the `{self._tenant_claim}` claim is not a valid tenant name"
            ) from None
        return Principal(
            tenant=tenant,
            scopes=_scopes(claims),
            actor=f"jwt:{subject}"[:MAX_ACTOR_CHARS],
        )


def _refusal(error: jwt.PyJWTError) -> str:
    for kind, reason in _REFUSALS:
        if isinstance(error, kind):
            return reason
    return "malformed token"


def _scopes(claims: Mapping[str, Any]) -> frozenset[Scope]:
    """Our scopes among those `scope` and `scp` name; other names are other services' business."""
    names: list[str] = []
    for claim in _SCOPE_CLAIMS:
        value = claims.get(claim)
        if value is None:
            continue
        if isinstance(value, str):
            names.extend(value.split())
        elif isinstance(value, list) and all(isinstance(name, str) for name in value):
            names.extend(value)
        else:
            raise UnauthenticatedError(
                f"invalid token: `{claim}` must be a string or a list of strings"
            )
    return frozenset(Scope(name) for name in names if name in _SCOPE_NAMES)


async def jwt_verifier(settings: Settings, *, supervisor: Supervisor) -> JwtVerifier | None:
    """The JWT verifier the settings ask for, its keys loaded and kept fresh under `supervisor`.

    None when no JWKS is configured (API keys only). RuntimeError when the JWKS cannot be
    loaded: the server does not start rather than refuse every token.
    """
    source = JwksSource.from_settings(settings)
    if source is None:
        return None
    verifier = JwtVerifier(
        source,
        issuer=settings.auth_jwt_issuer,
        audience=settings.auth_jwt_audience,
        tenant_claim=settings.auth_jwt_tenant_claim,
        leeway_seconds=settings.auth_jwt_leeway_seconds,
    )
    await source.load()
    supervisor.start(JWKS_TASK, source.run())
    logger.info(
        "JWTs of %s for %s are accepted, verified against %s",
        settings.auth_jwt_issuer,
        settings.auth_jwt_audience,
        source.where,
    )
    return verifier
