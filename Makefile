# The two commands of the README. Both create or reuse the environment in .venv at the repository root.
#   make demo   - generate the demo phantom CT and score it with the bundled demo model (outputs in tmbrb-demo-output/)
#   make test   - run the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.tmbrb-installed

# UTF-8 whatever the machine's locale (outputs and messages use symbols such as ±)
export PYTHONUTF8 := 1

.PHONY: demo test bench

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tmbrb demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_engine.py
