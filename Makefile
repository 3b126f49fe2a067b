# Two commands: `make demo` renders a real video on the embedded default; `make test` runs every check.
# Both bootstrap .venv on first use; nothing needs installing by hand beyond Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
DEV    := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck unit bench serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(BASE)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BASE) $(DEV)

demo: $(BASE)
	$(BIN)/genloom demo

lint: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: $(DEV)
	$(BIN)/mypy

unit: $(DEV)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(DEV)
	$(BIN)/python bench/queue.py
	$(BIN)/python bench/render.py
	$(BIN)/python -m bench.worker
	$(BIN)/python -m bench.webhooks

serve: $(BASE)
	$(BIN)/genloom serve

clean:
	rm -rf $(VENV) genloom-data
