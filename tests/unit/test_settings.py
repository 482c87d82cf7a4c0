"""Settings come from the seed's environment variables; production refuses development secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from jobcore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "SIMULATED_DELAY_SECONDS", "MAX_JOB_NUMBERS"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.simulated_delay_seconds == 2.0
    assert settings.max_job_numbers == 100_000
    assert settings.broker_url == settings.redis_url == "redis://localhost:6379/0"


def test_workers_are_sized_from_the_machine_and_the_delay_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    monkeypatch.setenv("WORKER_CONCURRENCY", "")  # empty, as .env.example and Compose pass it
    monkeypatch.delenv("SIMULATED_DELAY_SECONDS", raising=False)

    assert Settings().worker_process_count == len(os.sched_getaffinity(0))
    assert Settings().worker_slots == 3000
    assert Settings(simulated_delay_seconds=0).worker_slots == 1000
    assert Settings(simulated_delay_seconds=0.25).worker_slots == 1250
    assert Settings(worker_concurrency=50, worker_processes=3).worker_slots == 50
    assert Settings(worker_concurrency=50, worker_processes=3).worker_process_count == 3


def test_celery_urls_default_to_redis_url_and_can_be_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/2")
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)

    settings = Settings()

    assert settings.broker_url == "redis://broker:6379/2"
    assert settings.result_backend_url == "redis://cache:6379/1"


def test_production_refuses_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:s3cret")

    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings()

    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://jobs:pw@db/jobdb")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:admin")
    with pytest.raises(ValidationError, match="FLOWER_BASIC_AUTH"):
        Settings()


def test_negative_delay_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATED_DELAY_SECONDS", "-1")

    with pytest.raises(ValidationError, match="simulated_delay_seconds"):
        Settings()


def test_env_example_documents_every_setting() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }

    assert {name.upper() for name in Settings.model_fields} <= documented


def test_production_refuses_to_run_without_authentication_or_a_page_token_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://jobs:pw@db/jobdb")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:s3cret")
    monkeypatch.setenv("PAGE_TOKEN_SECRET", "a-long-random-secret")
    monkeypatch.setenv("AUTH_MODE", "none")

    with pytest.raises(ValidationError, match="AUTH_MODE=none"):
        Settings()

    monkeypatch.setenv("AUTH_MODE", "required")
    monkeypatch.setenv("PAGE_TOKEN_SECRET", "")
    with pytest.raises(ValidationError, match="PAGE_TOKEN_SECRET"):
        Settings()

    monkeypatch.setenv("PAGE_TOKEN_SECRET", "a-long-random-secret")
    assert Settings().auth_mode == "required"


def test_a_jwks_needs_its_issuer_and_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_JWKS_FILE", "/etc/jobs/jwks.json")
    monkeypatch.delenv("AUTH_JWT_AUDIENCE", raising=False)
    monkeypatch.setenv("AUTH_JWT_ISSUER", "https://id.example.com/")

    with pytest.raises(ValidationError, match="AUTH_JWT_AUDIENCE"):
        Settings()

    monkeypatch.setenv("AUTH_JWT_AUDIENCE", "jobs")
    monkeypatch.setenv("AUTH_JWKS_URL", "https://id.example.com/jwks")
    with pytest.raises(ValidationError, match="not both"):
        Settings()


def test_tenants_may_have_quotas_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_UNFINISHED_JOBS_PER_TENANT", "50")
    monkeypatch.setenv("TENANT_MAX_UNFINISHED_JOBS", '{"acme": 500000}')

    settings = Settings()

    assert settings.max_unfinished_jobs("acme") == 500_000
    assert settings.max_unfinished_jobs("globex") == 50


def test_per_tenant_quotas_empty_means_none_and_each_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENANT_MAX_UNFINISHED_JOBS", "")
    assert Settings().tenant_max_unfinished_jobs == {}

    for bad in ('{"acme": 0}', '{"acme": "many"}', "acme=5"):
        monkeypatch.setenv("TENANT_MAX_UNFINISHED_JOBS", bad)
        with pytest.raises(ValidationError, match="tenant_max_unfinished_jobs"):
            Settings()
