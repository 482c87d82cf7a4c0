"""The `jobs` command line (`python -m cli`) against the real service: JSON lines, errors, a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from devstack.processes import free_port
from devstack.stack import ROOT, Stack

UNKNOWN_ID = "019a0000-0000-7000-8000-000000000000"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_JOB_UNSUCCESSFUL = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def api_key(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `jobs` command presents the stack's key, as `make run`'s banner tells users to."""
    monkeypatch.setenv("JOBS_API_KEY", stack.api_key)


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _env(**extra: str) -> dict[str, str]:
    """The environment with JOBS_TARGET pointing nowhere.

    A --target the CLI failed to pick up then fails the test instead of reaching whatever
    server runs on the default port of this machine.
    """
    return {**os.environ, "JOBS_TARGET": f"127.0.0.1:{free_port()}", **extra}


def jobs(
    target: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `jobs --target TARGET ARGS…` with stdout piped, as a script would."""
    return subprocess.run(
        _argv("--target", target, *args),
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_lines(completed: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """stdout as JSON lines; fails with stderr shown if the command did not succeed."""
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines()]


def submit(stack: Stack, *args: str) -> dict[str, Any]:
    """Submit one job with `jobs submit ARGS --json`; the job as printed."""
    [job] = json_lines(jobs(stack.grpc_target, "submit", *args, "--json"))
    return job


def test_submit_status_watch_and_result_as_json_lines(stack: Stack) -> None:
    job = submit(stack, "square_sum", "1", "2", "3")
    status = json_lines(jobs(stack.grpc_target, "status", job["id"], "--json"))
    watched = json_lines(jobs(stack.grpc_target, "watch", job["id"], "--json"))
    result = json_lines(jobs(stack.grpc_target, "result", job["id"], "--json"))

    assert job["status"] == "PENDING"
    assert job["operation"] == "square_sum"
    assert "created_at" in job  # proto field names, as the REST API prints them
    assert status[0]["id"] == job["id"]
    assert status[0]["status"] in ("PENDING", "IN_PROGRESS", "SUCCESS")
    assert "result" not in status[0]
    states = [(line["sequence"], line["job"]["status"]) for line in watched]
    assert states == [(1, "PENDING"), (2, "IN_PROGRESS"), (3, "SUCCESS")][-len(states) :]
    assert watched[-1]["job"]["result"] == {"result": 14.0}
    assert result == [watched[-1]["job"]]


@pytest.mark.parametrize("through", ["server", "gateway"])
def test_submit_watch_prints_each_state_when_piped(stack: Stack, through: str) -> None:
    target = stack.grpc_target if through == "server" else stack.gateway_target

    completed = jobs(target, "submit", "cube_sum", "1", "-2", "3.5", "--watch")  # no --json

    lines = json_lines(completed)
    assert [line["job"]["status"] for line in lines][-1] == "SUCCESS"
    assert [line["sequence"] for line in lines] == list(range(lines[0]["sequence"], 4))
    assert len({line["job"]["id"] for line in lines}) == 1
    assert lines[-1]["job"]["result"]["result"] == 1 - 8 + 3.5**3


def test_submit_count_prints_one_line_per_job(stack: Stack) -> None:
    submitted = json_lines(jobs(stack.grpc_target, "submit", "--count", "20", "cube_sum", "2"))
    finished = json_lines(
        jobs(
            stack.grpc_target, "submit", "--count", "20", "--watch", "--json", "cube_sum", "1", "2"
        )
    )

    assert len({job["id"] for job in submitted}) == 20
    assert {job["status"] for job in submitted} == {"PENDING"}
    assert len({job["id"] for job in finished}) == 20
    assert [(job["status"], job["result"]) for job in finished] == [
        ("SUCCESS", {"result": 9.0})
    ] * 20


def test_submit_count_run_again_with_its_key_returns_the_same_jobs(stack: Stack) -> None:
    key = f"cli-count-{time.time_ns()}"
    command = ("submit", "--count", "30", "--request-id", key, "square_sum", "3")

    first = json_lines(jobs(stack.grpc_target, *command))
    again = json_lines(jobs(stack.grpc_target, *command))

    assert len({job["id"] for job in first}) == 30
    assert [job["id"] for job in again] == [job["id"] for job in first]


def test_request_id_makes_a_resubmission_return_the_same_job(stack: Stack) -> None:
    key = f"cli-test-{time.time_ns()}"

    first = submit(stack, "square_sum", "4", "--request-id", key)
    again = submit(stack, "square_sum", "4", "--request-id", key)
    reused = jobs(stack.grpc_target, "submit", "square_sum", "5", "--request-id", key)

    assert again["id"] == first["id"]
    assert reused.returncode == EXIT_SERVER_ERROR
    assert "ALREADY_EXISTS" in reused.stderr
    assert key in reused.stderr


@pytest.mark.usefixtures("workers_stopped")
def test_cancel_a_pending_job(stack: Stack) -> None:
    job = submit(stack, "square_sum", "7")

    [cancelled] = json_lines(jobs(stack.grpc_target, "cancel", job["id"], "--json"))
    [again] = json_lines(jobs(stack.grpc_target, "cancel", job["id"], "--json"))
    watched = jobs(stack.grpc_target, "watch", job["id"], "--json")

    assert cancelled["id"] == job["id"]
    assert cancelled["status"] == "CANCELLED"
    assert again["status"] == "CANCELLED"
    assert watched.returncode == EXIT_JOB_UNSUCCESSFUL  # the watched job did not succeed
    last = json.loads(watched.stdout.splitlines()[-1])
    assert last["job"]["status"] == "CANCELLED"
    assert last["job"]["result"]["error"] == "cancelled by request"


def test_cancel_a_finished_job_is_refused(stack: Stack) -> None:
    job = json_lines(jobs(stack.grpc_target, "submit", "square_sum", "1", "--watch"))[-1]["job"]

    completed = jobs(stack.grpc_target, "cancel", job["id"])

    assert completed.returncode == EXIT_SERVER_ERROR
    assert "already finished" in completed.stderr
    assert "FAILED_PRECONDITION" in completed.stderr
    assert completed.stdout == ""


@pytest.mark.parametrize(
    ("args", "exit_code", "field"),
    [
        (["mean", "1"], EXIT_USAGE, "operation"),  # argparse knows the operations from the proto
        (["square_sum"], EXIT_SERVER_ERROR, "data"),  # the server validates the numbers
        (["cube_sum", "1", "nan"], EXIT_SERVER_ERROR, "data[1]"),
    ],
)
def test_invalid_submission_names_the_field(
    stack: Stack, args: list[str], exit_code: int, field: str
) -> None:
    completed = jobs(stack.grpc_target, "submit", *args)

    assert completed.returncode == exit_code
    assert field in completed.stderr
    assert completed.stdout == ""


def test_server_field_violations_are_listed(stack: Stack) -> None:
    completed = jobs(stack.grpc_target, "submit", "square_sum")

    assert "INVALID_ARGUMENT" in completed.stderr
    assert "  - data: must contain at least one number" in completed.stderr.splitlines()


@pytest.mark.parametrize("command", ["status", "result", "watch", "cancel"])
def test_unknown_id_is_not_found(stack: Stack, command: str) -> None:
    completed = jobs(stack.grpc_target, command, UNKNOWN_ID)

    assert completed.returncode == EXIT_SERVER_ERROR
    assert f"job {UNKNOWN_ID} not found" in completed.stderr
    assert "NOT_FOUND" in completed.stderr


def test_target_from_the_environment_and_an_unreachable_server(stack: Stack) -> None:
    job = submit(stack, "square_sum", "2")
    env = _env(JOBS_TARGET=stack.grpc_target)

    from_env = subprocess.run(
        _argv("status", job["id"], "--json"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    nowhere = f"127.0.0.1:{free_port()}"
    unreachable = jobs(nowhere, "status", job["id"], env=env)  # --target wins over JOBS_TARGET

    assert json_lines(from_env)[0]["id"] == job["id"]
    assert unreachable.returncode == EXIT_UNAVAILABLE
    assert f"cannot reach the job service at {nowhere}" in unreachable.stderr


def test_watch_resumes_after_a_server_restart(stack: Stack, workers_stopped: None) -> None:
    job = submit(stack, "square_sum", "3", "4")
    watch = subprocess.Popen(
        _argv("--target", stack.grpc_target, "watch", job["id"], "--json"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        stack.server.stop()  # SIGTERM: open streams end with UNAVAILABLE
        for worker in stack.workers:
            worker.start()
        stack.start_server()
        out, err = watch.communicate(timeout=90)
    finally:
        watch.kill()
        if not stack.server.is_running():
            stack.start_server()

    assert watch.returncode == 0, err
    rest = [json.loads(line) for line in out.splitlines()]
    assert (first["sequence"], first["job"]["status"]) == (1, "PENDING")
    # Resumed after sequence 1: nothing repeated, nothing missed.
    assert [(line["sequence"], line["job"]["status"]) for line in rest] == [
        (2, "IN_PROGRESS"),
        (3, "SUCCESS"),
    ]
    assert rest[-1]["job"]["result"] == {"result": 25.0}
    assert "resuming after sequence 1" in err


def _watching(stack: Stack, *job_ids: str) -> subprocess.Popen[str]:
    """`jobs watch ID... --json` running, its output piped."""
    return subprocess.Popen(
        _argv("--target", stack.grpc_target, "watch", *job_ids, "--json"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _by_job(lines: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    """Each job's (sequence, status) lines in the order printed (0: its state when read)."""
    shown: dict[str, list[tuple[int, str]]] = {}
    for line in lines:
        shown.setdefault(line["job"]["id"], []).append(
            (line.get("sequence", 0), line["job"]["status"])
        )
    return shown


def test_watch_of_several_jobs_follows_them_on_one_stream(
    stack: Stack, workers_stopped: None
) -> None:
    a, b, c = (submit(stack, "square_sum", str(n)) for n in (1, 2, 3))
    watch = _watching(stack, a["id"], b["id"], c["id"], a["id"])  # a named twice: once
    try:
        assert watch.stdout is not None
        now = [json.loads(watch.stdout.readline()) for _ in range(3)]
        json_lines(jobs(stack.grpc_target, "cancel", c["id"], "--json"))
        for worker in stack.workers:
            worker.start()
        out, err = watch.communicate(timeout=60)
    finally:
        watch.kill()

    assert watch.returncode == EXIT_JOB_UNSUCCESSFUL, err  # c was cancelled
    assert [(line["job"]["id"], line["job"]["status"]) for line in now] == [
        (a["id"], "PENDING"),
        (b["id"], "PENDING"),
        (c["id"], "PENDING"),
    ]
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(line["cursor"] for line in lines)
    assert _by_job(lines) == {
        c["id"]: [(2, "CANCELLED")],
        a["id"]: [(2, "IN_PROGRESS"), (3, "SUCCESS")],
        b["id"]: [(2, "IN_PROGRESS"), (3, "SUCCESS")],
    }
    results = {line["job"]["id"]: line["job"].get("result") for line in lines}
    assert results[a["id"]] == {"result": 1.0}
    assert results[b["id"]] == {"result": 4.0}
    assert results[c["id"]] == {"error": "cancelled by request"}


def test_watch_of_several_jobs_resumes_after_a_server_restart_from_its_cursor(
    stack: Stack, workers_stopped: None
) -> None:
    a, b = (submit(stack, "cube_sum", str(n)) for n in (2, 3))
    watch = _watching(stack, a["id"], b["id"])
    try:
        assert watch.stdout is not None
        now = [json.loads(watch.stdout.readline()) for _ in range(2)]
        stack.server.stop()  # SIGTERM: open streams end with UNAVAILABLE
        for worker in stack.workers:
            worker.start()
        stack.start_server()
        out, err = watch.communicate(timeout=90)
    finally:
        watch.kill()
        if not stack.server.is_running():
            stack.start_server()

    assert watch.returncode == 0, err
    assert {line["job"]["status"] for line in now} == {"PENDING"}
    lines = [json.loads(line) for line in out.splitlines()]
    # Nothing missed while the server was away, nothing repeated after.
    assert sorted(_by_job(lines).values()) == [[(2, "IN_PROGRESS"), (3, "SUCCESS")]] * 2
    assert "resuming from its last cursor" in err


def test_watch_of_several_jobs_in_a_terminal_shows_a_line_for_each(stack: Stack) -> None:
    a, b = (submit(stack, "square_sum", str(n)) for n in (2, 3))
    json_lines(jobs(stack.grpc_target, "watch", a["id"], "--json"))
    json_lines(jobs(stack.grpc_target, "watch", b["id"], "--json"))

    exit_code, screen = _run_in_terminal(
        _argv("--target", stack.grpc_target, "watch", a["id"], b["id"])
    )

    text = ANSI_ESCAPE.sub("", screen)
    assert exit_code == 0, text
    last_a = text.rindex(a["id"])
    last_b = text.rindex(b["id"])
    assert "result 4" in text[last_a:last_b]
    assert "result 9" in text[last_b:]
    assert text.count("✔") >= 2


def _run_in_terminal(argv: list[str], *, timeout_seconds: float = 60) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as its stdin, stdout and stderr; its exit code and screen output."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=_env(TERM="xterm-256color"),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([controller], [], [], 0.1)
            if readable:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal closed because the process exited
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=5), output.decode(errors="replace")
    finally:
        process.kill()
        os.close(controller)


