"""`python -m tests.hosts.capacity` (as root): what one job costs on each kind of host.

It builds the cluster of tests/hosts (db, broker, edge, two servers, two workers, client), with
SIMULATED_DELAY_SECONDS=0 and the documented defaults otherwise, and runs the benchmark's
delay-0 batch flow (benchmarks.loadgen.lifecycle with BatchSubmitJobs through `edge`) from the
`client` host. Over the window from before the first submission until every job is final it
reads, per job:
- CPU of each host's processes (benchmarks.cpu over each process tree, reaped children too);
- statements from pg_stat_statements (loaded for this run: the cluster's PostgreSQL is
  restarted once with it before any load), commits and rows from pg_stat_database, WAL bytes;
- bytes through each host's veth (its eth0 counters, both directions);
- Redis commands from INFO commandstats;
and, sampled every second, the connections each server and worker process holds (PostgreSQL's
pg_stat_activity and Redis's CLIENT LIST, by the host's address). It prints the summary as JSON
and rewrites the generated section of docs/SCALING.md (the figures and the projection that
rests on them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import asyncpg
import redis

from benchmarks import loadgen
from benchmarks.cpu import PartsMeter
from benchmarks.sizes import FULL
from devstack.processes import in_netns, netns_argv, python_module
from devstack.stack import ROOT
from jobcore.database import asyncpg_dsn
from jobcore.queries import QUERIES
from tests.conftest import stack_data_dir
from tests.faults.harness import ReportSection, current_commit
from tests.hosts.client import API_KEY_VARIABLE, DATABASE_URL_VARIABLE
from tests.hosts.cluster import (
    HOSTS,
    SERVERS,
    WORKERS,
    Cluster,
    ClusterSettings,
    cluster_of_hosts,
    unavailable_reason,
)

_T = TypeVar("_T")

REPORT = ROOT / "docs" / "SCALING.md"
SECTION = ReportSection(
    start="<!-- capacity: the section below is written by tests/hosts/capacity.py -->",
    end="<!-- end of the capacity section -->",
)
# Enough for the window to last many seconds: the batched flow costs so little per job that
# CPU times, read in 10 ms ticks, need this many jobs to resolve each host's share.
DEFAULT_JOBS = 100_000
# The documented defaults (docker-compose.yml, jobcore.settings), written out so the run is
# reproducible; only the delay differs. WORKER_CONCURRENCY stays unset: sized from the delay.
SETTINGS = ClusterSettings(
    env={
        "SIMULATED_DELAY_SECONDS": "0",
        "JOB_LEASE_SECONDS": "30",
        "MAINTENANCE_INTERVAL_SECONDS": "5",
        "REDISPATCH_AFTER_SECONDS": "60",
        "HEALTH_CHECK_INTERVAL_SECONDS": "2",
        "WATCH_HEARTBEAT_SECONDS": "15",
        "RATE_LIMIT_PER_CREDENTIAL": "10000/second",
        "MAX_UNFINISHED_JOBS_PER_TENANT": "1000000",
    },
    server_env={"DB_POOL_SIZE": "10"},
    worker_env={"DB_POOL_SIZE": "10"},
)
# docker-compose.yml's PostgreSQL, and what of it only a superuser may use (PostgreSQL's
# superuser_reserved_connections default).
COMPOSE_MAX_CONNECTIONS = 200
SUPERUSER_RESERVED_CONNECTIONS = 3
# The idle window read before the load: what the hosts cost with nothing to do.
IDLE_SECONDS = 10.0
SAMPLE_INTERVAL_SECONDS = 1.0
# The projection keeps PostgreSQL below this share of its cores: past it, queueing for the
# CPU (and for locks and WAL writes) makes latency grow faster than throughput.
POSTGRES_UTILISATION = 0.7
APP_ROLE = "jobs_app"


# --- reading the hosts -------------------------------------------------------------------------


def _in_host(cluster: Cluster, host: str, function: Callable[[], _T]) -> _T:
    """`function()` with its sockets on `host` (the cluster's addresses are reachable only there)."""
    return in_netns(cluster.netns(host), function)


def _postgres(cluster: Cluster, sql: str, *, database: str = "jobdb") -> list[asyncpg.Record]:
    """Run `sql` as the superuser from the `client` host; its rows."""
    dsn = asyncpg_dsn(cluster.postgres.url_of(database))

    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(sql)
            return rows
        finally:
            await connection.close()

    return _in_host(cluster, "client", lambda: asyncio.run(run()))


def _redis(cluster: Cluster, read: Callable[[redis.Redis], _T]) -> _T:
    """`read(client)` with Redis's admin user from the `client` host (INFO and CLIENT are
    @dangerous, which the application's user may not run)."""

    def run() -> _T:
        client = redis.Redis.from_url(cluster.redis.admin_url, socket_timeout=5)
        try:
            return read(client)
        finally:
            client.close()

    return _in_host(cluster, "client", run)


def _process_roots(cluster: Cluster) -> dict[str, tuple[int, ...]]:
    """Each host's process roots (its descendants count with it)."""
    roots = {
        "db": cluster.postgres.process.pid,
        "broker": cluster.redis.process.pid,
        **{host: cluster.processes[host].pid for host in ("edge", *SERVERS, *WORKERS)},
    }
    return {host: (pid,) for host, pid in roots.items() if pid is not None}


def _veth_bytes(cluster: Cluster) -> dict[str, int]:
    """Bytes received plus sent on each host's eth0 so far."""
    totals = {}
    for host in HOSTS:
        shown = subprocess.run(
            ["ip", "-n", cluster.netns(host), "-s", "-j", "link", "show", "eth0"],
            check=True,
            capture_output=True,
            text=True,
        )
        stats = json.loads(shown.stdout)[0]["stats64"]
        totals[host] = int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])
    return totals


