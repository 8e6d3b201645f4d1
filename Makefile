# The README's two commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CUDA_HOME ?= /usr/local/cuda
# pytest-xdist is not used: two cores are shared by torch's own threads.
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench clean

# One plain editable install: pip reads pyproject.toml, builds mcfast._C in an isolated build environment
# (its own torch in the same range as the runtime one) and installs the [test] extra (= all extras + pytest).
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mcfast demo --out demo_out

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json

clean:
	rm -rf build *.egg-info mcfast/*.so
