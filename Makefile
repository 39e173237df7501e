# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run
# CPU build from the local wheel cache; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# The lock: exact versions of everything `.[test]` needs except torch (pinned above), for one Python and platform
# (`make lock` writes it with uv; `make test-latest` tries the newest releases instead). Without a lock for this
# Python and machine, the install takes the newest releases within pyproject.toml's ranges and says so.
PYTAG   = $(shell python3 -c 'import platform, sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
LOCK    = .ci/locks/test-$(PYTAG).txt
UV     ?= uv==0.13.9
# The torch that `make lock` resolves against (its CPU build, from pip's --find-links or PyTorch's CPU index).
TORCH_LOCK ?= torch==2.13.0+cpu
TORCH_INDEX = $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install test test-slow test-latest lock faults demo lint bench clean gpu-check gpu-wheels

# Two stages: what the demo runs (the package and its plot extra), then the test extra on top of it, so that
# `make demo` on a fresh machine does not wait for the test-only packages (datasets, polars, duckdb, moto, ...).
$(RUN_STAMP): pyproject.toml $(wildcard $(LOCK))
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	@if [ -f $(LOCK) ]; then echo "installing the locked versions of $(LOCK)"; \
	    $(PY) -m pip install -q -c $(LOCK) setuptools && \
	    $(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[plot]'; \
	else echo "no lock for $(PYTAG) ($(LOCK)): installing the newest releases; 'make lock' writes one"; \
	    $(PY) -m pip install -q -e '.[plot]'; fi
	@touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	@if [ -f $(LOCK) ]; then $(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[test]'; \
	else $(PY) -m pip install -q -e '.[test]'; fi
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The suite against the newest releases of every dependency (torch stays $(TORCH): a newer one from PyPI is a
# multi-GB CUDA build; pass TORCH=torch==X to try another), in its own venv so that .venv keeps the lock.
LATEST_VENV ?= .venv-latest
test-latest:
	@test -x $(LATEST_VENV)/bin/python || python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q $(TORCH)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST_VENV)/bin/python -m pip list --format freeze > $(LATEST_VENV)/versions.txt
	@echo "newest releases: $(LATEST_VENV)/versions.txt; compare with $(LOCK)"
	$(LATEST_VENV)/bin/python -m pytest -q -m "not slow"

# Rewrite the lock for this Python and machine from pyproject.toml (the newest releases within its ranges).
lock: $(STAMP)
	$(PY) -m pip install -q $(UV)
	@mkdir -p $(dir $(LOCK))
	echo "$(TORCH_LOCK)" > $(VENV)/torch-constraint.txt
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	    > $(VENV)/build-requires.in
	$(VENV)/bin/uv pip compile pyproject.toml $(VENV)/build-requires.in --extra test --quiet --no-emit-package torch \
	    --no-header -c $(VENV)/torch-constraint.txt $(TORCH_INDEX) -o $(LOCK).tmp
	{ echo "# The test environment's exact versions for $(PYTAG): \`make lock\` writes this file"; \
	  echo "# (uv pip compile of pyproject.toml's build requirements and [test] extra; torch, pinned in the Makefile, comes first)."; \
	  cat $(LOCK).tmp; } > $(LOCK) && rm $(LOCK).tmp
	@echo "wrote $(LOCK)"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

faults: $(STAMP)
	$(PY) -m pytest -q tests/faults

lint: $(STAMP)
	$(VENV)/bin/ruff check spanbert_data spanbert_train bench tests

demo: $(RUN_STAMP)
	@bash examples/demo.sh

# The GPU proof in one command (bench/gpu_check.sh, docs/PERFORMANCE.md §6). On a GPU machine it uses that machine's
# python3, torch and triton and needs no network; GPU_CHECK_DRY=1 is the CPU dry run in .venv (tiny shapes).
ifeq ($(GPU_CHECK_DRY),1)
gpu-check: $(STAMP)
endif
gpu-check:
	@bash bench/gpu_check.sh

# Wheels of the runtime dependencies that the GPU machine's image lacks, for Python 3.12 on x86-64, into the
# git-ignored .whl/ (pass it as `carry`); gpu_check.sh installs them with --no-index.
GPU_WHEELS ?= mwparserfromhell==0.7.2 zstandard==0.25.0
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@ls -l .whl

clean:
	rm -rf build *.egg-info .pytest_cache demo-out $(LATEST_VENV)
