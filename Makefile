# The README's two commands: `make demo` (set up, then a whole RiFT run offline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CONFIG ?= search_spaces/demo.yaml

.PHONY: setup demo test bench clean-runs

setup: $(VENV)/.installed
	@bash scripts/setup_system.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/rift-sweep rift --config $(CONFIG)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/pgd.py
	$(PY) bench/mrc.py