def test_watch_in_a_terminal_shows_a_live_status_line(stack: Stack) -> None:
    exit_code, screen = _run_in_terminal(
        _argv("--target", stack.grpc_target, "submit", "square_sum", "2", "3", "--watch")
    )

    assert exit_code == 0, screen
    # Each redraw of the live line starts with a carriage return; the last one stays.
    frames = [ANSI_ESCAPE.sub("", frame).strip() for frame in re.split(r"\r\n?", screen)]
    frames = [frame for frame in frames if frame]
    assert not any(frame.startswith("{") for frame in frames)  # not JSON in a terminal
    statuses = [
        next(s for s in ("PENDING", "IN_PROGRESS", "SUCCESS") if s in frame)
        for frame in frames
        if any(s in frame for s in ("PENDING", "IN_PROGRESS", "SUCCESS"))
    ]
    assert list(dict.fromkeys(statuses)) == ["PENDING", "IN_PROGRESS", "SUCCESS"]
    elapsed = [float(s) for s in re.findall(r"(\d+\.\d) s\b", ANSI_ESCAPE.sub("", screen))]
    assert len(set(elapsed)) > 2  # the elapsed time ticks while the job runs
    assert elapsed == sorted(elapsed)
    final = frames[-1]
    assert final.startswith("✔")
    assert "SUCCESS" in final
    assert "result 13" in final


