# edgefleet — every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck pytest test-embedded test-field test-agent-envs demo bench clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edgefleet needs Python 3.11+ (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	$(PY) -m pip install --quiet --no-deps "tf_keras==$$($(PY) -c 'import tensorflow as t; print(t.__version__)')"
	$(PY) scripts/fetch_test_models.py
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/sizes.py --tests

typecheck: install
	$(VENV)/bin/mypy device_agent toolchain fleet

pytest: install
	$(PY) -m pytest

## test: lint, type-check and run the whole suite (what .ci/run calls)
test: lint typecheck pytest

## test-embedded: the MQTT tests against the embedded (amqtt) broker instead of mosquitto
test-embedded: install
	EDGEFLEET_TEST_BROKER=embedded $(PY) -m pytest tests/test_mqtt_transport.py

## test-field: only the health gate's field acceptance (60 devices, CPU hog, noise; `make test` runs it too)
test-field: install
	$(PY) -m pytest -m field tests/test_health_gate_field.py

## test-agent-envs: the agent alone in fresh venvs with edgefleet[agent] and edgefleet[agent-legacy]
test-agent-envs: install
	$(PY) scripts/agent_env_check.py

## demo: build, quantize, package and sign a real model; broker + fleet manager + 50 simulated devices;
## a staged rollout, then a bad release and its automatic rollback. Longer runs:
## make demo DEMO_ARGS="--devices 200 --keep-running"
DEMO_ARGS ?=
demo: install
	$(PY) scripts/demo.py $(DEMO_ARGS)

## bench: run the benchmarks and rewrite docs/benchmarks.md
bench: install
	$(PY) -m bench

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
