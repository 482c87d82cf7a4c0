"""The JWKS fetched from a URL (a small HTTP server on loopback, in a thread) and from a file.

The keys load before the server serves or the server does not start; a rotated key is fetched
early when a token names it, and periodically otherwise; an outage keeps the keys held and is
logged once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobcore.errors import UnauthenticatedError
from jobcore.jwt_tokens import JWKS_TASK, JwksSource, JwtVerifier, jwt_verifier
from jobcore.settings import Settings
from jobcore.supervision import Supervisor
from tests.eventually import eventually
from tests.jwt_keys import JwtIssuer, SigningKey, TokenMinter


class JwksServer:
    """Serves `minter`'s current JWKS at `url`, or `status` instead of it, or nothing (`stall`)."""

    def __init__(self, minter: TokenMinter) -> None:
        self.minter = minter
        self.status = 200
        self.stall = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._requests = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with served._lock:
                    served._requests += 1
                if served.stall.is_set():
                    served._released.wait(timeout=10)
                    return
                body = served.minter.jwks_json() if served.status == 200 else b"{}"
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests count requests instead."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/.well-known/jwks.json"

    @property
    def requests(self) -> int:
        """How many times the JWKS was asked for."""
        with self._lock:
            return self._requests

    def close(self) -> None:
        """Release stalled requests and stop serving."""
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def jwks_server(minter: TokenMinter) -> Iterator[JwksServer]:
    server = JwksServer(minter)
    yield server
    server.close()


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    running = Supervisor()
    yield running
    await running.stop()
    assert running.failure is None


async def _kept_fresh(
    minter: TokenMinter, source: JwksSource, supervisor: Supervisor
) -> JwtVerifier:
    """A verifier of `minter`'s tokens on `source`, loaded, then refreshed under `supervisor`."""
    await source.load()
    supervisor.start(JWKS_TASK, source.run())
    return minter.verifier(source, leeway_seconds=5)


def _tenant_of(verifier: JwtVerifier, token: str) -> str | None:
    try:
        return verifier.verify(token).tenant
    except UnauthenticatedError:
        return None


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_settings_url_is_loaded_and_kept_fresh_under_the_supervisor(
    minter: TokenMinter, jwks_server: JwksServer, supervisor: Supervisor
) -> None:
    settings = Settings(
        auth_jwks_url=jwks_server.url,
        auth_jwt_issuer=minter.issuer,
        auth_jwt_audience=minter.audience,
        auth_jwt_tenant_claim=minter.tenant_claim,
    )

    verifier = await jwt_verifier(settings, supervisor=supervisor)

    assert verifier is not None
    assert verifier.verify(minter.token(tenant="acme", algorithm="ES256")).tenant == "acme"
    assert supervisor.is_running(JWKS_TASK)
    assert jwks_server.requests == 1


