# The two commands (README): `make up` starts the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WEB_SRC := $(shell find web/src web/index.html web/package.json web/package-lock.json web/build.mjs 2>/dev/null)

# npm projects the tests drive (stock y-webrtc client, the local OpenID provider).
TEST_JS := tests/js tests/oidc

.PHONY: up test test-compose deps-run deps-test install web test-js bench clean

# Prerequisites run left to right: system packages (node, npm, ...) come first.
up: deps-run install web
	$(BIN)/codesync up

test: deps-test install web test-js
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Opt-in: compose.yaml built and started for real in a private dockerd, then used through the
# proxy (tests/test_deploy_compose_up.py, docs/deployment.md). Prints how long each step took.
test-compose: deps-test install
	CODESYNC_TEST_COMPOSE=1 $(BIN)/python -m pytest -p no:cacheprovider -s -v -rs tests/test_deploy_compose_up.py $(PYTEST_ARGS)

deps-run:
	scripts/system-deps.sh run

deps-test:
	scripts/system-deps.sh test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

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
