# Every target installs what it needs into .venv first, so a fresh clone needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bench extra (Celery, the load benchmark's peer) on top of the dev install, only for make bench
BENCH_STAMP := $(VENV)/.installed-bench
# The dashboard's browser packages (hls.js, tus-js-client), pinned by web/package-lock.json,
# in the git-ignored web/node_modules, where the gateway serves them from.
WEB_STAMP := web/node_modules/.installed

.PHONY: up test bench install clean browser media-reference

# CI=true (or 1 or yes, in any case), read as tests/conftest.py's in_ci() reads it: a tool
# the tests need that cannot be installed fails the run instead of skipping their tests.
STRICT := $(filter true 1 yes,$(shell printf '%s' '$(CI)' | tr '[:upper:]' '[:lower:]'))

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `npm ci` again only when package.json or the lock changed; the stamp is written last, so
# an interrupted or failed install runs again next time.
$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node.js 18 or newer) is needed to install the dashboard's HLS player and uploader (hls.js, tus-js-client): install Node.js (e.g. apt-get install npm)" >&2; exit 1; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

# The AsyncAPI project's parser (@asyncapi/parser, pinned by tests/asyncapi/package-lock.json),
# which tests/unit/test_asyncapi.py runs on the generated bus document. Test-only, so it has
# its own directory rather than web/, whose node_modules the gateway serves.
ASYNCAPI_STAMP := tests/asyncapi/node_modules/.installed
$(ASYNCAPI_STAMP): tests/asyncapi/package.json tests/asyncapi/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node.js 18 or newer) is needed to install the AsyncAPI parser the tests validate the bus document with: install Node.js (e.g. apt-get install npm)" >&2; exit 1; }
	cd tests/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(ASYNCAPI_STAMP)

install: $(STAMP) $(WEB_STAMP)

up: install
	$(BIN)/vidmesh up

# Debian's chromium for the browser tests (apt waits for a busy package manager's lock).
# Without it they skip loudly; with CI=true a browser that cannot be installed fails the build.
browser:
	@[ -x "$${VIDMESH_CHROMIUM:-/nonexistent}" ] || command -v chromium >/dev/null 2>&1 || \
	  sh tests/apt-install.sh chromium >/dev/null || \
	  if [ -n "$(STRICT)" ]; then \
	    echo "ERROR: chromium is missing and could not be installed (apt-get install chromium); CI=true needs the browser tests to run" >&2; exit 1; \
	  else echo "WARNING: chromium is missing and could not be installed (apt-get install chromium): the dashboard tests will be skipped"; fi

# Debian's ffmpeg (with zscale, tonemap, libx265): the reference the media tests compare the
# product's frame path with (the product itself uses PyAV's bundled FFmpeg). Without it those
# tests skip with REFERENCE FFMPEG MISSING; with CI=true a missing reference fails the build.
media-reference:
	@ffmpeg -hide_banner -filters 2>/dev/null | grep -q zscale || \
	  sh tests/apt-install.sh ffmpeg >/dev/null || \
	  if [ -n "$(STRICT)" ]; then \
	    echo "ERROR: Debian's ffmpeg is missing and could not be installed (apt-get install ffmpeg); CI=true needs the media tests to run" >&2; exit 1; \
	  else echo "WARNING: Debian's ffmpeg is missing and could not be installed (apt-get install ffmpeg): the media reference tests will be skipped"; fi

# Lint, format check and type-check first (ruff over the tree, mypy strict on shared/, both
# configured in pyproject.toml): each fails the build in seconds, before the suite.
test: install $(ASYNCAPI_STAMP) browser media-reference
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# BENCH="pipeline scale" runs only those (default: all; see bench/README.md); BENCH_ARGS is
# passed on (e.g. BENCH=load BENCH_ARGS='--peer celery --n 120'). Debian's redis-server is
# the Celery peer's broker: installed when missing, a warning where it cannot be.
bench: $(BENCH_STAMP)
	@command -v redis-server >/dev/null 2>&1 || sh tests/apt-install.sh redis-server >/dev/null || \
	  echo "WARNING: redis-server is missing and could not be installed: bench load --peer celery will fail"
	$(BIN)/python -m bench $(BENCH) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .vidmesh
