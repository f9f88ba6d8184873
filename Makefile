# casbi_store: `make test` (what CI runs), `make demo` (the main job on the mock suite) and
# `make docs` (the site, every tutorial executed; warnings are errors).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

# Python writes each module's bytecode (__pycache__) the first time it imports it: with
# PYTHONDONTWRITEBYTECODE set (as in some CI images) every interpreter the suite starts (the CLI
# run as a user would, Dask workers, notebook kernels; a few hundred) compiles torch & co. again,
# ~5 s each: measured 8.1 s to import the stack from source against 3.2 s from bytecode
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv test lint docs pytest package-check slurm-check demo bench clean

venv: $(STAMP)

# torch pinned (2.13.0): the CPU build comes from local disk; an unpinned torch pulls CUDA. uv
# installs it and the package from the sources and constraints pip is configured with
# (.ci/uv_sources.py): ~15 s on 2 cores with an empty cache, where pip took ~95 s; pip itself
# where uv cannot be installed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if $(PIP) install --quiet uv; then \
	  $(UV) pip install --quiet --python $(PY) $$($(PY) .ci/uv_sources.py) torch==2.13.0 -e '.[test,docs]'; \
	else \
	  $(PIP) install --quiet --upgrade pip && $(PIP) install --quiet torch==2.13.0 && \
	  $(PIP) install --quiet -e '.[test,docs]'; \
	fi
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check casbi_store tests bench docs

# the tutorials run on the tiny preset in a fresh temporary folder, one after another (they share
# it): ~3 min on 2 cores, about one core busy
docs: venv
	rm -rf docs/_build/html docs/_build/.doctrees
	@start=$$(date +%s); \
	$(VENV)/bin/sphinx-build -b html -W --keep-going -d docs/_build/.doctrees docs docs/_build/html; \
	rc=$$?; echo "docs: docs/_build/html/index.html, $$(($$(date +%s) - start)) s"; exit $$rc

# the suite on 2 pytest-xdist workers, a test file at a time, the longest first (tests/conftest.py)
pytest: venv
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

# what CI runs: ruff, then the docs build beside the suite (each output shown when it ends)
test: venv lint
	$(MAKE) --no-print-directory -j2 --output-sync=target docs pytest

# the wheel check alone: python -m build, the wheel into a fresh venv, casbi-store --help and
# --version there, and the tiny pipeline run by that venv's casbi-store (part of make test)
package-check: venv
	$(VENV)/bin/pytest -q tests/test_packaging.py tests/test_cli.py::test_run_tiny_pipeline

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
	rm -rf demo bench/results .pytest_cache docs/_build docs/reference
