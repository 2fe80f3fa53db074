# correo: two commands. `make run` serves a demo installation; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= correo-data
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "correo needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgresql]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@test -f $(DATA)/correo.toml || $(BIN)/correo init $(DATA) --domain example.test --demo-user demo
	$(BIN)/correo -c $(DATA)/correo.toml serve

lint: $(STAMP)
	$(BIN)/ruff check correo tests bench
	$(BIN)/ruff format --check correo tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -x tests/unit

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