async def test_the_settings_file_is_loaded(
    tmp_path: Path, supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = JwtIssuer.create(tmp_path / "idp")
    for name, value in issuer.environment().items():
        monkeypatch.setenv(name, value)

    verifier = await jwt_verifier(Settings(), supervisor=supervisor)

    assert verifier is not None
    assert verifier.verify(issuer.token(tenant="globex")).tenant == "globex"


async def test_without_a_jwks_there_is_no_verifier(supervisor: Supervisor) -> None:
    settings = Settings(auth_jwks_url="", auth_jwks_file="")

    assert await jwt_verifier(settings, supervisor=supervisor) is None
    assert not supervisor.is_running(JWKS_TASK)


async def test_a_jwks_that_cannot_be_loaded_stops_the_start(
    minter: TokenMinter, jwks_server: JwksServer, supervisor: Supervisor
) -> None:
    def settings(url: str) -> Settings:
        return Settings(
            auth_jwks_url=url, auth_jwt_issuer=minter.issuer, auth_jwt_audience=minter.audience
        )

    nobody = f"http://127.0.0.1:{_unused_port()}/jwks.json"
    with pytest.raises(RuntimeError, match=r"refused.*does not start.*AUTH_JWKS_URL"):
        await jwt_verifier(settings(nobody), supervisor=supervisor)
    jwks_server.status = 404
    with pytest.raises(RuntimeError, match="HTTP status 404"):
        await jwt_verifier(settings(jwks_server.url), supervisor=supervisor)
    with pytest.raises(ValueError, match="https://"):
        await jwt_verifier(settings("file:///etc/passwd"), supervisor=supervisor)
    assert not supervisor.is_running(JWKS_TASK)


async def test_a_jwks_url_that_does_not_answer_times_out(jwks_server: JwksServer) -> None:
    jwks_server.stall.set()
    source = JwksSource.from_url(jwks_server.url, fetch_timeout_seconds=0.3)

    with pytest.raises(RuntimeError, match="timed out"):
        await source.load()


async def test_a_token_of_a_new_key_makes_the_refresh_come_early(
    minter: TokenMinter, jwks_server: JwksServer, supervisor: Supervisor
) -> None:
    source = JwksSource.from_url(
        jwks_server.url,
        refresh_interval=timedelta(hours=1),
        early_refresh_min_interval=timedelta(milliseconds=200),
    )
    verifier = await _kept_fresh(minter, source, supervisor)

    minter.rotate("RS256")
    token = minter.token(tenant="acme")
    with pytest.raises(UnauthenticatedError, match="unknown signing key"):
        verifier.verify(token)

    async def tenant() -> str | None:
        return _tenant_of(verifier, token)

    assert await eventually(tenant, until=lambda found: found == "acme") == "acme"
    assert jwks_server.requests == 2


async def test_unknown_key_ids_never_cost_a_fetch_per_call(
    minter: TokenMinter, jwks_server: JwksServer, supervisor: Supervisor
) -> None:
    source = JwksSource.from_url(
        jwks_server.url,
        refresh_interval=timedelta(hours=1),
        early_refresh_min_interval=timedelta(minutes=1),
    )
    verifier = await _kept_fresh(minter, source, supervisor)

    for _ in range(200):
        made_up = SigningKey.generate("ES256").sign(minter.claims())
        with pytest.raises(UnauthenticatedError, match="unknown signing key"):
            verifier.verify(made_up)
        await asyncio.sleep(0)  # let the refresh task run, were it asked to

    assert jwks_server.requests == 1


async def test_the_periodic_refresh_drops_a_retired_key(
    minter: TokenMinter, jwks_server: JwksServer, supervisor: Supervisor
) -> None:
    source = JwksSource.from_url(jwks_server.url, refresh_interval=timedelta(milliseconds=100))
    verifier = await _kept_fresh(minter, source, supervisor)
    old_key = minter.key("RS256")
    old_token = minter.token(tenant="acme")
    assert verifier.verify(old_token).tenant == "acme"

    new_key = minter.rotate("RS256")
    minter.retire(old_key)
    new_token = minter.token(tenant="acme")
    assert minter.key("RS256") is new_key

    async def tenants() -> tuple[str | None, str | None]:
        return _tenant_of(verifier, old_token), _tenant_of(verifier, new_token)

    await eventually(tenants, until=lambda found: found == (None, "acme"))
    with pytest.raises(UnauthenticatedError, match="unknown signing key"):
        verifier.verify(old_token)


async def test_an_outage_keeps_the_keys_and_is_logged_once(
    minter: TokenMinter,
    jwks_server: JwksServer,
    supervisor: Supervisor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jobcore.supervision")
    source = JwksSource.from_url(jwks_server.url, refresh_interval=timedelta(milliseconds=100))
    verifier = await _kept_fresh(minter, source, supervisor)
    token = minter.token(tenant="acme")

    jwks_server.status = 503
    failing_since = jwks_server.requests

    async def requests() -> int:
        return jwks_server.requests

    await eventually(requests, until=lambda count: count >= failing_since + 4)
    assert verifier.verify(token).tenant == "acme"
    warnings = [
        record
        for record in caplog.records
        if record.name == "jobcore.supervision" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert JWKS_TASK in warnings[0].getMessage()
    assert "HTTP status 503" in warnings[0].getMessage()
    assert "the keys loaded before stay in use" in warnings[0].getMessage()

    jwks_server.status = 200

    async def recovered() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "jobcore.supervision" and "recovered" in record.getMessage()
        ]

    await eventually(recovered, until=lambda lines: len(lines) == 1)
    assert supervisor.is_running(JWKS_TASK)
