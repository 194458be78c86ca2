# calendar-sync. `make run` and `make test` do all set-up on a fresh Debian/Ubuntu machine
# with Python 3.11+: they create .venv and install the project with its embedded stack.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
# Test workers: each has its own broker, PostgreSQL and sandbox; the tests mostly wait (on
# Kafka, on timers), so three share two cores well. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run test unit lint schema docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml calsync_dev/pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "calendar-sync needs Python 3.11 or newer" >&2; exit 1; fi
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			v=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
			apt-get update -qq && (apt-get install -y -qq "python$$v-venv" || apt-get install -y -qq python3-venv); \
		else echo "install your Python's venv package (e.g. sudo apt-get install python3-venv)" >&2; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -e ./calsync_dev
	@touch $(STAMP)

# The main job on embedded defaults: broker, PostgreSQL, Google sandbox, consumer, a story.
run: install
	$(BIN)/calsync-dev demo

# Headless Chromium for the browser tests: Debian's chromium and chromium-driver (selenium
# drives them by path; nothing is downloaded at run time). Installed when missing and root;
# otherwise the browser tests skip and say why.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends chromium chromium-driver >/dev/null; } \
			|| echo "could not install chromium: the browser tests will skip" >&2; \
		else echo "no chromium (sudo apt-get install chromium chromium-driver): the browser" \
			"tests will skip" >&2; fi; \
	fi

# The whole suite (tests/unit, tests/integration, tests/e2e): real broker, real PostgreSQL,
# the Google sandbox (started by the tests), and headless Chromium for the pages. The broker
# and PostgreSQL are containers where Docker runs, embedded otherwise (CALSYNC_TEST_STACK).
test: install browser
	$(BIN)/pytest -n $(TEST_WORKERS)

# The unit tier alone: no broker, no PostgreSQL, no sandbox, no network; seconds.
unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check consumer calsync_dev tests bench
	$(BIN)/ruff format --check consumer calsync_dev tests bench
	$(BIN)/mypy  # files: consumer, calsync_dev, bench (pyproject.toml)
	$(BIN)/lint-imports --no-cache  # the layers, calsync_dev kept out, no cycles (pyproject.toml)

# The benchmark (never part of the tests): prints a table, writes bench-results/latest.json.
# Options: make bench BENCH_ARGS="--only 2 --profile" (python -m bench --help).
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerate schemas/ from the pydantic models (a test fails when they differ).
schema: install
	$(BIN)/calsync schema --write

# Write README's settings table from the settings' descriptions (a test fails when they differ).
docs: install
	$(BIN)/calsync-dev docs --write

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