_COMMENTS = re.compile(r"--[^\n]*")
_STRING_LITERALS = re.compile(r"'(?:[^']|'')*'")
_WORDS = re.compile(r"[a-z_]+")


def _shape(sql: str) -> str:
    """A statement's words (keywords and names) in order, without its string literals: what
    pg_stat_statements' normalised text (constants as $n) and queries.sql's text share."""
    # Comments go first: an apostrophe in one would otherwise open a "literal".
    text = _STRING_LITERALS.sub(" ", _COMMENTS.sub(" ", sql.lower()))
    return " ".join(_WORDS.findall(text))


_NAMES_BY_SHAPE = {_shape(query.sql): name for name, query in QUERIES.items()}


# Words a recorded statement must share from its start with one of queries.sql to be named
# after it when the two differ further on (pg_stat_statements may rewrite parts of the text,
# such as squashing lists).
_MIN_SHARED_WORDS = 20


def _shared_start(first: list[str], second: list[str]) -> int:
    """How many words the two lists share from their start."""
    count = 0
    for one, other in zip(first, second, strict=False):
        if one != other:
            break
        count += 1
    return count


def _statement_name(sql: str) -> str:
    """The queries.sql name of a statement pg_stat_statements recorded, else its start."""
    shape = _shape(sql)
    if shape in _NAMES_BY_SHAPE:
        return _NAMES_BY_SHAPE[shape]
    words = shape.split()
    shared = {name: _shared_start(words, known.split()) for known, name in _NAMES_BY_SHAPE.items()}
    best = max(shared, key=lambda name: shared[name])
    if shared[best] >= _MIN_SHARED_WORDS:
        return best
    return " ".join(sql.split())[:40]


@dataclass
class Counters:
    """Everything read at one moment that the window's per-job figures are differences of."""

    jobs: int
    statements: dict[str, int]
    commits: int
    rows_written: int
    wal_bytes: int
    veth_bytes: dict[str, int]
    redis_commands: dict[str, int]


def read_counters(cluster: Cluster) -> Counters:
    """The counters now (the service's own statements only: those of its role)."""
    statements: dict[str, int] = {}
    for row in _postgres(
        cluster,
        "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        f"WHERE r.rolname = '{APP_ROLE}'",
    ):
        name = _statement_name(str(row["query"]))
        statements[name] = statements.get(name, 0) + int(row["calls"])
    (database,) = _postgres(
        cluster,
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS written, "
        "pg_current_wal_lsn() - '0/0'::pg_lsn AS wal FROM pg_stat_database "
        "WHERE datname = current_database()",
    )
    (jobs,) = _postgres(cluster, "SELECT count(*) AS n FROM jobs")
    commandstats = _redis(cluster, lambda client: client.info("commandstats"))
    return Counters(
        jobs=int(jobs["n"]),
        statements=statements,
        commits=int(database["xact_commit"]),
        rows_written=int(database["written"]),
        wal_bytes=int(database["wal"]),
        veth_bytes=_veth_bytes(cluster),
        redis_commands={
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in commandstats.items()
        },
    )


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


