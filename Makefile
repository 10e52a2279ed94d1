# Drip: `make run` starts the service on embedded defaults; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
empty :=
space := $(empty) $(empty)
# One stamp per set of extras, so `make install EXTRAS=redis` installs them into a venv made without them.
STAMP := $(VENV)/.installed$(subst $(space),,$(foreach e,$(EXTRAS),-$(e)))

.PHONY: install install-dev run test browser spamassassin contract clean bench soak lock

# Two installs from hashed locks (.ci/lock rewrites them): `make install` (and `make run`) gets what drip
# needs to run, nothing more; `make install-dev` (and `make test`) adds the optional extra (Redis:
# its tests run) and the tools for tests, lint, bench and the browser. EXTRAS=redis adds that extra to
# the runtime install.
# `ses` was an extra until SES's requests were signed by Drip itself: still accepted, now adds nothing.
RUNTIME_LOCKS := requirements.lock $(foreach e,$(filter-out ses,$(EXTRAS)),requirements-$(e).lock)
DEV_LOCKS := requirements.lock requirements-redis.lock requirements-dev.lock
DEV_STAMP := $(VENV)/.installed-dev

install: $(STAMP)

install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Drip needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(RUNTIME_LOCKS) pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --require-hashes $(foreach f,$(RUNTIME_LOCKS),-r $(f))
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(DEV_STAMP): $(DEV_LOCKS) pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --require-hashes $(foreach f,$(DEV_LOCKS),-r $(f))
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP) $(DEV_STAMP)

run: install
	$(BIN)/drip db upgrade
	$(BIN)/drip serve

# Debian's Chromium drives the browser tests; Playwright never downloads a browser of its own.
browser:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  { echo "could not install chromium (apt-get); the browser tests need /usr/bin/chromium" >&2; exit 1; }; }

# Debian's SpamAssassin scores every campaign step in the suite (local rules only, no network).
spamassassin:
	@test -x /usr/bin/spamassassin || { \
	  echo "installing Debian's spamassassin for the campaign spam-score tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spamassassin) >/dev/null || \
	  { echo "could not install spamassassin (apt-get); the spam-score tests need /usr/bin/spamassassin" >&2; exit 1; }; }

# The suite runs in TEST_PROCESSES processes (pytest-xdist; each has its own PostgreSQL database and
# SQLite files, ports are picked free): two bring the suite from ~19 to ~12 minutes on this 2-core
# machine, where the tests spend much of their time waiting on servers, browsers and subprocesses (three
# saved one more minute and made timing-sensitive tests flakier). TEST_PROCESSES=0 runs them in this
# process, one after the other.
TEST_PROCESSES ?= 2
test: install-dev browser spamassassin
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist worksteal) $(PYTEST_ARGS)

# The whole-system simulation (tests/test_simulation.py) with many more random examples than `make test`
# runs: DRIP_SIMULATION_EXAMPLES=2000 make soak; add DRIP_TEST_POSTGRES_URL=... for PostgreSQL too.
soak: install-dev
	DRIP_SIMULATION_EXAMPLES=$${DRIP_SIMULATION_EXAMPLES:-300} $(BIN)/python -m pytest tests/test_simulation.py -x $(PYTEST_ARGS)

# Benchmarks against this machine's limits (PostgreSQL at DRIP_BENCH_POSTGRES_URL, default
# postgresql://postgres@127.0.0.1:5432/postgres); see docs/performance.md.
bench: install-dev
	$(BIN)/python bench/all.py

contract: install-dev
	../shared/contract/check

# Rewrite the four locks from pyproject.toml (needs uv); existing pins are kept.
lock:
	.ci/lock

clean:
	rm -rf $(VENV) instance outbox .pytest_cache
