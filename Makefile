# One entry point for every task. Each target works on a fresh checkout:
# it creates the virtualenv, installs pinned dependencies and generates code
# from protos/ as needed.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
GENERATED := gen/.generated
PROTOS := $(shell find protos -name '*.proto')
DASHBOARD := dashboard/dist/index.html
DASHBOARD_INSTALLED := dashboard/node_modules/.installed
DASHBOARD_SOURCES := $(shell find dashboard -path dashboard/node_modules -prune -o -path dashboard/dist -prune -o -path dashboard/src/gen -prune -o -type f -print)
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# Import our packages from this checkout (new ones too) and the generated
	@# stubs from gen/python as `jobs.v1`, without any import rewriting.
	$(BIN)/python -c 'import pathlib, sysconfig; root = pathlib.Path.cwd(); pathlib.Path(sysconfig.get_paths()["purelib"], "jobs-service-paths.pth").write_text(f"{root}\n{root}/gen/python\n")'
	touch $@

$(NODE_INSTALLED): package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

$(DASHBOARD_INSTALLED): dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm ci --silent --no-audit --no-fund
	touch $@

# Generates its TypeScript from protos/ (and the googleapis protos in gen/third_party), type-checks
# and bundles it; rebuilt only when its sources or the contract change.
$(DASHBOARD): $(DASHBOARD_INSTALLED) $(DASHBOARD_SOURCES) scripts/generate-ts.mjs $(PROTOS) | $(GENERATED)
	cd dashboard && npm run --silent build

.PHONY: dashboard
dashboard: $(DASHBOARD) ## Build the jobs dashboard (dashboard/dist) that the gateway serves at /ui.

.PHONY: venv
venv: $(INSTALLED) ## Create .venv with the pinned dependencies.

$(GENERATED): $(INSTALLED) $(PROTOS) devstack/protogen.py gateway/openapi.py gateway/config.py
	$(BIN)/python -m devstack.protogen
	touch $@

.PHONY: proto
proto: $(GENERATED) ## Generate Python stubs (gen/python), the Envoy descriptor and the OpenAPI document (gen/envoy).

.PHONY: run
run: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## Run the whole service locally (embedded PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set).
	$(BIN)/python -m devstack

.PHONY: test
test: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## Run the full test suite against real PostgreSQL, Redis, worker, server and Envoy.
	@# tests/hosts needs root and runs on its own (make test-hosts).
	$(BIN)/python -m pytest --ignore=tests/hosts $(PYTEST_ARGS)

.PHONY: test-hosts
test-hosts: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## As root: the service across hosts (network namespaces), with power loss, partitions and restarts (about 5 minutes).
	$(BIN)/python -m pytest tests/hosts $(PYTEST_ARGS)

.PHONY: scaling
scaling: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## As root: per-job cost of each kind of host on the cluster of hosts, with R1/R2; rewrites docs/SCALING.md's figures (about 3 minutes).
	$(BIN)/python -m tests.hosts.capacity --references

.PHONY: bench
bench: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## Benchmark the real stack against its references (about 6 minutes; see BENCHMARKS.md).
	$(BIN)/python -m benchmarks

.PHONY: bench-quick
bench-quick: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## The same benchmark code paths at small sizes (about 2-5 minutes; CI runs it).
	$(BIN)/python -m benchmarks --quick

.PHONY: soak
soak: $(GENERATED) $(NODE_INSTALLED) $(DASHBOARD) ## Soak the real stack 30 minutes (SOAK_MINUTES) at half capacity, killing a worker every 5; audit, RSS, DB size, logs (not in CI).
	$(BIN)/python -m tests.soak

# Files to mutate (default: every module in pyproject.toml's [tool.cosmic-ray.modules]).
MUTATE ?=

.PHONY: mutation
mutation: $(GENERATED) ## Mutation testing (cosmic-ray) of the guard code; MUTATE=jobcore/batching.py narrows it (slow; not in CI).
	$(BIN)/python -m devstack.mutation run $(MUTATE)

.PHONY: lint
lint: $(GENERATED) $(NODE_INSTALLED) breaking ## buf lint and breaking, ruff and mypy.
	npx --no-install buf lint
	npx --no-install buf build -o /dev/null
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

BREAKING_AGAINST ?= main

.PHONY: breaking
breaking: $(GENERATED) $(NODE_INSTALLED) ## buf breaking against BREAKING_AGAINST (default: main).
	@# buf cannot read the gitignored googleapis module from a git ref, so compare with the
	@# base checked out in a temporary worktree that gets the same generated module.
	@if ! git rev-parse --verify --quiet '$(BREAKING_AGAINST)^{commit}' >/dev/null; then \
		echo "buf breaking: no '$(BREAKING_AGAINST)' ref here; skipped"; exit 0; fi; \
	tmp=$$(mktemp -d); \
	trap 'git worktree remove --force "$$tmp/base" >/dev/null 2>&1; rm -rf "$$tmp"' EXIT; \
	git worktree add --quiet --detach "$$tmp/base" '$(BREAKING_AGAINST)'; \
	mkdir -p "$$tmp/base/gen" && cp -r gen/third_party "$$tmp/base/gen/"; \
	npx --no-install buf breaking --against "$$tmp/base"; \
	echo "buf breaking: no breaking change against $(BREAKING_AGAINST)"

.PHONY: fmt
fmt: $(INSTALLED) ## Format and auto-fix the Python code.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: migrate
migrate: $(GENERATED) ## Apply database migrations to DATABASE_URL.
	$(BIN)/python -m jobcore.migrate

.PHONY: clean
clean: ## Remove generated code (keeps .venv and local data).
	rm -rf gen clients/typescript/src/gen clients/typescript/dist dashboard/src/gen dashboard/dist

.PHONY: distclean
distclean: clean ## Remove generated code, .venv, node_modules and local data.
	rm -rf $(VENV) node_modules clients/typescript/node_modules dashboard/node_modules .data
