"""`make run`'s supervisor: starts everything, keeps jobs across restarts, stops every process on Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack import secrets
from devstack.processes import free_port
from devstack.stack import ROOT
from jobcore.celery_app import PROCESS_JOBS_TASK

BANNER = "Press Ctrl-C to stop everything."
EXPORTED_KEY = re.compile(r"^\s*export JOBS_API_KEY=(?P<key>\S+)$", flags=re.MULTILINE)
# Well-formed, but no database ever issued it: what a key kept from a reset database looks like.
FORGOTTEN_KEY = "jobs_00000000_" + "A" * 43


@pytest.fixture
def run_env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="make-run-") as data_dir:
        yield {
            **os.environ,
            "LOCAL_DATA_DIR": data_dir,
            "GRPC_PORT": str(free_port()),
            "HTTP_PORT": str(free_port()),
            "ENVOY_ADMIN_PORT": str(free_port()),
            "FLOWER_PORT": str(free_port()),
            "EMBEDDED_POSTGRES_PORT": str(free_port()),
            "EMBEDDED_REDIS_PORT": str(free_port()),
            "SERVER_METRICS_PORT": str(free_port()),
            "WORKER_METRICS_PORT": str(free_port()),
            "SIMULATED_DELAY_SECONDS": "0",
        }


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `python -m devstack` and read its output until the banner's last line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if BANNER in line:
            return process, lines
    process.kill()
    raise AssertionError("make run did not get ready:\n" + "\n".join(lines))


def _stop(process: subprocess.Popen[str]) -> list[psutil.Process]:
    """Ctrl-C the supervisor; return the child processes it had, for checking afterwards."""
    children = psutil.Process(process.pid).children(recursive=True)
    assert children, "expected the supervisor to have child processes"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    return children


def _exported_key(banner: str) -> str:
    """The key the banner's `export JOBS_API_KEY=...` line gives."""
    found = EXPORTED_KEY.search(banner)
    assert found is not None, banner
    return found["key"]


def _http(
    method: str, url: str, body: dict[str, object] | None = None, *, api_key: str
) -> dict[str, object]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            **({"authorization": f"Bearer {api_key}"} if api_key else {}),
        },
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def _flower_sees_tasks(base: str, flower: str, *, basic_auth: str, api_key: str) -> bool:
    """Workers send task events once Flower switches them on (it does every few seconds)."""
    auth = "Basic " + base64.b64encode(basic_auth.encode()).decode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _http(
            "POST", f"{base}/api/v1/jobs/", {"data": [3], "operation": "cube_sum"}, api_key=api_key
        )
        request = urllib.request.Request(f"{flower}/api/tasks", headers={"authorization": auth})
        with urllib.request.urlopen(request, timeout=10) as response:
            tasks = json.loads(response.read())
        if any(task["name"] == PROCESS_JOBS_TASK for task in tasks.values()):
            return True
        time.sleep(0.5)
    return False


