# airflow-ha developer commands. Run `make help` for the list.
STACK ?= dev
PY := .venv/bin/python

.PHONY: help setup lock test render golden config-doc local-up local-down test-cluster test-cluster-full test-drills

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

setup: ## host packages (as root) and the Python venv in .venv
	bash tools/setup.sh

lock: ## re-resolve requirements.lock (every package's exact version) after changing a requirements file
	bash tools/lock.sh

test: ## lint and the offline tests (mocks, rendered files checked by real tools)
	.venv/bin/ruff check .
	.venv/bin/pytest -n auto  # every core (pytest-xdist); the cluster tests run one at a time

render: ## write what every node of STACK would get into out/STACK (no cloud, no CLI)
	$(PY) -m tools.render --stack $(STACK) --out out/$(STACK)

golden: ## write the render snapshots of every stack into tests/golden (review the git diff)
	$(PY) -m tools.render --all-stacks --golden --out tests/golden

config-doc: ## regenerate README.md's stack config tables from components/config_schema.py
	$(PY) -m tools.config_doc --write

local-up: ## three local Debian 13 machines, then deploy the local stack onto them
	python3 -m tools.localcloud up
	$(PY) -m tools.deploy --stack local

test-cluster: local-up ## the real-daemon tests on the local machines (root), CI's set
	.venv/bin/pytest -m "cluster and not full" tests/cluster --ignore=tests/cluster/test_drills.py

test-cluster-full: local-up ## every real-daemon test, the long ones the quick drills cover too
	.venv/bin/pytest -m cluster tests/cluster --ignore=tests/cluster/test_drills.py

test-drills: local-up ## the resilience suite's quick form as tests (long: machines are stopped)
	.venv/bin/pytest -rP -m cluster tests/cluster/test_drills.py  # -rP: the figures in the log

local-down: ## stop the local machines and remove everything they added to the host
	python3 -m tools.localcloud down
