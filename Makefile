# carapace — the two commands: `make run` and `make test`.
# The interpreter: the system's own python3.11 where it can make a venv (Debian's measured
# ~20 % faster than a pyenv build of 3.11.7 on this project's machines: docs/benchmarks.md),
# else the first python3.11 on PATH. `make PYTHON=/path/to/python3.11 ...` overrides it.
PYTHON ?= $(or $(shell for p in /usr/bin/python3.11 python3.11; do \
  $$p -c 'import ensurepip, venv, sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1 \
  && { echo $$p; break; }; done),python3.11)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOME_DIR ?= $(CURDIR)/.carapace-home

.PHONY: venv run test test-user-subset check lint fmt bench clean docs sandbox-tools browser-tools screenshots mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m compileall -q src/carapace  # sandboxed runners import bytecode, never write it
	touch $(STAMP)

venv: $(STAMP)

## make run: set up, initialise a home, start the host and chat with the default agent
run: $(STAMP) sandbox-tools
	$(BIN)/carapace init --home "$(HOME_DIR)"
	$(BIN)/carapace chat --home "$(HOME_DIR)"

# bubblewrap for the bwrap runner backend and its tests. Outside CI a missing bwrap is a note
# (the sandbox tests skip); under CI=true it fails the run (so does an unusable one, in pytest).
sandbox-tools:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1; } || \
	  { if [ "$${CI:-}" = true ]; then echo "error: CI=true and bubblewrap cannot be installed" >&2; exit 1; fi; \
	    echo "note: bubblewrap not installed; sandbox tests will be skipped"; }
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq npm) >/dev/null 2>&1; } || echo "note: npm not installed; groups cannot get npm packages (and the npm install tests fail)"
	@command -v slirp4netns >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq slirp4netns) >/dev/null 2>&1; } || echo "note: slirp4netns not installed; groups with network: true will not start"

# Debian's chromium for the web browser tests (driven by Playwright with executable_path; no
# browser is ever downloaded). Outside CI a missing chromium is a note (those tests skip);
# under CI=true it fails the run.
browser-tools:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  { if [ "$${CI:-}" = true ]; then echo "error: CI=true and chromium cannot be installed" >&2; exit 1; fi; \
	    echo "note: chromium not installed; the browser tests will be skipped"; }

## make screenshots: PNGs of the main web pages into docs/screenshots (headless chromium)
screenshots: $(STAMP) browser-tools
	$(BIN)/carapace web screenshots --out docs/screenshots

# test processes side by side (pytest-xdist), a file's tests in one of them and in order: most
# of the suite waits on real processes, sockets and fsyncs, so 4 on 2 cores take half the time
# of one; TEST_JOBS=0 runs them all in this process
TEST_JOBS ?= 4
PYTEST_JOBS = $(if $(filter 0,$(TEST_JOBS)),-p no:xdist,-n $(TEST_JOBS) --dist loadfile)

## make test: set up and run the whole suite (as root under CI=true, then the normal-user pass)
test: $(STAMP) sandbox-tools browser-tools
	$(BIN)/python -m pytest $(PYTEST_JOBS)
	$(BIN)/python -m carapace.testing.as_user --repo "$(CURDIR)"

# the tests whose outcome depends on who runs them; `make test` runs them again as an
# unprivileged user when it runs as root under CI=true (carapace/testing/as_user.py)
USER_TESTS ?= tests/sandbox tests/proxy tests/runner/test_runner_e2e.py tests/runner/test_runner_signals.py \
              tests/test_bad_input.py
test-user-subset: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_JOBS) $(USER_TESTS)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

check: lint test

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP) sandbox-tools
	@command -v strace >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq strace) >/dev/null 2>&1; } || echo "note: strace not installed: bench fsyncs counts only where perf's syscall tracepoints can be read (root)"
	$(BIN)/carapace bench all --write-docs

## make mutation: sample one-line bugs in the core modules, report the share the tests catch
MUTANTS ?= 20
mutation: $(STAMP)
	$(BIN)/python bench/mutation.py --n $(MUTANTS)

docs: $(STAMP)
	$(BIN)/python -m carapace.commands.reference > docs/cli-reference.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
