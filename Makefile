# The README's two commands: `make demo` (set up, then a whole RiFT run offline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CONFIG ?= search_spaces/demo.yaml

.PHONY: setup setup-test demo lint test test-fast bench

setup: $(VENV)/.installed
	@bash scripts/setup_system.sh demo

setup-test: $(VENV)/.installed-test
	@bash scripts/setup_system.sh test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# robustbench only for its architecture files (the parity tests load them by path): it does not import on
# current setuptools, and its dependencies (timm, autoattack from git) are not needed.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps robustbench==1.1.1
	touch $@

# A whole sweep (stage 1 + Tune/Optuna + front) into a fresh folder; earlier demo runs are kept.
demo: setup
	$(VENV)/bin/rift-sweep sweep --config $(CONFIG) --output runs/demo-$$(date +%Y%m%d-%H%M%S)

# The layering (import-linter contracts in pyproject.toml), then ruff's lint and format checks.
lint: setup-test
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check rift_sweep tests bench
	$(VENV)/bin/ruff format --check rift_sweep tests bench

# One torch thread per process: Ray workers and pytest share 2 cores, and oversubscribed threads run ~9x slower.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The quick tests only: no Ray/Tune end-to-end, browser or cluster tests (marked slow).
test-fast: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

bench: setup-test
	for b in pgd mrc mrc_scaling sweep; do $(PY) bench/$$b.py || exit 1; done
