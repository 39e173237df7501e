# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# CPU build from the local wheel cache; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install test test-slow faults demo lint bench clean

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

clean:
	rm -rf build *.egg-info .pytest_cache demo-out