class ConnectionSampler(threading.Thread):
    """The most connections each server and worker host held to PostgreSQL and to Redis,
    sampled every SAMPLE_INTERVAL_SECONDS until stop()."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name="connection-sampler", daemon=True)
        self._cluster = cluster
        self._stopped = threading.Event()
        self._by_address = {address: host for host, address in cluster.addresses.items()}
        self.postgres: dict[str, int] = {}
        self.redis: dict[str, int] = {}
        self.failures = 0

    def sample(self) -> None:
        """Read both servers' client lists once and keep the maxima."""
        postgres: dict[str, int] = {}
        for row in _postgres(
            self._cluster,
            "SELECT host(client_addr) AS address FROM pg_stat_activity "
            f"WHERE backend_type = 'client backend' AND usename = '{APP_ROLE}'",
        ):
            host = self._by_address.get(str(row["address"]), "other")
            postgres[host] = postgres.get(host, 0) + 1
        redis_clients: dict[str, int] = {}
        for client in _redis(self._cluster, lambda client: client.client_list()):
            if client.get("user") != "jobs_app":
                continue
            host = self._by_address.get(str(client["addr"]).rsplit(":", 1)[0], "other")
            redis_clients[host] = redis_clients.get(host, 0) + 1
        for host, count in postgres.items():
            self.postgres[host] = max(self.postgres.get(host, 0), count)
        for host, count in redis_clients.items():
            self.redis[host] = max(self.redis.get(host, 0), count)

    def run(self) -> None:
        while not self._stopped.wait(SAMPLE_INTERVAL_SECONDS):
            try:
                self.sample()
            except (OSError, asyncpg.PostgresError, redis.RedisError):
                self.failures += 1

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stopped.set()
        self.join()


# --- preparing and loading the cluster ---------------------------------------------------------


