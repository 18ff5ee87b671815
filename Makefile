# mmdiag: two commands on a fresh machine — `make demo` and `make test`.
# torch is installed first and on its own: a bare `torch` requirement would pull the CUDA build.
# Override TORCH_SPEC for your machine (e.g. TORCH_SPEC="torch==2.5.1 --index-url ...").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmdiag-installed

.PHONY: setup demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmdiag demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -x --timeout=600 -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks.run --output docs/benchmarks.md

clean:
	rm -rf $(VENV) runs .cache
