# Two commands do everything on a fresh machine:
#   make reproduce   full run: every notebook on the full configuration -> figures/, executed notebooks
#   make test        the test suite plus the quick notebook run (outputs in build/quick, never over figures/)
# Each target builds the virtual environment it needs first.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_ARGS ?= -m "not slow and not network"
# Notebooks run at once, each after those it reads (utils/tutorial.py NEEDS); JOBS=1 runs them one by one.
JOBS     ?= 2

.PHONY: all venv reproduce quick test pytest lint lab explore html bench clean-quick check-tutorial

all: test

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Full configuration: the sources in notebooks/ are executed into notebooks/executed/ (the copies a reader
# reads, rendered to notebooks/html/), figures and CSV tables land in figures/, and figures/provenance.json
# records the commit, versions, machine and each notebook's time and peak memory (utils/tutorial.py).
reproduce: $(STAMP)
	$(PY) -m utils.tutorial run --params notebooks/params/full.yaml --out notebooks/executed --figures figures --jobs $(JOBS)
	$(MAKE) html

html: $(STAMP)
	$(PY) -m jupyter nbconvert --to html --output-dir notebooks/html notebooks/executed/*.ipynb

# Is what a reader sees the output of the committed code? (executed copies, named figures, README numbers)
check-tutorial: $(STAMP)
	$(PY) -m utils.tutorial check

# Quick configuration (MiniLM, small budgets): executed copies and figures go to build/quick/. The explorer
# (widgets; its source stays unexecuted) runs here as a check that it builds.
quick: $(STAMP)
	$(PY) -m utils.tutorial run --params notebooks/params/quick.yaml --out build/quick/notebooks --figures build/quick/figures \
	  --extra 05_explore --jobs $(JOBS)

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The linter and the formatter (rules and line length in pyproject.toml [tool.ruff]); make test runs them first.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint pytest quick

lab: $(STAMP)
	$(PY) -m jupyter lab --notebook-dir=notebooks $(ALLOW_ROOT)

# The explorer of notebook 05 as a standalone page (Voila), on http://127.0.0.1:8866
explore: $(STAMP)
	$(PY) -m voila notebooks/05_explore.ipynb --no-browser --Voila.ip=127.0.0.1 --port=8866

bench: $(STAMP)
	$(PY) benchmarks/bench_extraction.py
	$(PY) benchmarks/bench_bf16_fidelity.py
	$(PY) benchmarks/bench_general_redundancy.py
	$(PY) benchmarks/bench_cross_model.py
	$(PY) benchmarks/bench_clustering_memory.py --tiled
	$(PY) benchmarks/bench_probing.py
	$(PY) benchmarks/bench_probe_training.py --repeats 1
	$(PY) benchmarks/bench_transfer.py
	$(PY) benchmarks/bench_tiled_clustering.py --sizes 10k 30k
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_finetune.py --task uncertainty --epochs 1 --heap
	$(PY) benchmarks/bench_finetune.py --task uncertainty --epochs 1 --precision

clean-quick:
	rm -rf build/quick
