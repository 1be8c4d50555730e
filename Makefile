# Two commands from a fresh clone: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test unit lint bench bytecode clean fuzz-onboarding statemachine

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed

demo: setup
	$(PY) -m shared demo

# The deployment lint runs first, so that pytest's summary stays the last line of the output.
test: setup lint
	$(PY) -m pytest

# azure-functions-doctor's deploy profile: 0 fails required; the warnings accepted are listed,
# with why, in docs/operations.md.
lint: $(VENV)/.installed
	$(VENV)/bin/azure-functions-doctor doctor --profile deploy --hosting-plan flex-consumption

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

bench: setup
	$(PY) bench/coldstart.py
	$(PY) bench/graph_read.py
	$(PY) bench/scale.py
	$(PY) bench/tenant_lookups.py
	$(PY) bench/onboarding.py

# The onboarding fuzz test's long run (`make test` runs a bounded one); prints messages: N,
# grants_outside_policy: 0 and lost: 0. EXAMPLES scripts of up to 8 messages each.
EXAMPLES ?= 5000
fuzz-onboarding: $(VENV)/.installed
	$(PY) tests/unit/test_onboarding_fuzz.py $(EXAMPLES)

# The sync-safety state machine run long (the normal suite runs a bounded few histories):
# random histories of directory, config, onboarding and fault rules, every invariant after every run.
statemachine: $(VENV)/.installed
	$(PY) bench/statemachine.py --histories $(or $(HISTORIES),2000) --steps $(or $(STEPS),60)

# Byte-compile the app before packaging it: a read-only (run-from-package) deployment cannot
# write bytecode, so without this every cold start compiles the app's modules again.
bytecode: $(VENV)/.installed
	$(PY) -m compileall -q --invalidation-mode checked-hash shared function_app.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis
