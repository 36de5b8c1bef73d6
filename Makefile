# The two quick-start commands (README) and the CI entry points. Each target installs what it needs.
#   make repro     fresh machine -> venv, spritegen, the default data set, `dvc repro`
#   make test      fresh machine -> venv, spritegen + test deps, the test suite
#   make quality   the `ci` profile of the pipeline in a scratch copy + the quality gate (ci/quality.sh)

# Any Python 3.11 or newer: `make repro PYTHON=python3.13` picks another one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-test repro test quality

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || { \
	  echo "spritegen needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo 'not found')." >&2; \
	  echo "Install a newer Python, or point make at one: make $(MAKECMDGOALS) PYTHON=python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -e .

install-test: $(BIN)/python
	$(BIN)/pip install -e '.[test]'

repro: install
	$(BIN)/spritegen data fetch
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install-test
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

quality: install-test
	PATH="$(abspath $(BIN)):$$PATH" bash ci/quality.sh
