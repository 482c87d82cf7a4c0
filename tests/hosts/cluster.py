"""A cluster of hosts on this one machine: Linux network namespaces on a private bridge.

Each host (`db`, `broker`, `edge`, `server-a`, `server-b`, `worker-a`, `worker-b`, `client`) is a
network namespace with one address on a bridge that lives in a namespace of its own (the
`switch`), so nothing of the cluster touches the machine's own network. Each host runs the
project's real processes with the entry points and environment of docker-compose.yml, started
through devstack's ManagedProcess inside its namespace.

Faults are what a real network does: `partition` drops (never rejects) every packet between two
hosts with nft rules inside both namespaces, `power_off` SIGKILLs every process of a host at
once. Everything is named `jobs-hosts-<pid>-<random>-...`: `close()` deletes the namespaces
(which takes their links and nft tables with them) after killing what runs in them, and a new
cluster first removes those of runs whose process is gone (interrupted outright).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets as token_secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack import secrets
from devstack.processes import (
    NETNS_DIR,
    ManagedProcess,
    child_env,
    in_netns,
    netns_argv,
    python_module,
    wait_for,
)
from devstack.secrets import SecretStore
from devstack.services import EmbeddedPostgres, EmbeddedRedis
from devstack.stack import DESCRIPTOR, MALLOC_ENV, ROOT
from jobcore.identity import ALL_SCOPES, DEFAULT_TENANT

PREFIX = "jobs-hosts-"
HOSTS = ("db", "broker", "edge", "server-a", "server-b", "worker-a", "worker-b", "client")
SERVERS = ("server-a", "server-b")
WORKERS = ("worker-a", "worker-b")
GRPC_PORT = 50051
GATEWAY_PORT = 8000
ENVOY_ADMIN_PORT = 9901
POSTGRES_PORT = 5432
REDIS_PORT = 6379


def unavailable_reason() -> str | None:
    """Why this machine cannot build the cluster, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian package {package}; .ci/run installs it)"
    probe = f"{PREFIX}probe-{os.getpid()}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], check=False, capture_output=True, text=True
    )
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    return None


def _run(*argv: str) -> str:
    completed = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {completed.stderr.strip()}")
    return completed.stdout


def _owner_alive(name: str) -> bool:
    """Whether the process that made the namespace `name` (its pid is in the name) still runs."""
    pid = name.removeprefix(PREFIX).split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_everything_in(netns: str) -> None:
    """SIGKILL every process in the namespace at once (a host losing power)."""
    for pid in _run("ip", "netns", "pids", netns).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale_namespaces() -> None:
    """Delete the namespaces (and kill the processes) of clusters whose test run is gone."""
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            with contextlib.suppress(RuntimeError):
                _kill_everything_in(name)
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass(frozen=True)
class ClusterSettings:
    """The service's settings on every host (short ones, for tests)."""

    env: Mapping[str, str]
    server_env: Mapping[str, str]
    worker_env: Mapping[str, str]


