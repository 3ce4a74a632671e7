# Two commands do everything on a fresh machine:
#   make reproduce   full run: every notebook on the full configuration -> figures/, executed notebooks
#   make test        the test suite plus the quick notebook run (outputs in build/quick, never over figures/)
# Each target builds the virtual environment it needs first.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
NOTEBOOKS := 01_activation_extraction 02_general_redundancy 03_task_specific_redundancy 04_feature_selected_transfer
PAPERMILL := $(PY) -m papermill -k python3 --cwd . --progress-bar
PYTEST_ARGS ?= -m "not slow and not network"

.PHONY: all venv reproduce quick test pytest lab html bench clean-quick

all: test

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Full configuration: executed notebooks are written back in place (they read as a rendered tutorial),
# figures and CSV tables land in figures/, HTML copies in notebooks/html/.
reproduce: $(STAMP)
	@start=$$(date +%s); \
	for nb in $(NOTEBOOKS); do \
	  [ -f notebooks/$$nb.ipynb ] || continue; \
	  echo "== $$nb (full)"; \
	  $(PAPERMILL) notebooks/$$nb.ipynb notebooks/$$nb.ipynb -f notebooks/params/full.yaml || exit 1; \
	done; \
	echo "make reproduce: $$(( $$(date +%s) - start )) s" | tee figures/reproduce_time.txt
	$(MAKE) html

html: $(STAMP)
	$(PY) -m jupyter nbconvert --to html --output-dir notebooks/html $(addprefix notebooks/,$(addsuffix .ipynb,$(NOTEBOOKS)))

# Quick configuration (MiniLM, small budgets): executed copies and figures go to build/quick/.
quick: $(STAMP)
	@mkdir -p build/quick/notebooks
	@start=$$(date +%s); \
	for nb in $(NOTEBOOKS); do \
	  [ -f notebooks/$$nb.ipynb ] || continue; \
	  echo "== $$nb (quick)"; \
	  $(PAPERMILL) notebooks/$$nb.ipynb build/quick/notebooks/$$nb.ipynb -f notebooks/params/quick.yaml || exit 1; \
	done; \
	echo "make quick: $$(( $$(date +%s) - start )) s"

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test: pytest quick

lab: $(STAMP)
	$(PY) -m jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) benchmarks/bench_extraction.py
	$(PY) benchmarks/bench_bf16_fidelity.py
	$(PY) benchmarks/bench_general_redundancy.py
	$(PY) benchmarks/bench_probing.py

clean-quick:
	rm -rf build/quick