def test_count_watch_in_a_terminal_shows_a_progress_bar(stack: Stack) -> None:
    exit_code, screen = _run_in_terminal(
        _argv("--target", stack.grpc_target, "submit", "--count", "10", "--watch", "cube_sum", "2")
    )

    text = ANSI_ESCAPE.sub("", screen)
    assert exit_code == 0, text
    assert "finished" in text
    assert "10/10" in text
    assert "━" in text  # the bar
    assert "10 jobs: 10 SUCCESS" in text


def test_list_pages_through_filtered_jobs(stack: Stack) -> None:
    since = datetime.now(UTC).isoformat()
    submitted = json_lines(jobs(stack.grpc_target, "submit", "--count", "3", "cube_sum", "7"))
    filter_text = f'create_time >= "{since}" AND operation = "cube_sum"'

    first = jobs(stack.grpc_target, "list", "--filter", filter_text, "--page-size", "2")
    every = jobs(stack.grpc_target, "list", "--filter", filter_text, "--page-size", "2", "--all")
    bad = jobs(stack.grpc_target, "list", "--filter", "colour = red")

    assert len(json_lines(first)) == 2
    assert "next page token" in first.stderr
    assert {job["id"] for job in json_lines(every)} == {job["id"] for job in submitted}
    assert bad.returncode == 1
    assert "filter" in bad.stderr
