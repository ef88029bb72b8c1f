# MorphoBIDS — set-up and the two everyday commands.
#   make demo   create the environment if needed, build the demo dataset, run both levels
#   make test   create the environment if needed, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.morphobids-installed
DEMO_DIR  ?= demo_data
DEMO_OUT  ?= demo_out
DEMO_WORK ?= demo_work
DEMO_RESOLUTION ?= 2
PYTEST_ARGS ?=

.PHONY: env demo test resources clean-demo clean help

help:
	@echo "make demo    build the demo dataset and run participant + group levels on it"
	@echo "make test    run the test suite"
	@echo "make env     only create the environment ($(VENV))"

$(STAMP): pyproject.toml constraints.txt requirements/nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 resolves to the CPU build here; unpinned torch pulls CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps -r requirements/nodeps.txt
	$(PY) -m bids_app.resources build
	@touch $(STAMP)

env: $(STAMP)

resources: $(STAMP)
	$(PY) -m bids_app.resources build --force

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m bids_app.demo run --bids-dir $(DEMO_DIR) --output-dir $(DEMO_OUT) --work-dir $(DEMO_WORK) \
		--resolution $(DEMO_RESOLUTION)

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_OUT) $(DEMO_WORK)

clean: clean-demo
	rm -rf $(VENV)
