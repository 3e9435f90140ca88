# Two commands for a newcomer: `make run` (portal on demo data) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install install-dev run test lint format typecheck check docs bench bench-export bench-release bench-ui clean

$(PY):
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

## install: create .venv and install the portal's packages (idempotent)
install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## run: migrate, load demo data once, start Redis (if none answers), a worker and the UI
##      (PORT=8600 for another port than 8501)
run: install
	$(PY) -m exporter run $(if $(PORT),--port $(PORT))

## test: install what the tests need (packages, dcmtk, PostgreSQL) and run the whole suite
test: install-dev
	bash scripts/test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff, the formatter, and the layer rule (docs/architecture.md) with import-linter
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install-dev
	$(VENV)/bin/mypy exporter app.py worker.py pages bench scripts

check: lint typecheck test

## docs: regenerate the generated tables in docs/ (settings, the PS3.15 profile)
docs: install-dev
	$(PY) scripts/gen_docs.py

## bench: registry (register vs sha256sum, estimates); bench-export, bench-release and bench-ui take longer
bench: install-dev
	$(PY) bench/registry_bench.py

bench-export: install-dev
	$(PY) bench/export_bench.py

bench-release: install-dev
	$(PY) bench/release_bench.py

bench-ui: install-dev
	$(PY) bench/ui_bench.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
