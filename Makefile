# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test models fuzz bench eval clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m anon_ray.models fetch

demo: models
	$(VENV)/bin/anon-ray

test: models
	$(PY) -m pytest -q

fuzz: $(STAMP)
	$(PY) -m tests.fuzz_targets --seconds 600

bench: models
	$(VENV)/bin/anon-ray-bench

eval: models
	$(VENV)/bin/anon-ray-eval dataset=../shared/data/eval/faces
	$(VENV)/bin/anon-ray-eval dataset=../shared/data/eval/plates

clean:
	rm -rf $(VENV) models/cache demo_output
