# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test models browser fuzz bench deface eval clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m anon_ray.models fetch

demo: models
	$(VENV)/bin/anon-ray

# Two processes, each taking whole test files: a file's module fixtures (Ray clusters, S3 servers)
# start once.
test: models browser
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# Debian's Chromium and its driver for the review page's browser test (tests/test_review_page.py);
# installed by the project, never by hand. Where apt cannot run, the test says it was skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || \
	  echo "make browser: Chromium not installed; the review page's browser test will be skipped"

fuzz: $(STAMP)
	$(PY) -m tests.fuzz_targets --seconds 600

bench: models deface
	$(VENV)/bin/anon-ray-bench

# The benchmark's reference: the real deface, as its users install it, in a virtualenv of its own
# (its dependencies never touch the project's).
DEFACE_VENV := .venv-deface
$(DEFACE_VENV)/bin/deface:
	$(PYTHON) -m venv $(DEFACE_VENV)
	$(DEFACE_VENV)/bin/python -m pip install -q deface==1.5.0

deface: $(DEFACE_VENV)/bin/deface

eval: models
	$(VENV)/bin/anon-ray-eval dataset=../shared/data/eval/faces
	$(VENV)/bin/anon-ray-eval dataset=../shared/data/eval/plates

clean:
	rm -rf $(VENV) $(DEFACE_VENV) models/cache demo_output
