# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# CPU build from the local wheel cache; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install test test-slow faults demo lint bench clean gpu-check gpu-wheels

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

faults: $(STAMP)
	$(PY) -m pytest -q tests/faults

lint: $(STAMP)
	$(VENV)/bin/ruff check spanbert_data spanbert_train bench tests

demo: $(STAMP)
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
	rm -rf build *.egg-info .pytest_cache demo-out
