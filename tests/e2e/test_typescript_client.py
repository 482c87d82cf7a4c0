"""The TypeScript client (clients/typescript) through Envoy: its Node test must pass against the stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from devstack.stack import ROOT, Stack

CLIENT = ROOT / "clients" / "typescript"
# npm ci downloads on a cold cache; generating and compiling take about 10 s.
INSTALL_TIMEOUT_SECONDS = 240
TEST_TIMEOUT_SECONDS = 180
# The spec reporter ends with summary lines: "\u2139 tests 4", "\u2139 pass 4" and so on.
SUMMARY_LINE = re.compile(r"^\u2139 (\w+) (\d+)$", flags=re.MULTILINE)


def _output(completed: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {completed.returncode}\n{completed.stdout}\n{completed.stderr}"


@pytest.fixture(scope="module")
def npm() -> str:
    """npm, after `npm ci` installed the client's locked dependencies (once per session)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the TypeScript client needs Node.js 20+")
    completed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, _output(completed)
    return npm


@pytest.mark.timeout(INSTALL_TIMEOUT_SECONDS + TEST_TIMEOUT_SECONDS)
def test_typescript_client_submits_watches_and_reads_error_details(npm: str, stack: Stack) -> None:
    # `npm test` generates the client from protos/, compiles it and runs test/*.test.ts.
    completed = subprocess.run(
        [npm, "test"],
        cwd=CLIENT,
        env={
            **os.environ,
            "JOBS_GATEWAY_TARGET": stack.gateway_target,
            "JOBS_API_KEY": stack.api_key,
        },
        capture_output=True,
        text=True,
        timeout=TEST_TIMEOUT_SECONDS,
        check=False,
    )

    assert completed.returncode == 0, _output(completed)
    summary = dict(SUMMARY_LINE.findall(completed.stdout))
    assert int(summary.get("tests", "0")) > 0, _output(completed)
    assert summary.get("pass") == summary["tests"], _output(completed)