def test_run_serves_keeps_jobs_across_restarts_and_leaves_nothing_behind(
    run_env: dict[str, str],
) -> None:
    base = f"http://127.0.0.1:{run_env['HTTP_PORT']}"
    process, lines = _start(run_env)
    try:
        banner = "\n".join(lines)
        for port in ("HTTP_PORT", "GRPC_PORT", "FLOWER_PORT"):
            assert run_env[port] in banner
        api_key = _exported_key(banner)
        assert '-H "authorization: Bearer $JOBS_API_KEY"' in banner
        job = _http(
            "POST",
            f"{base}/api/v1/jobs/",
            {"data": [1, 2], "operation": "square_sum"},
            api_key=api_key,
        )
        flower = f"http://127.0.0.1:{run_env['FLOWER_PORT']}"
        with pytest.raises(urllib.error.HTTPError) as unauthorised:
            urllib.request.urlopen(f"{flower}/", timeout=10)
        assert unauthorised.value.code == 401  # Flower asks for FLOWER_BASIC_AUTH
        # The generated passwords are in the data folder, and on no process's command line; the
        # banner shows only the development key, kept there too.
        secret_folder = Path(run_env["LOCAL_DATA_DIR"]) / "secrets"
        assert str(secret_folder) in banner
        assert (secret_folder / secrets.API_KEY).read_text().strip() == api_key
        passwords = [
            path.read_text().strip()
            for path in secret_folder.iterdir()
            if path.name != secrets.API_KEY
        ]
        assert not [value for value in passwords if value in banner]
        values = [*passwords, api_key]
        command_lines = [
            " ".join(child.cmdline())
            for child in psutil.Process(process.pid).children(recursive=True)
        ]
        assert any("flower" in line for line in command_lines)
        assert any("redis-server" in line for line in command_lines)
        assert not [line for line in command_lines for value in values if value in line]
        flower_password = (secret_folder / secrets.FLOWER).read_text().strip()
        assert _flower_sees_tasks(
            base, flower, basic_auth=f"admin:{flower_password}", api_key=api_key
        )
    finally:
        children = _stop(process)
    assert not [child for child in children if child.is_running() and child.status() != "zombie"]

    process, lines = _start(run_env)
    try:
        again = _http("GET", f"{base}/api/v1/jobs/{job['id']}/result", api_key=api_key)
    finally:
        _stop(process)
    assert _exported_key("\n".join(lines)) == api_key  # the same key at every start
    assert again["id"] == job["id"]
    assert again["status"] in ("PENDING", "IN_PROGRESS", "SUCCESS")


def test_run_replaces_a_kept_key_the_database_does_not_know(run_env: dict[str, str]) -> None:
    key_file = Path(run_env["LOCAL_DATA_DIR"]) / "secrets" / secrets.API_KEY
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text(FORGOTTEN_KEY + "\n")
    key_file.chmod(0o600)

    process, lines = _start(run_env)
    try:
        api_key = _exported_key("\n".join(lines))
        jobs = _http("GET", f"http://127.0.0.1:{run_env['HTTP_PORT']}/api/v1/jobs", api_key=api_key)
    finally:
        _stop(process)

    assert api_key != FORGOTTEN_KEY
    assert key_file.read_text().strip() == api_key
    assert isinstance(jobs, dict)  # 200: urlopen raises for a 401


def test_run_without_authentication_warns_and_prints_no_key(run_env: dict[str, str]) -> None:
    process, lines = _start({**run_env, "AUTH_MODE": "none"})
    try:
        banner = "\n".join(lines)
        jobs = _http("GET", f"http://127.0.0.1:{run_env['HTTP_PORT']}/api/v1/jobs", api_key="")
    finally:
        _stop(process)

    assert "WARNING: AUTH_MODE=none" in banner
    assert "JOBS_API_KEY" not in banner
    assert not (Path(run_env["LOCAL_DATA_DIR"]) / "secrets" / secrets.API_KEY).exists()
    assert isinstance(jobs, dict)  # 200 without credentials


def test_run_names_the_port_that_is_taken(run_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(run_env["HTTP_PORT"])))
        taken.listen()
        completed = subprocess.run(
            [sys.executable, "-m", "devstack"],
            cwd=ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert completed.returncode == 1
    assert f"port {run_env['HTTP_PORT']}" in completed.stdout + completed.stderr
    assert "HTTP_PORT" in completed.stdout + completed.stderr


def test_killing_the_supervisor_takes_every_child_with_it(run_env: dict[str, str]) -> None:
    process, _ = _start(run_env)
    children = psutil.Process(process.pid).children(recursive=True)
    assert children

    process.kill()  # SIGKILL: no chance to clean up; the children's parent-death signal fires
    process.wait(timeout=30)

    _, alive = psutil.wait_procs(children, timeout=60)
    assert not [child for child in alive if child.status() != psutil.STATUS_ZOMBIE]
