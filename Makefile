# The two commands of the README: `make serve` (demo) and `make check` (lint and the tests; CI).
PY := .venv/bin/python
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup serve demo-model test check check-install lint lock bench

setup:
	@scripts/setup

demo-model: setup
	@$(PY) -m gateway.demo train

# The demo (gateway/demo/launcher.py): trains the iris model once, starts the stand-in for vLLM on
# 127.0.0.1:8081 and serves config/demo.yaml on 127.0.0.1:8080, in one process (Ctrl-C stops both).
serve: setup
	$(PY) -m gateway.demo serve

test: setup
	$(PY) -m pytest

lint: setup
	.venv/bin/ruff check gateway tests bench
	.venv/bin/ruff format --check gateway tests bench
	.venv/bin/mypy

# Lint, then the tests with line coverage of gateway/ (gateway subprocesses included, see
# [tool.coverage.run] in pyproject.toml) and a 90 % floor.
check: lint
	$(PY) -m pytest --cov --cov-report=term-missing --cov-fail-under=90

# Only the fresh-venv install from pyproject.toml, without the lock (also part of `make test`;
# GATEWAY_SKIP_INSTALL_TEST=1 skips it there, GATEWAY_INSTALL_WITH=pip uses pip instead of uv).
check-install: setup
	$(PY) -m pytest -m install

# Re-pin every dependency (with hashes) after editing requirements.in.
lock:
	.venv/bin/uv pip compile requirements.in --generate-hashes --python-version 3.11 -o requirements.lock

bench: demo-model
	$(PY) bench/invocations.py
