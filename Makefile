# The two quick-start commands (README) and the CI entry points. Each target installs what it needs.
#   make repro     fresh machine -> venv, spritegen, the default data set, `dvc repro`
#   make test      fresh machine -> venv, spritegen + test deps, the test suite
#   make quality   the `ci` profile of the pipeline in a scratch copy + the quality gate (ci/quality.sh)

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-test repro test quality

$(BIN)/python:
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
