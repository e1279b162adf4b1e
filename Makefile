# The two commands (README): `make up` starts the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WEB_SRC := $(shell find web/src web/index.html web/package.json web/package-lock.json web/build.mjs 2>/dev/null)

.PHONY: up test install web bench clean

up: install web
	scripts/system-deps.sh run
	$(BIN)/codesync up

test: install web
	scripts/system-deps.sh test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

web: web/dist/index.html

web/dist/index.html: $(WEB_SRC)
	@if [ -f web/package.json ]; then cd web && npm ci --no-audit --no-fund && npm run build; else mkdir -p web/dist && echo '<!doctype html><title>CodeSync</title>' > $@; fi

bench: install web
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) web/node_modules web/dist
