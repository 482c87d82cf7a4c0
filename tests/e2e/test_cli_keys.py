"""The `jobs` CLI with API keys against the real service: JOBS_API_KEY and --api-key on every
call, `jobs keys create|list|revoke`, and one-line errors for a missing or refused key."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from devstack.stack import Stack
from jobcore.keys.material import KEY_PATTERN
from tests.e2e.test_cli import (
    ANSI_ESCAPE,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    _argv,
    _env,
    _run_in_terminal,
    jobs,
    json_lines,
)

KEY_FIELDS = ["id", "key", "prefix", "tenant", "scopes", "name", "created_at", "expires_at"]


def _as(api_key: str) -> dict[str, str]:
    """The environment of a command that presents `api_key` through JOBS_API_KEY."""
    return _env(JOBS_API_KEY=api_key)


def _as_admin(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`jobs ARGS` against `stack`, presenting its development key (every scope)."""
    return jobs(stack.grpc_target, *args, env=_as(stack.api_key))


def _create(stack: Stack, *args: str) -> dict[str, Any]:
    [made] = json_lines(_as_admin(stack, "keys", "create", *args, "--json"))
    return made


def _one_line_error(completed: subprocess.CompletedProcess[str]) -> str:
    """The error a refused command printed: a single line on stderr, no traceback."""
    assert completed.returncode == EXIT_SERVER_ERROR, completed.stderr
    assert "Traceback" not in completed.stderr
    [line] = completed.stderr.splitlines()
    return line


def test_keys_create_prints_the_key_once_and_it_works_through_jobs_api_key(stack: Stack) -> None:
    made = _create(
        stack, "--tenant", "cli-acme", "--scope", "jobs.write", "--name", "ci", "--expires", "90d"
    )

    submitted = json_lines(
        jobs(stack.grpc_target, "submit", "square_sum", "3", env=_as(made["key"]))
    )
    through_option = json_lines(
        jobs(stack.grpc_target, "status", submitted[0]["id"], "--api-key", made["key"], env=_env())
    )
    listed = json_lines(_as_admin(stack, "keys", "list"))

    assert [field for field in KEY_FIELDS if field in made] == KEY_FIELDS
    assert KEY_PATTERN.fullmatch(made["key"])
    assert made["key"].startswith(made["prefix"] + "_")
    assert (made["tenant"], made["scopes"], made["name"]) == ("cli-acme", ["jobs.write"], "ci")
    assert made["expires_at"] is not None
    assert submitted[0]["status"] == "PENDING"
    assert through_option[0]["id"] == submitted[0]["id"]
    [shown] = [key for key in listed if key["id"] == made["id"]]
    assert "key" not in shown  # the secret is shown only by create
    assert shown["prefix"] == made["prefix"]


def test_keys_revoke_stops_the_key_and_says_so(stack: Stack) -> None:
    made = _create(stack, "--tenant", "cli-revoke", "--scope", "jobs.read")

    [revoked] = json_lines(_as_admin(stack, "keys", "revoke", made["id"], "--json"))
    refused = jobs(stack.grpc_target, "list", env=_as(made["key"]))
    active = json_lines(_as_admin(stack, "keys", "list"))
    every = json_lines(_as_admin(stack, "keys", "list", "--all"))

    assert revoked["id"] == made["id"]
    assert revoked["revoked_at"] is not None
    line = _one_line_error(refused)
    assert f"API key {made['prefix']} is revoked" in line
    assert "UNAUTHENTICATED" in line
    assert made["key"] not in refused.stderr
    assert made["id"] not in {key["id"] for key in active}
    assert made["id"] in {key["id"] for key in every}


@pytest.mark.parametrize("command", [["list"], ["keys", "list"]])
def test_without_a_key_the_error_says_how_to_give_one(stack: Stack, command: list[str]) -> None:
    env = _env()
    env.pop("JOBS_API_KEY", None)

    line = _one_line_error(jobs(stack.grpc_target, *command, env=env))

    assert "missing credentials" in line
    assert "set JOBS_API_KEY or pass --api-key" in line


def test_a_garbage_key_and_a_key_without_admin_are_refused_in_one_line(stack: Stack) -> None:
    reader = _create(stack, "--tenant", "cli-reader", "--scope", "jobs.read")

    garbage = _one_line_error(jobs(stack.grpc_target, "list", env=_as("jobs_nonsense")))
    not_admin = _one_line_error(jobs(stack.grpc_target, "keys", "list", env=_as(reader["key"])))

    assert "malformed API key" in garbage
    assert "PERMISSION_DENIED" in not_admin
    assert "admin" in not_admin


def test_keys_create_checks_its_arguments(stack: Stack) -> None:
    create = ("keys", "create", "--tenant", "acme", "--scope")
    bad_expiry = _as_admin(stack, *create, "jobs.read", "--expires", "2027-01-01T00:00:00")
    bad_scope = _as_admin(stack, *create, "root")
    bad_key = jobs(stack.grpc_target, "list", env=_as("line\nbreak"))

    assert bad_expiry.returncode == EXIT_USAGE
    assert "UTC offset" in bad_expiry.stderr
    assert bad_scope.returncode == EXIT_SERVER_ERROR
    assert "INVALID_ARGUMENT" in bad_scope.stderr
    assert "  - scopes: unknown scope 'root'" in bad_scope.stderr
    assert bad_key.returncode == EXIT_USAGE
    assert "API key" in bad_key.stderr


def test_keys_create_in_a_terminal_shows_the_key_and_the_export_line(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBS_API_KEY", stack.api_key)

    exit_code, screen = _run_in_terminal(
        _argv(
            "--target",
            stack.grpc_target,
            "keys",
            "create",
            "--tenant",
            "cli-tty",
            "--scope",
            "jobs.read",
        )
    )

    text = ANSI_ESCAPE.sub("", screen)
    assert exit_code == 0, text
    assert not text.lstrip().startswith("{")  # not JSON in a terminal
    assert "cli-tty" in text
    assert "only this once" in text
    [key] = re.findall(r"export JOBS_API_KEY=(jobs_\S+)", text)
    assert KEY_PATTERN.fullmatch(key)
