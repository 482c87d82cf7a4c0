"""The phases of a run, in order: references, the gRPC edge, events flowing, zero-delay jobs, and
the stack `make run` starts with no settings (the CLI, then the idle stack).

Every phase states the environment its stack runs with; all figures come back as
{name: samples} from load generators running in their own pinned processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from benchmarks import celery_ref, fill, loadgen
from benchmarks.cpu import Parts, PartsMeter
from benchmarks.infra import Infrastructure, wait_for_port
from benchmarks.machine import CpuPlan
from benchmarks.pinned import Samples, SpecT, run_pinned
from benchmarks.sizes import Sizes
from devstack.processes import ManagedProcess, child_env, free_port, python_module
from devstack.stack import MALLOC_ENV, ROOT, Stack, default_worker_processes
from jobcore.database import asyncpg_dsn
from jobcore.settings import Settings

logger = logging.getLogger(__name__)

PHASES = ("references", "edge", "edge-noauth", "flow", "delay0", "defaults")
# As `make run` starts them: one per CPU.
WORKER_PROCESSES = default_worker_processes()
MIB = 1024 * 1024

# What every stack runs with: the documented defaults, written out so a run is reproducible.
BASE_ENV = {
    "ENVIRONMENT": "development",
    "LOG_LEVEL": "INFO",
    "DB_POOL_SIZE": "10",
    "JOB_LEASE_SECONDS": "30",
    "MAINTENANCE_INTERVAL_SECONDS": "5",
    "REDISPATCH_AFTER_SECONDS": "60",
    "HEALTH_CHECK_INTERVAL_SECONDS": "2",
    "WATCH_HEARTBEAT_SECONDS": "15",
    "MAX_JOB_NUMBERS": "100000",
    "GRPC_MAX_MESSAGE_BYTES": str(16 * MIB),
    "SIMULATED_DELAY_SECONDS": "2",
    # WORKER_CONCURRENCY is left to its default, sized from the delay (the report shows it).
    "SERVER_PROCESSES": "1",
    # Every call presents the stack's development key, and counts against its rate.
    "AUTH_MODE": "required",
    "RATE_LIMIT_PER_CREDENTIAL": "10000/second",
    # devstack gives every process these anyway; listed so the report shows them.
    **MALLOC_ENV,
}
PHASE_ENVS: dict[str, dict[str, str]] = {
    # No workers: SubmitJob and GetStatus alone, as if the workers ran on other machines.
    # The sweep would re-publish the unconsumed backlog after a minute; push that out.
    # One server process, as in the other phases: on these 2 cores, shared with the load
    # generator (and Envoy for REST), two processes measured 1.0-1.3 x its gRPC throughput
    # but 0.6-0.7 x its REST throughput, and the kernel spread the client's connections
    # unevenly between them (p99 about 2 x p50 instead of 1.3 x).
    # Without workers every submitted job stays unfinished: lift the tenant's limit on them.
    "edge": BASE_ENV
    | {"REDISPATCH_AFTER_SECONDS": "3600", "MAX_UNFINISHED_JOBS_PER_TENANT": "100000000"},
    # The same edge without authentication: what checking keys and counting rates costs.
    "edge-noauth": BASE_ENV
    | {
        "REDISPATCH_AFTER_SECONDS": "3600",
        "MAX_UNFINISHED_JOBS_PER_TENANT": "100000000",
        "AUTH_MODE": "none",
        "RATE_LIMIT_PER_CREDENTIAL": "",
    },
    # The streams and their memory are measured on one server process.
    "flow": dict(BASE_ENV),
    "delay0": BASE_ENV
    | {
        "SIMULATED_DELAY_SECONDS": "0",
        "MAX_JOB_NUMBERS": "1000000",
        "GRPC_MAX_MESSAGE_BYTES": str(64 * MIB),
    },
}
PHASE_WORKERS = {"edge": 0, "edge-noauth": 0, "flow": WORKER_PROCESSES, "delay0": WORKER_PROCESSES}
# `make run` with no settings: the environment devstack gives its stack, nothing more.
DEFAULTS_ENV = {"ENVIRONMENT": "development"}
_SAMPLED_IDS = 1000
# The shape of a real API key, for R1's client to send (the echo server reads no metadata).
ECHO_API_KEY = "jobs_00000000_" + "0" * 43


@dataclass
class Run:
    """One benchmark run: what it measures with, and the figures gathered so far."""

    sizes: Sizes
    plan: CpuPlan
    infra: Infrastructure
    profile_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)
    samples: Samples = field(default_factory=dict)

    def say(self, message: str) -> None:
        """Progress on stderr, so a 10-minute run shows where it is."""
        print(f"[{time.monotonic() - self.started:5.0f} s] {message}", file=sys.stderr, flush=True)

    def load(
        self,
        function: Callable[[SpecT], Samples],
        spec: SpecT,
        *,
        timeout_seconds: float,
        profile: dict[str, int | None] | None = None,
    ) -> None:
        """Run one load generator (profiling the service's processes if asked) and keep its samples."""
        # Named by the measurement too: one load generator serves several measurements.
        label = "-".join(filter(None, [function.__name__, getattr(spec, "name", "")]))
        with self._profiled(label, profile or {}):
            self.samples |= run_pinned(
                function, spec, cpus=self.plan.load_generator, timeout_seconds=timeout_seconds
            )

    @contextlib.contextmanager
    def _profiled(self, label: str, pids: dict[str, int | None]) -> Iterator[None]:
        """py-spy record on each process while the block runs (only with --profile)."""
        if self.profile_dir is None or not pids:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        py_spy = str(Path(sys.executable).parent / "py-spy")
        recorders = [
            subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self.profile_dir / f"{label}-{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
            if pid is not None
        ]
        try:
            yield
        finally:
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for recorder in recorders:
                recorder.wait(60)


def worker_slots(env: dict[str, str]) -> int:
    """WORKER_CONCURRENCY as a worker with `env` resolves it (set, or sized from the delay)."""
    delay = float(env.get("SIMULATED_DELAY_SECONDS", "2"))
    concurrency = int(env.get("WORKER_CONCURRENCY") or 0) or None
    return Settings(simulated_delay_seconds=delay, worker_concurrency=concurrency).worker_slots


def phase_stacks() -> dict[str, tuple[dict[str, str], str]]:
    """Each phase's stack: its environment, and what it runs (for BENCHMARKS.md)."""
    stacks = {
        phase: (env, f"{PHASE_WORKERS[phase]} worker processes of {worker_slots(env)} slots")
        for phase, env in PHASE_ENVS.items()
    }
    stacks["defaults"] = (
        DEFAULTS_ENV,
        f"`make run`'s stack: its own PostgreSQL and Redis, Flower, {WORKER_PROCESSES} worker "
        f"processes of {worker_slots({})} slots",
    )
    return stacks


def stack_parts(run: Run, stack: Stack) -> Parts:
    """Every process of a stack by part (roots: their children count with them): server,
    workers, Envoy, Flower if it runs, PostgreSQL and Redis (the run's shared ones, or its own)."""

    def pids(*processes: ManagedProcess | None) -> tuple[int, ...]:
        return tuple(process.pid for process in processes if process and process.pid is not None)

    infra = run.infra
    postgres = stack.postgres.process if stack.postgres else infra.postgres.process
    redis = stack.redis.process if stack.redis else infra.redis.process
    parts: Parts = (
        ("server", pids(stack.server)),
        ("workers", pids(*stack.workers)),
        ("envoy", pids(stack.envoy)),
        ("postgres", pids(postgres)),
        ("redis", pids(redis)),
    )
    return (*parts, ("flower", pids(stack.flower))) if stack.config.flower else parts


def service_pids(stack: Stack) -> dict[str, int | None]:
    """The Python processes of a stack, by name: what --profile records and big_job measures.

    With SERVER_PROCESSES > 1 the servers are the children of a supervisor, which is idle.
    """
    servers: dict[str, int | None] = {"server": stack.server.pid}
    if stack.server.pid is not None:
        children = psutil.Process(stack.server.pid).children()
        if children:
            servers = {f"server{index + 1}": child.pid for index, child in enumerate(children)}
    return servers | {worker.name: worker.pid for worker in stack.workers}


def _throughput(
    run: Run,
    name: str,
    target: str,
    *,
    api_key: str,
    protocol: Literal["grpc", "rest"] = "grpc",
) -> loadgen.Throughput:
    sizes = run.sizes
    return loadgen.Throughput(
        name=name,
        target=target,
        api_key=api_key,
        protocol=protocol,
        in_flight=sizes.in_flight,
        channels=sizes.channels,
        warmup_seconds=sizes.warmup_seconds,
        window_seconds=sizes.window_seconds,
        repeats=sizes.repeats,
    )


def _throughput_timeout(sizes: Sizes) -> float:
    return 60 + 2 * (sizes.warmup_seconds + sizes.repeats * sizes.window_seconds)


@contextlib.contextmanager
def _echo_server(run: Run, name: str) -> Iterator[str]:
    """R1's bare grpc.aio echo server, running while in the block (its log is `name`.log): its
    target."""
    port = free_port()
    with run.infra.process(name, python_module("benchmarks.echo_server", str(port))) as echo:
        wait_for_port(echo, port)
        yield f"127.0.0.1:{port}"


def references(run: Run) -> None:
    """R1 (bare grpc.aio echo), R2 (Celery no-op round trip) and R3 (the seed's 2 s prefork task)."""
    sizes = run.sizes
    run.say("R1: bare grpc.aio echo server, same client")
    with _echo_server(run, "echo-server") as echo_target:
        run.load(
            loadgen.submit,
            # The echo server ignores the key; the client sends one so that it does the same
            # work per call as against the service.
            _throughput(run, "echo_grpc_c128", echo_target, api_key=ECHO_API_KEY),
            timeout_seconds=_throughput_timeout(sizes),
        )
    url = run.infra.new_redis_url()
    worker = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_ref", "worker"]
    with run.infra.process(
        "celery-reference",
        [*worker, "--loglevel=WARNING"],
        env=child_env({celery_ref.URL_VARIABLE: url}),
    ) as celery_worker:
        run.say("R2: bare Celery no-op round trips, default prefork pool")
        assert celery_worker.pid is not None
        redis_pid = run.infra.redis.process.pid
        run.load(
            loadgen.celery_round_trips,
            loadgen.CeleryRoundTrips(
                name="celery_noop_roundtrip_per_s",
                url=url,
                task=celery_ref.NOOP_TASK,
                args=(),
                tasks=sizes.celery_noop_tasks,
                warmup_tasks=200,
                repeats=sizes.repeats,
                timeout_seconds=120,
                # The worker (with its prefork children) and the broker, as the service's CPU
                # per job counts its own processes and not the client's.
                cpu_parts=(
                    ("worker", (celery_worker.pid,)),
                    ("redis", (redis_pid,) if redis_pid else ()),
                ),
                cpu_name="celery_noop_cpu_ms_per_task",
            ),
            timeout_seconds=180 + sizes.repeats * sizes.celery_noop_tasks / 50,
        )
        # Celery's default prefork pool has one process per CPU.
        slots = os.cpu_count() or 1
        run.say(f"R3: the seed's model, a 2 s task on {slots} prefork processes")
        run.load(
            loadgen.celery_round_trips,
            loadgen.CeleryRoundTrips(
                name="seed_model_delay2_per_s",
                url=url,
                task=celery_ref.SLEEP_TASK,
                args=(2.0,),
                tasks=slots * sizes.seed_model_rounds,
                warmup_tasks=slots,
                repeats=sizes.repeats,
                timeout_seconds=120,
            ),
            timeout_seconds=120 + 2.5 * sizes.repeats * (sizes.seed_model_rounds + 1) * 2,
        )


def edge(run: Run) -> None:
    """SubmitJob over gRPC and REST, and GetStatus on a small and a large table; no workers."""
    sizes = run.sizes
    with run.infra.stack("edge", env=PHASE_ENVS["edge"], workers=0) as stack:
        run.say(f"edge: GetStatus with {sizes.getstatus_small_rows:,} stored jobs")
        _get_status(run, stack, rows=sizes.getstatus_small_rows, suffix="10k")
        # The three in turns with R1's echo server, window by window, so that the host's drift
        # between phases does not enter their ratios to each other and to R1.
        run.say(
            "edge: SubmitJob over gRPC, REST through Envoy and gRPC through Envoy, "
            "and R1's echo server, 128 in flight, in alternate windows"
        )
        with _echo_server(run, "echo-server-in-turns") as echo_target:
            run.load(
                loadgen.submit_alternating,
                loadgen.Alternating(
                    loads=(
                        _throughput(
                            run, "echo_grpc_in_turns_c128", echo_target, api_key=ECHO_API_KEY
                        ),
                        _throughput(
                            run, "submit_grpc_c128", stack.grpc_target, api_key=stack.api_key
                        ),
                        _throughput(
                            run,
                            "submit_rest_c128",
                            stack.gateway_target,
                            api_key=stack.api_key,
                            protocol="rest",
                        ),
                        _throughput(
                            run,
                            "submit_grpc_envoy_c128",
                            stack.gateway_target,
                            api_key=stack.api_key,
                        ),
                    )
                ),
                timeout_seconds=4 * _throughput_timeout(sizes),
                profile=service_pids(stack),
            )
        run.say(
            f"edge: BatchSubmitJobs, {sizes.batch_size:,} jobs a call, "
            f"{sizes.batch_in_flight} calls in flight"
        )
        run.load(
            loadgen.submit_batches,
            loadgen.BatchThroughput(
                name="batch_submit",
                target=stack.grpc_target,
                api_key=stack.api_key,
                batch_size=sizes.batch_size,
                in_flight=sizes.batch_in_flight,
                warmup_seconds=sizes.warmup_seconds,
                window_seconds=sizes.window_seconds,
                repeats=sizes.repeats,
            ),
            timeout_seconds=_throughput_timeout(sizes),
            profile=service_pids(stack),
        )
        run.say(f"edge: GetStatus with {sizes.getstatus_large_rows:,} stored jobs")
        _get_status(run, stack, rows=sizes.getstatus_large_rows, suffix="1m")


def edge_without_authentication(run: Run) -> None:
    """SubmitJob over gRPC as in `edge`, on a stack with AUTH_MODE=none and no rate limit, and
    in alternate windows on a stack like `edge`'s: the ratio of the two is what authentication
    costs, with the host's drift between phases taken out."""
    sizes = run.sizes
    with (
        run.infra.stack("edge-noauth", env=PHASE_ENVS["edge-noauth"], workers=0) as without,
        run.infra.stack("edge-auth", env=PHASE_ENVS["edge"], workers=0) as with_auth,
    ):
        # As many stored jobs as `edge` has when it measures SubmitJob, so that only
        # authentication differs.
        for stack in (without, with_auth):
            asyncio.run(
                fill.fill_finished_jobs(
                    stack.migration_database_url, until_total=sizes.getstatus_small_rows
                )
            )
        run.say(
            "edge-noauth: SubmitJob over gRPC with and without authentication, "
            "128 in flight, in alternate windows"
        )
        run.load(
            loadgen.submit_alternating,
            loadgen.Alternating(
                loads=(
                    _throughput(
                        run,
                        "submit_grpc_auth_alternating_c128",
                        with_auth.grpc_target,
                        api_key=with_auth.api_key,
                    ),
                    # The same client, key included (the server reads none).
                    _throughput(
                        run, "submit_grpc_noauth_c128", without.grpc_target, api_key=ECHO_API_KEY
                    ),
                )
            ),
            timeout_seconds=2 * _throughput_timeout(sizes),
            profile={
                **{f"noauth-{name}": pid for name, pid in service_pids(without).items()},
                **{f"auth-{name}": pid for name, pid in service_pids(with_auth).items()},
            },
        )


def _get_status(run: Run, stack: Stack, *, rows: int, suffix: str) -> None:
    started = time.monotonic()
    # Bulk fills skip triggers (session_replication_role), which only the schema's owner may.
    added = asyncio.run(fill.fill_finished_jobs(stack.migration_database_url, until_total=rows))
    run.say(f"  filled {added:,} jobs in {time.monotonic() - started:.1f} s")
    job_ids = asyncio.run(fill.sample_job_ids(stack.database_url, count=_SAMPLED_IDS))
    run.load(
        loadgen.get_status_latency,
        loadgen.Lookups(
            suffix=suffix,
            target=stack.grpc_target,
            api_key=stack.api_key,
            job_ids=tuple(job_ids),
            calls=run.sizes.getstatus_calls,
            repeats=run.sizes.repeats,
        ),
        timeout_seconds=300,
    )


def flow(run: Run) -> None:
    """Open WatchJob streams (memory), events flowing to them (latency), sustained 2 s jobs."""
    sizes = run.sizes
    delay = float(PHASE_ENVS["flow"]["SIMULATED_DELAY_SECONDS"])
    with run.infra.stack("flow", env=PHASE_ENVS["flow"], workers=WORKER_PROCESSES) as stack:
        idle_ids = asyncio.run(
            fill.insert_running_jobs(stack.migration_database_url, count=sizes.watch_streams)
        )
        run.say(
            f"flow: {sizes.watch_streams:,} WatchJob streams, then "
            f"{sizes.watch_events_per_second:g} events/s flowing to {sizes.watch_event_watchers:,}"
        )
        assert stack.server.pid is not None
        run.load(
            loadgen.watch,
            loadgen.WatchLoad(
                target=stack.grpc_target,
                api_key=stack.api_key,
                dsn=asyncpg_dsn(stack.database_url),
                server_pid=stack.server.pid,
                idle_job_ids=tuple(idle_ids),
                watchers=sizes.watch_event_watchers,
                channels=max(sizes.channels, sizes.watch_streams // 500),
                in_flight=sizes.in_flight,
                events_per_second=sizes.watch_events_per_second,
                warmup_seconds=sizes.warmup_seconds,
                window_seconds=sizes.window_seconds,
                repeats=sizes.repeats,
                delay_seconds=delay,
            ),
            timeout_seconds=600,
            profile=service_pids(stack),
        )
        run.say("flow: submit→SUCCESS with the 2 s delay, sustained")
        concurrency = worker_slots(PHASE_ENVS["flow"])
        run.load(
            loadgen.lifecycle,
            loadgen.Lifecycle(
                name="lifecycle_delay2",
                target=stack.grpc_target,
                api_key=stack.api_key,
                dsn=asyncpg_dsn(stack.database_url),
                in_flight=sizes.in_flight,
                channels=sizes.channels,
                jobs=0,
                # Twice what the workers hold, so their queue never runs dry.
                max_outstanding=2 * WORKER_PROCESSES * concurrency,
                warmup_seconds=sizes.warmup_seconds,
                window_seconds=sizes.window_seconds,
                repeats=sizes.repeats,
                delay_seconds=delay,
            ),
            timeout_seconds=_throughput_timeout(sizes) + 4 * delay,
            profile=service_pids(stack),
        )


def delay0(run: Run) -> None:
    """Submit→SUCCESS with no delay (a batch of jobs), and one very large job."""
    sizes = run.sizes
    env = PHASE_ENVS["delay0"]
    with run.infra.stack("delay0", env=env, workers=WORKER_PROCESSES) as stack:
        run.say(f"delay0: {sizes.lifecycle_delay0_jobs:,} jobs submit→SUCCESS, delay 0")
        run.load(
            loadgen.lifecycle,
            loadgen.Lifecycle(
                name="lifecycle_delay0",
                target=stack.grpc_target,
                api_key=stack.api_key,
                dsn=asyncpg_dsn(stack.database_url),
                in_flight=sizes.in_flight,
                channels=sizes.channels,
                jobs=sizes.lifecycle_delay0_jobs,
                max_outstanding=sizes.lifecycle_delay0_jobs,
                warmup_seconds=0,
                window_seconds=0,
                repeats=sizes.lifecycle_delay0_repeats,
                delay_seconds=0,
                cpu_parts=stack_parts(run, stack),
            ),
            timeout_seconds=120
            + (sizes.lifecycle_delay0_repeats + 1) * (60 + sizes.lifecycle_delay0_jobs / 20),
            profile=service_pids(stack),
        )
        jobs = sizes.lifecycle_delay0_batch_jobs
        run.say(
            f"delay0: {jobs:,} jobs submit→SUCCESS, delay 0, submitted {sizes.batch_size:,} a "
            f"call with BatchSubmitJobs ({sizes.batch_in_flight} calls in flight)"
        )
        run.load(
            loadgen.lifecycle,
            loadgen.Lifecycle(
                name="lifecycle_delay0_batch",
                target=stack.grpc_target,
                api_key=stack.api_key,
                dsn=asyncpg_dsn(stack.database_url),
                in_flight=sizes.batch_in_flight,
                channels=sizes.batch_in_flight,
                jobs=jobs,
                max_outstanding=jobs,
                warmup_seconds=0,
                window_seconds=0,
                repeats=sizes.repeats,
                delay_seconds=0,
                batch_size=sizes.batch_size,
                cpu_parts=stack_parts(run, stack),
            ),
            timeout_seconds=120 + (sizes.repeats + 1) * (60 + jobs / 20),
            profile=service_pids(stack),
        )
        # The issue's name for the stack's CPU per job in the zero-delay flow (and its parts').
        for name in [name for name in run.samples if name.startswith("lifecycle_delay0_batch_cpu")]:
            run.samples[name.replace("lifecycle_delay0_batch_", "")] = run.samples.pop(name)
        run.say(f"delay0: one job of {sizes.bigjob_numbers:,} numbers at a time")
        processes = tuple(
            (name, pid) for name, pid in service_pids(stack).items() if pid is not None
        )
        run.load(
            loadgen.big_job,
            loadgen.BigJob(
                name="bigjob_1m",
                target=stack.grpc_target,
                api_key=stack.api_key,
                dsn=asyncpg_dsn(stack.database_url),
                numbers=sizes.bigjob_numbers,
                repeats=sizes.repeats,
                processes=processes,
                max_message_bytes=int(env["GRPC_MAX_MESSAGE_BYTES"]),
            ),
            timeout_seconds=120 + (sizes.repeats + 1) * 120,
            profile=service_pids(stack),
        )


def defaults(run: Run) -> None:
    """`make run` with no settings: `jobs submit --count N --watch` timed, then the idle stack."""
    sizes = run.sizes
    with run.infra.own_stack("defaults", workers=WORKER_PROCESSES) as stack:
        run.say(
            f"defaults: `jobs submit --count {sizes.cli_jobs} --watch cube_sum 1 2 3` on a "
            f"make run stack ({WORKER_PROCESSES} worker processes of {worker_slots({})} slots)"
        )
        for attempt in range(sizes.cli_repeats):
            seconds = _cli_submit_and_watch(run, stack, jobs=sizes.cli_jobs, attempt=attempt)
            run.samples.setdefault(f"cli_{sizes.cli_jobs}_watch_seconds", []).append(seconds)
            run.say(f"  {seconds:.2f} s")
        run.say(
            f"defaults: the idle stack's CPU over {sizes.idle_window_seconds:g} s, "
            f"{sizes.idle_wait_seconds:g} s after its last job"
        )
        time.sleep(sizes.idle_wait_seconds)
        _idle_cpu(run, stack, window_seconds=sizes.idle_window_seconds)


def _cli_submit_and_watch(run: Run, stack: Stack, *, jobs: int, attempt: int) -> float:
    """Wall time of the CLI command, as a user runs it (interpreter start-up included)."""
    command = [
        sys.executable,
        "-m",
        "cli",
        "--target",
        stack.grpc_target,
        "submit",
        "--count",
        str(jobs),
        "--watch",
        "cube_sum",
        "1",
        "2",
        "3",
    ]
    if run.profile_dir is not None:
        # The CLI's own time, profiled as the service's processes are.
        run.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = run.profile_dir / f"cli-{attempt}.txt"
        py_spy = str(Path(sys.executable).parent / "py-spy")
        recorder = [py_spy, "record", "--rate", "100", "--format", "raw", "-o", str(profile)]
        command = [*recorder, "--", *command]
    log = run.infra.log_dir / f"cli-{attempt}.log"
    started = time.perf_counter()
    with log.open("wb") as output_file:
        completed = subprocess.run(
            command,
            env=child_env({"JOBS_API_KEY": stack.api_key}),
            cwd=ROOT,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the CLI exited with status {completed.returncode}:\n{tail}")
    return seconds


def _idle_cpu(run: Run, stack: Stack, *, window_seconds: float) -> None:
    """CPU cores the whole stack uses while idle, and each of its parts."""
    meter = PartsMeter(stack_parts(run, stack))
    meter.start()
    time.sleep(window_seconds)
    used = {name: seconds / window_seconds for name, seconds in meter.used().items()}
    run.samples["idle_cpu_cores"] = [sum(used.values())]
    for name, cores in used.items():
        run.samples[f"idle_cpu_cores_{name}"] = [cores]


PHASE_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "references": references,
    "edge": edge,
    "edge-noauth": edge_without_authentication,
    "flow": flow,
    "delay0": delay0,
    "defaults": defaults,
}
