VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test kernel-suite lint bench clean

setup:
	bash deploy/setup.sh --venv $(VENV) --extras test

demo: setup
	$(PY) -m thread_observer demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

# The kernel matrix with its whole kernel suite in every kernel (make test runs check there).
kernel-suite: setup
	THREAD_OBSERVER_KERNEL_SUITE=1 $(PY) -m pytest tests/test_kernel_matrix.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
