"""Process configuration, read once from the environment with the names the seed documented."""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEVELOPMENT_DATABASE_URL = "postgresql+asyncpg://postgres:postgres@localhost:5432/jobdb"
DEVELOPMENT_FLOWER_BASIC_AUTH = "admin:admin"
# Jobs a second the default WORKER_CONCURRENCY sizes each worker process for: one process
# sustained about 1,500 a second of 2 s jobs on a 2-core machine, where the rest of the stack
# on the same cores was the limit (BENCHMARKS.md).
WORKER_JOBS_PER_SECOND = 1000


class Settings(BaseSettings):
    """Every knob of the server and the worker; `.env.example` documents each one."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = DEVELOPMENT_DATABASE_URL
    # Migrations run as this role (the schema's owner); the application's DATABASE_URL role then
    # gets only row access to the tables (jobcore.migrate). Empty: DATABASE_URL migrates too.
    database_migration_url: str = ""
    redis_url: str = "redis://localhost:6379/0"
    # Empty means "same as REDIS_URL", as in the seed's defaults.
    celery_broker_url: str = ""
    celery_result_backend: str = ""
    flower_basic_auth: str = DEVELOPMENT_FLOWER_BASIC_AUTH

    # Loopback unless told otherwise: a container that must be reached sets 0.0.0.0 itself.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # gRPC server processes sharing GRPC_PORT (one Python process uses one core).
    server_processes: int = Field(default=1, ge=1, le=64)
    # Largest gRPC message the server accepts; a job of N numbers needs about 9 * N bytes.
    grpc_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_job_numbers: int = Field(default=100_000, ge=1)
    simulated_delay_seconds: float = Field(default=2.0, ge=0)
    # Jobs one worker process keeps in flight; they wait on asyncio, not on threads' CPU, and
    # a waiting job holds no numbers beyond a small job's 8 KiB, so a slot costs about a
    # coroutine (~20 KB). Unset (or empty): what one process computes while its jobs wait out
    # the delay, 1,000 x (SIMULATED_DELAY_SECONDS + 1) (3,000 for the 2 s delay), so the
    # process's CPU limits it, not its slots.
    worker_concurrency: int | None = Field(default=None, ge=1)
    # Worker processes `python -m worker` runs (one Python process computes on one core).
    # Unset (or empty): one per CPU this process may run on.
    worker_processes: int | None = Field(default=None, ge=1, le=64)
    # A worker renews its claim on a running job every third of this; a claim not renewed
    # for this long (the worker died) is taken back and the job runs again.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    # A job that runs longer than this (delay included) fails as timed out.
    job_timeout_seconds: float = Field(default=300.0, gt=0)
    # After this many lost workers in a row a job fails instead of running again.
    max_attempts: int = Field(default=3, ge=1)
    # Finished jobs and their events are deleted this long after they finished.
    job_retention_days: float = Field(default=30.0, gt=0)
    # WatchJob sends a heartbeat after this long without a change.
    watch_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # A PENDING job whose broker message is older than this is published again once the
    # broker's queue is empty (Redis may have lost it): while wake-ups wait there, workers
    # are still behind. Duplicates are harmless. Failed publishes are retried at every sweep.
    redispatch_after_seconds: float = Field(default=60.0, gt=0)
    # How often each server re-dispatches, takes back expired leases and purges old jobs.
    maintenance_interval_seconds: float = Field(default=5.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    health_check_interval_seconds: float = Field(default=2.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    # TLS on the gRPC port with this certificate chain and key (PEM files); empty: plaintext.
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    # Server reflection (grpcurl list/describe); unset: on, except in production.
    grpc_reflection: bool | None = None
    # `required`: every JobService and AdminService call needs an API key or a JWT. `none`: every
    # call is one anonymous caller of the tenant `default` with every scope (a throwaway laptop
    # only; refused in production).
    auth_mode: Literal["required", "none"] = "required"
    # JWTs of an OpenID Connect provider, verified against its JWKS (a URL, or a file for
    # tests and air-gapped sites); neither set: API keys only.
    auth_jwks_url: str = ""
    auth_jwks_file: str = ""
    # The `iss` and `aud` every token must carry (required when a JWKS is configured).
    auth_jwt_issuer: str = ""
    auth_jwt_audience: str = ""
    # The claim that names the token's tenant.
    auth_jwt_tenant_claim: str = "tenant"
    # Clock skew tolerated on `exp`, `nbf` and `iat`.
    auth_jwt_leeway_seconds: float = Field(default=10.0, ge=0, le=300)
    # Each server re-reads the API keys this often: a new or revoked key takes effect on every
    # replica within this long, and no call waits on the database to verify a key.
    api_key_refresh_seconds: float = Field(default=1.0, gt=0, le=5)
    # Signs ListJobs page tokens (HMAC-SHA256), so a token cannot be forged into another filter or
    # tenant. Every replica needs the same value. Empty: a random one per process (development).
    page_token_secret: str = ""
    # Unfinished (PENDING or IN_PROGRESS) jobs a tenant may have at once, and per-tenant values
    # as JSON, e.g. {"acme": 500000}.
    max_unfinished_jobs_per_tenant: int = Field(default=100_000, ge=1)
    tenant_max_unfinished_jobs: Annotated[dict[str, Annotated[int, Field(ge=1)]], NoDecode] = Field(
        default_factory=dict
    )
    # Requests per credential, shared by every replica through Redis, in the `limits`
    # library's notation ("1000/second", "50000 per minute"); empty: no limit.
    rate_limit_per_credential: str = "10000/second"
    # Prometheus metrics of this process at http://METRICS_HOST:METRICS_PORT/metrics; 0: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @property
    def worker_slots(self) -> int:
        """Jobs one worker process keeps in flight: WORKER_CONCURRENCY, else sized from the delay."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return math.ceil(WORKER_JOBS_PER_SECOND * (self.simulated_delay_seconds + 1))

    @property
    def worker_process_count(self) -> int:
        """Worker processes to run: WORKER_PROCESSES, else one per CPU available."""
        return self.worker_processes or cpus_available()

    @property
    def broker_url(self) -> str:
        """Where Celery messages go: CELERY_BROKER_URL, else REDIS_URL."""
        return self.celery_broker_url or self.redis_url

    @property
    def migration_database_url(self) -> str:
        """Whom migrations connect as: DATABASE_MIGRATION_URL, else DATABASE_URL."""
        return self.database_migration_url or self.database_url

    @property
    def reflection_enabled(self) -> bool:
        """Whether the gRPC server offers reflection: GRPC_REFLECTION, else all but production."""
        if self.grpc_reflection is not None:
            return self.grpc_reflection
        return self.environment != "production"

    @property
    def result_backend_url(self) -> str:
        """Celery's result backend; job results themselves live in PostgreSQL."""
        return self.celery_result_backend or self.redis_url

    @property
    def visibility_timeout_seconds(self) -> float:
        """Redis redelivers an unacknowledged message after this; longer than any job may run.

        A redelivery while the job still runs would be harmless (claims are
        compare-and-set) but wasteful; lost jobs are recovered by the lease instead.
        """
        return self.job_timeout_seconds + self.job_lease_seconds + 60

    @field_validator("tenant_max_unfinished_jobs", mode="before")
    @classmethod
    def _tenant_limits_from_json(cls, value: object) -> object:
        # A JSON object; empty (Compose passes `TENANT_MAX_UNFINISHED_JOBS=` through) means none.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("grpc_reflection", "worker_concurrency", "worker_processes", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # `GRPC_REFLECTION=` (as .env.example has it) means the environment's default.
        return None if value == "" else value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if bool(self.grpc_tls_cert_file) != bool(self.grpc_tls_key_file):
            raise ValueError("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE go together: set both")
        return self

    def max_unfinished_jobs(self, tenant: str) -> int:
        """The tenant's limit on unfinished jobs (TENANT_MAX_UNFINISHED_JOBS, else the default)."""
        return self.tenant_max_unfinished_jobs.get(tenant, self.max_unfinished_jobs_per_tenant)

    @model_validator(mode="after")
    def _jwt_settings_together(self) -> Settings:
        if self.auth_jwks_url and self.auth_jwks_file:
            raise ValueError("set AUTH_JWKS_URL or AUTH_JWKS_FILE, not both")
        if (self.auth_jwks_url or self.auth_jwks_file) and not (
            self.auth_jwt_issuer and self.auth_jwt_audience
        ):
            raise ValueError(
                "a JWKS needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE: tokens are checked against both"
            )
        return self

    @model_validator(mode="after")
    def _no_development_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            if self.database_url == DEVELOPMENT_DATABASE_URL:
                raise ValueError("DATABASE_URL must be set explicitly in production")
            if self.flower_basic_auth == DEVELOPMENT_FLOWER_BASIC_AUTH:
                raise ValueError("FLOWER_BASIC_AUTH must be set to a real secret in production")
            if self.auth_mode == "none":
                raise ValueError("AUTH_MODE=none (no authentication) is refused in production")
            if not self.page_token_secret:
                raise ValueError(
                    "PAGE_TOKEN_SECRET must be set in production (the same on every replica)"
                )
        return self


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity; a container's cpuset, not its quota)."""
    return len(os.sched_getaffinity(0))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    return Settings()
