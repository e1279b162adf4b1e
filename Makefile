# The two commands (README): `make up` starts the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WEB_SRC := $(shell find web/src web/index.html web/package.json web/package-lock.json web/build.mjs 2>/dev/null)

# npm projects the tests drive (stock y-webrtc client, the local OpenID provider).
TEST_JS := tests/js tests/oidc

.PHONY: up test lint lock test-compose deps-run deps-test install web test-js bench clean

# Prerequisites run left to right: system packages (node, npm, ...) come first.
up: deps-run install web
	$(BIN)/codesync up

test: deps-test install web test-js lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Before any test: ruff on everything, mypy on the platform and the peer library ([tool.ruff],
# [tool.mypy] in pyproject.toml; docs/testing.md).
lint: install
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy

# Opt-in: compose.yaml built and started for real in a private dockerd, then used through the
# proxy (tests/test_deploy_compose_up.py, docs/deployment.md). Prints how long each step took.
test-compose: deps-test install
	CODESYNC_TEST_COMPOSE=1 $(BIN)/python -m pytest -p no:cacheprovider -s -v -rs tests/test_deploy_compose_up.py $(PYTEST_ARGS)

deps-run:
	scripts/system-deps.sh run

deps-test:
	scripts/system-deps.sh test

install: $(VENV)/.installed

# Exactly the locked, hashed dependency set (requirements.lock: pyproject's dependencies and
# its test extra), then CodeSync itself without resolving anything again.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Refresh the lock files after a change to pyproject.toml's dependencies (or to take upgrades):
# requirements.lock (with the test extra: make install, CI) and requirements-run.lock (the
# production image, Dockerfile). tests/test_locks.py checks they agree with each other.
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links --upgrade
lock:
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip-tools
	$(PIP_COMPILE) --extra test --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --output-file requirements-run.lock pyproject.toml

web: web/dist/index.html

web/dist/index.html: $(WEB_SRC)
	@if [ -f web/package.json ]; then cd web && npm ci --no-audit --no-fund && npm run build; else mkdir -p web/dist && echo '<!doctype html><title>CodeSync</title>' > $@; fi

test-js: $(addsuffix /node_modules/.package-lock.json,$(TEST_JS))

%/node_modules/.package-lock.json: %/package-lock.json %/package.json
	cd $* && npm ci --no-audit --no-fund
	touch $@

bench: install web test-js
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) web/node_modules web/dist $(addsuffix /node_modules,$(TEST_JS))
