# Developer commands. `make demo BROKER=redis://127.0.0.1:6379/0` runs the demo on Redis.
# Each target first makes .venv and installs the package with its dev extras into it (again only
# when pyproject.toml changes); PYTHON=python uses an environment of your own instead.
VENV := .venv
PYTHON ?= $(VENV)/bin/python
BROKER ?=
DEMO_LIMIT ?= 2000
PYTEST_ARGS ?=

# The set-up step, when PYTHON is the venv's.
SETUP := $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/.installed)

.PHONY: install demo demo-wordcount test test-cluster test-servers chaos lint docs docs-serve bench bench-peers bench-memory bench-connections bench-cluster

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/pip
	$(VENV)/bin/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

# A half-made venv (no pip: python3-venv was missing) is made again.
$(VENV)/bin/pip:
	scripts/ensure-debs.sh python3-venv
	rm -rf $(VENV)
	python3 -m venv $(VENV)

# Hash DEMO_LIMIT stdlib files through a worker process it starts and stops; no server needed.
demo: $(SETUP)
	$(PYTHON) -m examples.filehash.producer --spawn-worker --limit $(DEMO_LIMIT) $(if $(BROKER),--broker $(BROKER))

# Top 20 words of the stdlib's *.py files: a map-reduce chord through a worker process it
# starts and stops; no server needed (BROKER=redis://... to run it on Redis).
demo-wordcount: $(SETUP)
	$(PYTHON) -m examples.wordcount.producer $(if $(BROKER),--broker $(BROKER))

# The suite starts its own redis-server and rabbitmq-server on free ports; this installs them
# with apt-get when missing (as root or with passwordless sudo). PYTEST_ARGS="-k config" selects.
test: test-servers $(SETUP)
	$(PYTHON) -m pytest -q --ignore=tests/chaos --ignore=tests/cluster $(PYTEST_ARGS)

# The suites run again over a Sentinel group and over a Redis Cluster (AQUEUE_TEST_TRANSPORTS).
TRANSPORT_SUITES = tests/transports/test_broker_contract.py tests/transports/test_backend_contract.py \
	tests/transports/test_control_transport.py tests/transports/test_queue_admin.py \
	tests/beat/test_beat_scheduler.py tests/results/test_concurrent_waiters.py

# The cluster suites (tests/cluster, marker `cluster`), outside `make test`: a 3-node RabbitMQ
# cluster on loopback with quorum queues, one node stopped mid-run (about 3 minutes on 2 cores);
# a Sentinel failover under load; a 3-primary Redis Cluster with 8 queues, 50,000 tasks, a
# chord of 1,000 and three beats (about 1 minute). Then the transport suites over Sentinel and
# over the Redis Cluster (about 3 minutes).
test-cluster: test-servers $(SETUP)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m cluster tests/cluster $(PYTEST_ARGS)
	AQUEUE_TEST_TRANSPORTS=sentinel $(PYTHON) -m pytest -q -p no:cacheprovider -k sentinel $(TRANSPORT_SUITES) $(PYTEST_ARGS)
	AQUEUE_TEST_TRANSPORTS=cluster $(PYTHON) -m pytest -q -p no:cacheprovider -k cluster $(TRANSPORT_SUITES) tests/test_e2e.py tests/canvas tests/test_task_semantics.py tests/control tests/worker $(PYTEST_ARGS)

test-servers:
	scripts/ensure-debs.sh redis-server rabbitmq-server

# The fault-injection suite (tests/chaos, not in `make test`): worker SIGKILLs, broker restarts,
# a faulty network proxy, garbage input, long ETAs, a backlog; prints lost / duplicated /
# recovery / peak RSS per scenario. Full sizes here (about 20 min on 2 cores, 9-10 of them the
# 1,000,000 backlog; docs/reliability.md has the figures); .ci/run uses small ones (3.5 min).
CHAOS_N ?= 100000
CHAOS_BACKLOG ?= 1000000
CHAOS_RESTART_N ?= 10000
CHAOS_PROXY_N ?= 5000
CHAOS_GARBAGE_N ?= 20000
chaos: test-servers $(SETUP)
	CHAOS_N=$(CHAOS_N) CHAOS_BACKLOG=$(CHAOS_BACKLOG) CHAOS_RESTART_N=$(CHAOS_RESTART_N) \
	CHAOS_PROXY_N=$(CHAOS_PROXY_N) CHAOS_GARBAGE_N=$(CHAOS_GARBAGE_N) \
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/chaos $(PYTEST_ARGS)

lint: $(SETUP)
	$(PYTHON) -m ruff check aqueue tests examples benchmarks
	$(PYTHON) -m ruff format --check aqueue tests examples benchmarks
	$(PYTHON) -m mypy --strict aqueue

# The documentation site (mkdocs.yml, the docs extra) into site/, in strict mode: a warning, a
# broken link or anchor, or a docstring reference that does not resolve fails it; then every
# internal link of the built HTML is checked again (scripts/check_site_links.py).
docs: $(SETUP)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --clean
	$(PYTHON) scripts/check_site_links.py site

# The site on http://127.0.0.1:8000, rebuilt when a page or the code changes.
docs-serve: $(SETUP)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs serve --strict --watch aqueue --watch README.md

# Starts a throwaway redis-server unless BROKER names one (an empty database). BENCH_ARGS passes
# options, e.g. make bench BENCH_ARGS="--processes 2 --n 40000" (one process vs --processes 2).
bench: $(SETUP)
	$(PYTHON) benchmarks/throughput.py $(if $(BROKER),--broker $(BROKER)) $(BENCH_ARGS)

# Throughput on a throwaway Redis Cluster (3 primaries, 8 queues over them) with 1, 2 and 4
# worker processes; BENCH_ARGS passes options, e.g. make bench-cluster BENCH_ARGS="--n 50000".
bench-cluster: $(SETUP)
	$(PYTHON) benchmarks/cluster.py $(BENCH_ARGS)

# aqueue vs taskiq, arq, saq, streaq, dramatiq, Celery: one table (~40 min; venvs made on first
# run). BENCH_ARGS passes options, e.g. make bench-peers BENCH_ARGS="--quick --only aqueue,saq".
bench-peers: $(SETUP)
	$(PYTHON) benchmarks/peers/bench.py $(BENCH_ARGS)

# Worker RSS with 100,000 tasks waiting (a throwaway redis-server; about a minute).
bench-memory: $(SETUP)
	$(PYTHON) benchmarks/memory.py $(BENCH_ARGS)

# Redis connections of one worker (-c 100 -B -E) and one producer, traced per process.
bench-connections: $(SETUP)
	$(PYTHON) benchmarks/connections.py $(BENCH_ARGS)