def load_pg_stat_statements(cluster: Cluster) -> None:
    """Restart the cluster's PostgreSQL with pg_stat_statements loaded (it needs shared memory
    from the start), servers and workers stopped meanwhile so none of them sees the restart."""
    _postgres(cluster, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    for host in (*SERVERS, *WORKERS):
        cluster.stop(host)
    cluster.postgres.stop()
    cluster.postgres.start()
    _postgres(cluster, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    for host in (*WORKERS, *SERVERS):
        cluster.start(host)


def run_client(cluster: Cluster, *, jobs: int) -> dict[str, list[float]]:
    """The delay-0 batch flow from the `client` host (`python -m tests.hosts.capacity client`)."""
    completed = subprocess.run(
        netns_argv(
            cluster.netns("client"),
            python_module("tests.hosts.capacity", "client", cluster.gateway_target, str(jobs)),
        ),
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            API_KEY_VARIABLE: cluster.api_key,
            DATABASE_URL_VARIABLE: cluster.database_url,
        },
        timeout=600,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the client failed:\n{completed.stderr[-4000:]}")
    samples: dict[str, list[float]] = json.loads(completed.stdout.splitlines()[-1])
    return samples


def client_main(target: str, jobs: int) -> None:
    """On the `client` host: the benchmark's delay-0 batch flow, one measured batch of `jobs`."""
    samples = loadgen.lifecycle(
        loadgen.Lifecycle(
            name="capacity",
            target=target,
            api_key=os.environ[API_KEY_VARIABLE],
            dsn=asyncpg_dsn(os.environ[DATABASE_URL_VARIABLE]),
            in_flight=FULL.batch_in_flight,
            channels=FULL.batch_in_flight,
            jobs=jobs,
            max_outstanding=jobs,
            warmup_seconds=0,
            window_seconds=0,
            repeats=1,
            delay_seconds=0,
            batch_size=FULL.batch_size,
        )
    )
    print(json.dumps(samples))


# --- the measurement ---------------------------------------------------------------------------


@dataclass
class Measurement:
    """Per-job costs over the window, and what the hosts held."""

    jobs: int
    window_seconds: float
    jobs_per_second: float
    batch_jobs_per_second: float
    failed: int
    cpu_ms_per_job: dict[str, float]
    idle_cpu_cores: dict[str, float]
    statements_per_job: float
    statements_per_job_by_name: dict[str, float]
    commits_per_job: float
    rows_written_per_job: float
    wal_bytes_per_job: float
    veth_bytes_per_job: dict[str, float]
    redis_commands_per_job: float
    redis_commands_per_job_by_name: dict[str, float]
    postgres_connections: dict[str, int]
    redis_connections: dict[str, int]
    sampler_failures: int
    settings: dict[str, str] = field(default_factory=dict)


def measure(cluster: Cluster, *, jobs: int) -> Measurement:
    """Warm up, read the idle hosts, then run the delay-0 batch flow and read its window."""
    roots = _process_roots(cluster)
    meter = PartsMeter(tuple(roots.items()))
    # Pools fill, statements are prepared, caches warm: none of it in the window.
    run_client(cluster, jobs=max(1000, jobs // 10))
    meter.start()
    time.sleep(IDLE_SECONDS)
    idle = {host: used / IDLE_SECONDS for host, used in meter.used().items()}
    sampler = ConnectionSampler(cluster)
    sampler.start()
    before = read_counters(cluster)
    meter.start()
    started = time.monotonic()
    samples = run_client(cluster, jobs=jobs)
    window = time.monotonic() - started
    cpu = meter.used()
    after = read_counters(cluster)
    sampler.stop()
    open_jobs = _postgres(
        cluster, "SELECT count(*) AS n FROM jobs WHERE status IN ('PENDING', 'IN_PROGRESS')"
    )
    if int(open_jobs[0]["n"]):
        raise RuntimeError(f"{open_jobs[0]['n']} jobs are not final after the window")
    done = after.jobs - before.jobs
    statements = _delta(after.statements, before.statements)
    commands = _delta(after.redis_commands, before.redis_commands)
    veth = _delta(after.veth_bytes, before.veth_bytes)

    def per_job(count: float) -> float:
        return count / done

    return Measurement(
        jobs=done,
        window_seconds=window,
        jobs_per_second=done / window,
        batch_jobs_per_second=samples["capacity_per_s"][0],
        failed=int(samples["capacity_failed"][0]),
        cpu_ms_per_job={host: used * 1000 / done for host, used in cpu.items()},
        idle_cpu_cores=idle,
        statements_per_job=per_job(sum(statements.values())),
        statements_per_job_by_name={
            name: per_job(count)
            for name, count in sorted(statements.items(), key=lambda item: -item[1])
            if count
        },
        commits_per_job=per_job(after.commits - before.commits),
        rows_written_per_job=per_job(after.rows_written - before.rows_written),
        wal_bytes_per_job=per_job(after.wal_bytes - before.wal_bytes),
        veth_bytes_per_job={host: per_job(count) for host, count in veth.items()},
        redis_commands_per_job=per_job(sum(commands.values())),
        redis_commands_per_job_by_name={
            name: per_job(count)
            for name, count in sorted(commands.items(), key=lambda item: -item[1])
            if count
        },
        postgres_connections=sampler.postgres,
        redis_connections=sampler.redis,
        sampler_failures=sampler.failures,
        settings={
            **SETTINGS.env,
            **{f"server {k}": v for k, v in SETTINGS.server_env.items()},
            **{f"worker {k}": v for k, v in SETTINGS.worker_env.items()},
        },
    )


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """Jobs a second that k server hosts and k worker hosts could carry, and what limits them."""

    hosts_each: int
    servers_per_s: float
    workers_per_s: float
    postgres_per_s: float
    redis_per_s: float

    @property
    def jobs_per_s(self) -> float:
        """The least of the four: the service goes no faster than its slowest part."""
        return min(self.servers_per_s, self.workers_per_s, self.postgres_per_s, self.redis_per_s)

    @property
    def limit(self) -> str:
        """Which part limits."""
        parts = {
            "servers": self.servers_per_s,
            "workers": self.workers_per_s,
            "PostgreSQL": self.postgres_per_s,
            "Redis": self.redis_per_s,
        }
        return min(parts, key=lambda name: parts[name])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def project(
    measured: Measurement, *, cores_per_host: int, postgres_cores: int, hosts_each: int
) -> Projection:
    """The model: each kind of host carries 1000 / (its CPU ms per job) jobs a second per core.

    Server and worker hosts add up (they share nothing but the stores); PostgreSQL counts only
    up to POSTGRES_UTILISATION of its cores; Redis runs commands on one thread, one core.
    """
    server_ms = _mean([measured.cpu_ms_per_job[host] for host in SERVERS]) * len(SERVERS)
    worker_ms = _mean([measured.cpu_ms_per_job[host] for host in WORKERS]) * len(WORKERS)
    return Projection(
        hosts_each=hosts_each,
        servers_per_s=hosts_each * cores_per_host * 1000 / server_ms,
        workers_per_s=hosts_each * cores_per_host * 1000 / worker_ms,
        postgres_per_s=postgres_cores * POSTGRES_UTILISATION * 1000 / measured.cpu_ms_per_job["db"],
        redis_per_s=1000 / measured.cpu_ms_per_job["broker"],
    )


def connection_budget(
    *, servers: int, server_pool: int, worker_processes: int, worker_pool: int
) -> int:
    """PostgreSQL connections N server processes and M worker processes may open: each its
    pool (asyncpg opens up to DB_POOL_SIZE, no overflow) and one LISTEN connection."""
    return servers * (server_pool + 1) + worker_processes * (worker_pool + 1)


# --- the report --------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def section_lines(
    measured: Measurement, references: dict[str, float], *, cores_per_host: int
) -> list[str]:
    """The generated section: the run, the figures, the connections, the projection."""
    cores = os.cpu_count() or 0
    refs = (
        f"R1 (bare grpc.aio echo, 128 in flight) {references['echo_grpc_c128_per_s']:,.0f}/s, "
        f"R2 (bare Celery no-op round trip) {references['celery_noop_roundtrip_per_s']:,.0f}/s "
        "(`python -m benchmarks --quick --only references`, just before)"
        if references
        else "references not run (`--references` runs them)"
    )
    lines = [
        "## Measured on the cluster of hosts",
        "",
        "Written by `python -m tests.hosts.capacity` (`make scaling`, as root) each time it runs.",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {current_commit()}, "
        f"{platform.machine()} with {cores} cores shared by every host; {refs}.",
        f"Flow: {measured.jobs:,} jobs (a warm-up batch of a twentieth, then the rest) with "
        f"BatchSubmitJobs through `edge`, {FULL.batch_size:,} a call, {FULL.batch_in_flight} "
        "calls in flight, SIMULATED_DELAY_SECONDS=0, one server process per server host, one "
        "worker process per worker host, DB_POOL_SIZE=10; the window runs from before the "
        f"first call until every job is final: {measured.window_seconds:.1f} s, "
        f"{measured.jobs_per_second:,.0f} jobs/s over the window ({measured.batch_jobs_per_second:,.0f}"
        f"/s for the measured batch alone), {measured.failed} not SUCCESS.",
        "",
        "| host | CPU ms per job | idle CPU (cores) | bytes per job on its veth |",
        "|---|---|---|---|",
    ]
    for host in ("edge", *SERVERS, *WORKERS, "db", "broker"):
        lines.append(
            f"| {host} | {_fmt(measured.cpu_ms_per_job[host])} | "
            f"{measured.idle_cpu_cores[host]:.3f} | {_fmt(measured.veth_bytes_per_job[host])} |"
        )
    total = sum(measured.cpu_ms_per_job.values())
    lines += [
        f"| all | {_fmt(total)} | {sum(measured.idle_cpu_cores.values()):.3f} | |",
        "",
        f"PostgreSQL, per job: {measured.statements_per_job:.2f} statements "
        f"(pg_stat_statements, the `{APP_ROLE}` role's), {measured.commits_per_job:.2f} commits "
        f"and {measured.rows_written_per_job:.1f} rows written (pg_stat_database), "
        f"{_fmt(measured.wal_bytes_per_job)} WAL bytes (pg_current_wal_lsn). By statement: "
        + ", ".join(
            f"`{name}` {count:.3f}"
            for name, count in measured.statements_per_job_by_name.items()
            if count >= 0.001
        )
        + ".",
        "",
        f"Redis, per job: {measured.redis_commands_per_job:.2f} commands (INFO commandstats): "
        + ", ".join(
            f"{name} {count:.3f}"
            for name, count in measured.redis_commands_per_job_by_name.items()
            if count >= 0.001
        )
        + ".",
        "",
        "Connections held at most (sampled every second; one process per host). PostgreSQL's",
        "count is the pool's connections in use plus the event hub's LISTEN connection (which",
        "pg_stat_activity cannot tell apart: its last statement may be its `SELECT 1` probe):",
        "",
        "| host | PostgreSQL | Redis |",
        "|---|---|---|",
    ]
    for host in (*SERVERS, *WORKERS):
        lines.append(
            f"| {host} | {measured.postgres_connections.get(host, 0)} | "
            f"{measured.redis_connections.get(host, 0)} |"
        )
    lines += [
        "",
        f"Projection (the model below): hosts of {cores_per_host} cores; PostgreSQL counted up to "
        f"{POSTGRES_UTILISATION:.0%} of its cores, Redis on one core.",
        "",
        "| server hosts + worker hosts | servers (jobs/s) | workers (jobs/s) | "
        "PostgreSQL 4 cores | PostgreSQL 16 cores | Redis | projected (16-core PostgreSQL) |",
        "|---|---|---|---|---|---|---|",
    ]
    for hosts_each in (1, 2, 4, 8, 16, 32):
        small = project(
            measured, cores_per_host=cores_per_host, postgres_cores=4, hosts_each=hosts_each
        )
        big = project(
            measured, cores_per_host=cores_per_host, postgres_cores=16, hosts_each=hosts_each
        )
        lines.append(
            f"| {hosts_each} + {hosts_each} | {_fmt(big.servers_per_s)} | "
            f"{_fmt(big.workers_per_s)} | {_fmt(small.postgres_per_s)} | "
            f"{_fmt(big.postgres_per_s)} | {_fmt(big.redis_per_s)} | "
            f"{_fmt(big.jobs_per_s)} ({big.limit}) |"
        )
    lines += [
        "",
        "These figures share 2 cores between every host and the load generator, and other",
        "work on the machine: compare them only through the references of the same run.",
    ]
    return lines


def write_section(report: Path, section: ReportSection, lines: list[str]) -> None:
    """Replace the text between the section's markers (the cluster suite's rule: only that
    text changes; a report without the markers gets the section at its end)."""
    text = report.read_text() if report.exists() else "# Scaling\n\n"
    block = f"{section.start}\n" + "\n".join(lines) + f"\n{section.end}"
    if section.start in text and section.end in text:
        before, rest = text.split(section.start, 1)
        text = before + block + rest.split(section.end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    report.write_text(text)


def run_references() -> dict[str, float]:
    """R1 and R2 of this machine, now (the benchmark's references phase, quick sizes)."""
    with tempfile.TemporaryDirectory(prefix="jobs-capacity-refs-") as scratch:
        output = Path(scratch) / "references.json"
        subprocess.run(
            python_module("benchmarks", "--quick", "--only", "references", f"--output={output}"),
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        figures = json.loads(output.read_text())
    return {
        name: float(figures[name])
        for name in ("echo_grpc_c128_per_s", "celery_noop_roundtrip_per_s")
        if name in figures
    }


def main() -> int:
    """Measure (or, as `client`, load from the client host); print JSON, write the report."""
    parser = argparse.ArgumentParser(prog="python -m tests.hosts.capacity", description=__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="jobs in the window")
    parser.add_argument("--references", action="store_true", help="run R1 and R2 first")
    parser.add_argument(
        "--cores-per-host", type=int, default=2, help="cores of a server or worker host (model)"
    )
    parser.add_argument("--no-report", action="store_true", help=f"do not rewrite {REPORT.name}")
    parser.add_argument("client", nargs="*", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.client:
        # Internal: run_client starts `client TARGET JOBS` on the client host.
        _, target, jobs = arguments.client
        client_main(target, int(jobs))
        return 0
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot build the cluster of hosts: {reason}", file=sys.stderr)
        return 2
    references = run_references() if arguments.references else {}
    with stack_data_dir("capacity") as data_dir, cluster_of_hosts(data_dir, SETTINGS) as cluster:
        load_pg_stat_statements(cluster)
        measured = measure(cluster, jobs=arguments.jobs)
    summary = {"references": references, **asdict(measured)}
    summary["projection"] = [
        asdict(
            project(
                measured,
                cores_per_host=arguments.cores_per_host,
                postgres_cores=cores,
                hosts_each=k,
            )
        )
        | {"postgres_cores": cores}
        for cores in (4, 16)
        for k in (1, 2, 4, 8, 16, 32)
    ]
    print(json.dumps(summary, indent=2))
    if not arguments.no_report:
        write_section(
            REPORT,
            SECTION,
            section_lines(measured, references, cores_per_host=arguments.cores_per_host),
        )
        print(f"written: {REPORT}", file=sys.stderr)
    return 0 if not math.isnan(measured.jobs_per_second) else 1


if __name__ == "__main__":
    sys.exit(main())
