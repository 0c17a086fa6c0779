# The two commands: `make reproduce` (all notebooks, PROFILE=cpu by default) and `make test`.
# Both create .venv when missing and install the exact environment of requirements.lock (compiled
# from pyproject.toml's ranges, see tools/check_lock.py) plus the package; a stamp keyed on the hash
# of pyproject.toml and the lock makes the second call skip installation.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PROFILE ?= cpu
DATA_ROOT ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)

# Pure-PyTorch scans run 3-7x faster with glibc's mmap/trim thresholds raised (measured here).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000
# Nothing may download at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install reproduce reproduce-real check-data smoke test unit nbtest lint figures bench clean

# The real-data track (issue 16): every notebook on the real sets under REAL_DATA, into
# papermill_runs/<profile>_real/; skipped with a message when the folder is absent. Run it after
# `make reproduce`: the synthetic run's encoders give 07's synthetic-to-real rows.
REAL_DATA ?= ../shared/data

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (uslib)" >/dev/null
	@rm -f $(VENV)/.stamp-*
	@touch $@
	@echo "environment ready: $(VENV)"

reproduce: install
	$(PY) -m uslib.reproduce --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))
	$(MAKE) --no-print-directory figures PROFILE=$(PROFILE)

reproduce-real: install
	$(PY) -m uslib.reproduce --profile $(PROFILE) --data-root $(REAL_DATA) --skip-missing
	@if [ -d "$(REAL_DATA)" ]; then $(MAKE) --no-print-directory figures PROFILE=$(PROFILE); fi

# Dry run of a data folder before any training: counts, rejected files, duplicates and leakage.
check-data: install
	$(PY) -m uslib.data.check $(or $(DATA_ROOT),$(REAL_DATA)) $(if $(LAYOUT),--layout $(LAYOUT))

smoke:
	$(MAKE) --no-print-directory reproduce PROFILE=smoke

test: install lint unit nbtest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) tools/check_lock.py

# Tests run single-threaded: small tensors gain nothing from a second OpenMP thread, and results
# do not depend on the machine's core count.
unit: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -p no:cacheprovider

nbtest: install
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q notebooks

figures: install
	$(PY) -m uslib.figures --profile $(PROFILE)

# The benchmark suite (benchmarks/README.md): quick mode (< 15 min on 2 idle cores) by default,
# FULL=1 for the full one; BENCH_ARGS passes options (e.g. BENCH_ARGS="--only 'train_step/*'").
bench: install
	$(PY) -m benchmarks $(if $(FULL),,--quick) $(BENCH_ARGS)

clean:
	rm -rf papermill_runs/smoke .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