class Cluster:
    """The hosts, their addresses and processes, and the faults a network can have."""

    def __init__(self, data_dir: Path, settings: ClusterSettings) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.settings = settings
        self.tag = f"{PREFIX}{os.getpid()}-{token_secrets.token_hex(3)}"
        # 10.77.X.0/24: every address lives inside the cluster's own namespaces, so even a
        # subnet the machine uses elsewhere would not collide; random all the same.
        self.subnet_prefix = f"10.77.{random.randint(1, 254)}"
        self.addresses = {
            host: f"{self.subnet_prefix}.{10 + index}" for index, host in enumerate(HOSTS)
        }
        self.secrets = SecretStore(data_dir / "secrets")
        self.postgres = EmbeddedPostgres(
            data_dir / "postgres",
            port=POSTGRES_PORT,
            log_dir=self.log_dir,
            secret_store=self.secrets,
            host=self.addresses["db"],
            netns=self.netns("db"),
            client_network=f"{self.subnet_prefix}.0/24",
        )
        self.redis = EmbeddedRedis(
            data_dir / "redis",
            port=REDIS_PORT,
            log_dir=self.log_dir,
            secret_store=self.secrets,
            host=self.addresses["broker"],
            netns=self.netns("broker"),
        )
        self.api_key = ""
        self.processes: dict[str, ManagedProcess] = {}
        self._partitions: set[tuple[str, str]] = set()
        self._made: list[str] = []
        self._closed = False

    # --- names and addresses ------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """The network namespace of `host`."""
        return f"{self.tag}-{host}"

    @property
    def database_url(self) -> str:
        """The application role's URL of the job database (reachable from the hosts only)."""
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        """The application user's Redis URL (reachable from the hosts only)."""
        return self.redis.url

    @property
    def gateway_target(self) -> str:
        """Where clients reach Envoy (gRPC) from the `client` host."""
        return f"{self.addresses['edge']}:{GATEWAY_PORT}"

    # --- building and removing ----------------------------------------------------------------

    def build(self) -> None:
        """Make the namespaces and the bridge, then start every host's processes."""
        atexit.register(self.close)
        remove_stale_namespaces()
        switch = self.netns("switch")
        for name in (switch, *(self.netns(host) for host in HOSTS)):
            _run("ip", "netns", "add", name)
            self._made.append(name)
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for index, host in enumerate(HOSTS):
            netns, port = self.netns(host), f"port{index}"
            _run(
                "ip",
                "-n",
                switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                netns,
            )
            _run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", netns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")
        self._start_services()

    def close(self) -> None:
        """Stop every process, then delete every namespace (their links and nft tables go too)."""
        if self._closed:
            return
        self._closed = True
        for process in self.processes.values():
            with contextlib.suppress(Exception):
                process.send(signal.SIGKILL)
                process.stop(timeout_seconds=5)
        with contextlib.suppress(Exception):
            self.redis.process.send(signal.SIGKILL)
            self.redis.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        for name in reversed(self._made):
            with contextlib.suppress(Exception):
                _kill_everything_in(name)
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self._made.clear()

    # --- processes ----------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        """What docker-compose.yml's x-app-environment gives every Python process."""
        return child_env(
            {
                "ENVIRONMENT": "production",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "CELERY_BROKER_URL": self.redis_url,
                "CELERY_RESULT_BACKEND": self.redis_url,
                "FLOWER_BASIC_AUTH": f"admin:{self.secrets.get(secrets.FLOWER)}",
                "PAGE_TOKEN_SECRET": self.secrets.get(secrets.PAGE_TOKENS),
                "LOG_LEVEL": "INFO",
                **MALLOC_ENV,
                **self.settings.env,
            }
        )

    def run_on(self, host: str, argv: list[str], env: Mapping[str, str]) -> str:
        """Run a one-shot command on `host` (as compose's one-shot services); its output."""
        completed = subprocess.run(
            netns_argv(self.netns(host), argv),
            check=False,
            env=dict(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{argv} on {host}: {completed.stdout}{completed.stderr}")
        return completed.stdout

    def _start_services(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        self.redis.start()
        base = self._base_env()
        # The one-shot migrate service, then the first admin key as docker-compose.yml says.
        self.run_on(
            "server-a",
            python_module("jobcore.migrate"),
            base | {"DATABASE_MIGRATION_URL": self.postgres.migration_url},
        )
        scopes = [argument for scope in sorted(ALL_SCOPES) for argument in ("--scope", scope)]
        created = self.run_on(
            "server-a",
            python_module(
                "jobcore.keys",
                "create",
                "--tenant",
                DEFAULT_TENANT,
                *scopes,
                "--name",
                "hosts",
                "--json",
            ),
            base,
        )
        self.api_key = str(json.loads(created.splitlines()[-1])["key"])
        server_env = base | {
            "GRPC_HOST": "0.0.0.0",
            "GRPC_PORT": str(GRPC_PORT),
            "GRPC_REFLECTION": "false",
            "SERVER_PROCESSES": "1",
            "AUTH_MODE": "required",
            "API_KEY_REFRESH_SECONDS": "1",
            **self.settings.server_env,
        }
        for host in SERVERS:
            self.processes[host] = ManagedProcess(
                host,
                python_module("server"),
                log_path=self.log_dir / f"{host}.log",
                env=server_env,
                cwd=ROOT,
                netns=self.netns(host),
            )
        worker_env = base | {"WORKER_PROCESSES": "1", **self.settings.worker_env}
        for host in WORKERS:
            # A container's node name is its own host name; here the hosts share one.
            self.processes[host] = ManagedProcess(
                host,
                python_module("worker", f"--hostname={host}@%h"),
                log_path=self.log_dir / f"{host}.log",
                env=worker_env,
                cwd=ROOT,
                netns=self.netns(host),
            )
        envoy_config = self.data_dir / "envoy.yaml"
        self.run_on(
            "edge",
            python_module(
                "gateway",
                f"--out={envoy_config}",
                "--listen-host=0.0.0.0",
                f"--listen-port={GATEWAY_PORT}",
                f"--admin-port={ENVOY_ADMIN_PORT}",
                *(f"--upstream={self.addresses[host]}:{GRPC_PORT}" for host in SERVERS),
                f"--descriptor={DESCRIPTOR}",
                f"--allowed-hosts={self.addresses['edge']}",
                "--health-check-interval-seconds=0.5",
            ),
            base,
        )
        self.processes["edge"] = ManagedProcess(
            "edge",
            [
                str(Path(sys.executable).parent / "envoy"),
                "-c",
                str(envoy_config),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ],
            log_path=self.log_dir / "edge.log",
            cwd=ROOT,
            netns=self.netns("edge"),
        )
        for host in (*WORKERS, *SERVERS):
            self.processes[host].start()
        for host in SERVERS:
            self.wait_serving(host)
        self.processes["edge"].start()
        self.wait_in_rotation(set(SERVERS))

    def start(self, host: str) -> None:
        """(Re)start the process of `host`; a server is waited for until Envoy routes to it."""
        self.processes[host].start()
        if host in SERVERS:
            self.wait_serving(host)
            self.wait_in_rotation({host}, timeout_seconds=30)

    def stop(self, host: str) -> None:
        """Stop the process of `host` politely (SIGTERM, its drain), as a rolling restart does."""
        self.processes[host].stop(timeout_seconds=30)

    def power_off(self, host: str) -> None:
        """SIGKILL every process of `host` at once, as a host losing power."""
        _kill_everything_in(self.netns(host))
        if host in self.processes:
            self.processes[host].stop(timeout_seconds=5)

    def _alive(self, host: str) -> bool:
        process = self.processes[host]
        if not process.is_running():
            raise RuntimeError(
                f"{host} exited with status {process.exit_code()}:\n{process.log_tail()}"
            )
        return True

    def wait_serving(self, host: str) -> None:
        """Wait until the server on `host` reports SERVING (its container health check)."""
        env = self._base_env() | {"GRPC_PORT": str(GRPC_PORT)}
        wait_for(
            lambda: (
                self._alive(host)
                and bool(self.run_on(host, python_module("server.healthcheck"), env))
            ),
            timeout_seconds=60,
            what=f"{host} to report SERVING (log: {self.processes[host].log_path})",
            interval=0.5,
        )

    def servers_in_rotation(self) -> set[str]:
        """The servers Envoy's health checks currently pass (read from its admin interface)."""

        def read() -> str:
            url = f"http://127.0.0.1:{ENVOY_ADMIN_PORT}/clusters"
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())

        clusters = in_netns(self.netns("edge"), read)
        by_address = {address: host for host, address in self.addresses.items()}
        healthy = set()
        for line in clusters.splitlines():
            # jobs_grpc::10.77.5.13:50051::health_flags::healthy
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "jobs_grpc" and parts[2] == "health_flags":
                address = parts[1].rsplit(":", 1)[0]
                if parts[3] == "healthy":
                    healthy.add(by_address[address])
        return healthy

    def wait_in_rotation(self, hosts: set[str], *, timeout_seconds: float = 60) -> None:
        """Wait until Envoy routes to every server in `hosts`."""
        wait_for(
            lambda: self._alive("edge") and hosts <= self.servers_in_rotation(),
            timeout_seconds=timeout_seconds,
            what=f"Envoy to route to {sorted(hosts)} (log: {self.processes['edge'].log_path})",
            interval=0.2,
        )

    # --- the network --------------------------------------------------------------------------

    def _table(self, peer: str) -> str:
        return f"partition_{peer.replace('-', '_')}"

    def partition(self, host_a: str, host_b: str) -> None:
        """Drop every packet between the two hosts, silently (no reset, no ICMP), both ways."""
        for host, peer in ((host_a, host_b), (host_b, host_a)):
            address, table = self.addresses[peer], self._table(peer)
            rules = (
                f"table inet {table} {{\n"
                f"  chain input {{ type filter hook input priority -10; ip saddr {address} drop; }}\n"
                f"  chain output {{ type filter hook output priority -10; ip daddr {address} drop; }}\n"
                "}\n"
            )
            subprocess.run(
                netns_argv(self.netns(host), ["nft", "-f", "-"]),
                input=rules,
                text=True,
                check=True,
                capture_output=True,
            )
        self._partitions.add((host_a, host_b))

    def heal(self) -> None:
        """Remove every partition."""
        for host_a, host_b in self._partitions:
            for host, peer in ((host_a, host_b), (host_b, host_a)):
                _run(
                    *netns_argv(
                        self.netns(host), ["nft", "delete", "table", "inet", self._table(peer)]
                    )
                )
        self._partitions.clear()

    # --- the broker ---------------------------------------------------------------------------

    def broker_down(self) -> None:
        """The broker host loses power: redis-server is killed with no chance to save."""
        self.power_off("broker")
        self.redis.stop()

    def broker_up_empty(self) -> None:
        """The broker host comes back with its disk replaced: Redis starts with no data."""
        for path in self.redis.data_dir.iterdir():
            if path.name != self.redis.config_path.name:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self.redis.start()


@contextlib.contextmanager
def cluster_of_hosts(data_dir: Path, settings: ClusterSettings) -> Iterator[Cluster]:
    """A built cluster, removed however the block ends."""
    cluster = Cluster(data_dir, settings)
    try:
        cluster.build()
        yield cluster
    finally:
        cluster.close()


def namespaces_left(tag: str) -> list[str]:
    """Namespaces whose name starts with `tag` that still exist (for the cleanup test)."""
    return sorted(path.name for path in NETNS_DIR.glob(f"{tag}*"))
