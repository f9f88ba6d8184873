# casbi_store: `make test` (what CI runs) and `make demo` (the main job on the mock suite).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv test lint demo bench clean slurm-check

venv: $(STAMP)

# torch first, pinned: the CPU build comes from local disk; an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check casbi_store tests bench

test: venv lint
	$(VENV)/bin/pytest -q

# real SLURM jobs on a one-node SLURM started here (root; apt-get install slurm-wlm munge):
# pipelines/slurm_check.yaml extracted and composed by sbatch jobs, a job cancelled mid-run,
# refused partitions and accounts (docs/cluster.md; your own cluster: casbi-store run on that file)
slurm-check: venv
	CI=1 $(VENV)/bin/pytest -q tests/test_slurm.py

demo: venv
	$(VENV)/bin/casbi-store run pipelines/demo.yaml

bench: venv
	$(PY) bench/bench_extract.py --out bench/results
	$(PY) bench/bench_train.py --store demo/store.zarr --out bench/results

clean:
	rm -rf demo bench/results .pytest_cache
