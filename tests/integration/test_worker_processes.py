"""`python -m worker` with WORKER_PROCESSES=2: two Celery nodes, each serving its own metrics,
run and ended as one group."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import psutil

from devstack.processes import free_port, port_in_use, wait_for
from devstack.stack import ROOT, Stack
from jobcore.celery_app import create_celery_app
from jobcore.settings import Settings

# A Redis database of their own: these workers take none of the session's jobs.
_BROKER_DATABASE = 9


def _two_free_ports() -> int:
    for _ in range(20):
        port = free_port()
        if not port_in_use("127.0.0.1", port + 1):
            return port
    raise RuntimeError("no two free ports in a row")


@contextlib.contextmanager
def _worker_group(stack: Stack) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    redis_url = f"{stack.redis_url.rsplit('/', 1)[0]}/{_BROKER_DATABASE}"
    port = _two_free_ports()
    env = stack.env | {
        "REDIS_URL": redis_url,
        "WORKER_PROCESSES": "2",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, port, redis_url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _nodes(stack: Stack, redis_url: str) -> set[str]:
    app = create_celery_app(Settings(database_url=stack.database_url, redis_url=redis_url))
    try:
        return {name for reply in app.control.ping(timeout=1.0) for name in reply}
    finally:
        app.close()


def _metrics_served(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return bool(response.status == 200)


def _wait_until_up(stack: Stack, redis_url: str, port: int) -> set[str]:
    nodes: set[str] = set()

    def both_answer() -> bool:
        nodes.clear()
        nodes.update(_nodes(stack, redis_url))
        return len(nodes) == 2

    wait_for(both_answer, timeout_seconds=60, what="two worker nodes to answer a ping")
    wait_for(
        lambda: _metrics_served(port) and _metrics_served(port + 1),
        timeout_seconds=30,
        what="each worker process's metrics",
    )
    return nodes


def test_two_worker_processes_answer_as_two_nodes_and_stop_together_on_sigterm(
    stack: Stack,
) -> None:
    with _worker_group(stack) as (process, port, redis_url):
        nodes = _wait_until_up(stack, redis_url, port)
        assert {name.split("@", 1)[0] for name in nodes} == {"celery", "celery1"}

        process.send_signal(signal.SIGTERM)

        assert process.wait(60) == 0


def test_when_one_worker_process_dies_the_group_ends_non_zero(stack: Stack) -> None:
    with _worker_group(stack) as (process, port, redis_url):
        _wait_until_up(stack, redis_url, port)
        children = [
            child
            for child in psutil.Process(process.pid).children()
            if "resource_tracker" not in " ".join(child.cmdline())  # multiprocessing's helper
        ]
        assert len(children) == 2

        children[1].kill()

        assert process.wait(60) != 0
        assert not any(child.is_running() for child in children)
