# Everything a fresh Debian machine needs: `make run` runs the example through the
# sandbox, `make test` runs every check. Both create .venv, the engine and the image.
VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test lint unit integration venv engine image clean

run: image
	$(BIN)/agent-sandbox run examples/hello.py

test: lint image
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

engine:
	bash scripts/ensure-engine.sh

# Cheap when nothing changed: docker's build cache answers, the Debian base is reused.
image: venv engine
	$(BIN)/agent-sandbox image build

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
