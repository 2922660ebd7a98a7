# otb-fleet: the two commands are `make run` and `make test`.
# Both bootstrap from nothing but python3: .venv, dependencies, and (unless DATABASE_URL /
# REDIS_URL are set) an embedded PostgreSQL and Redis under var/, on ports of this checkout's own
# (recorded in var/services.env). `make test` and `make bench` stop the services they started when
# they end; `make services` keeps them running until `make services-down`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SERVICES := $(PY) scripts/devservices.py
PYTEST_ARGS ?=

.PHONY: run test bench lab lint services services-down clean-var

$(STAMP): pyproject.toml agent/pyproject.toml agent/protocol/pyproject.toml frontend/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]' -e ./agent -e ./agent/protocol
	@# Browser libraries of the portal (htmx, uPlot), pinned in frontend/package-lock.json.
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix frontend --no-audit --no-fund --loglevel=error; \
	else echo "error: npm is missing: the portal's htmx and uPlot are not installed (apt-get install npm)" >&2; fi
	touch $(STAMP)

services: $(STAMP)
	$(SERVICES) up

# The settings read this checkout's service URLs from here when DATABASE_URL / REDIS_URL are unset
# (mypy's Django plugin loads them too): choose and record the ports, start nothing.
var/services.env: | $(STAMP)
	$(SERVICES) ports

services-down: $(STAMP)
	$(SERVICES) down

run: $(STAMP)
	$(PY) scripts/devrun.py

test: $(STAMP)
	$(SERVICES) exec -- $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(SERVICES) exec -- $(PY) bench/run.py $(if $(FULL),--full,)

# The data-plane lab (root: network namespaces): `make lab`, or `make lab KEEP=1` to look around.
lab: $(STAMP)
	$(SERVICES) exec -- $(PY) -m netlab $(if $(KEEP),--keep,)

lint: $(STAMP) var/services.env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports --no-cache

clean-var:
	-$(SERVICES) down
	rm -rf var
