# `make demo` and `make test` work from a fresh clone: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.troupe-installed
TORCH_VERSION := 2.13.0

.PHONY: setup demo showcase test bench clean

setup: $(STAMP)

# torch goes in first and pinned: an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) examples/arith/demo.py

showcase: setup
	$(PY) examples/showcase.py

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/weight_sync.py
	$(PY) benchmarks/step_breakdown.py
	$(PY) benchmarks/async_vs_sync.py
	$(PY) benchmarks/serving.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
