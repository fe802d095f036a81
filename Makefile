# Developer commands. `make demo BROKER=redis://127.0.0.1:6379/0` runs the demo on Redis.
PYTHON ?= python
BROKER ?=
DEMO_LIMIT ?= 2000

.PHONY: install demo test lint bench

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Hash DEMO_LIMIT stdlib files through a worker process it starts and stops; no server needed.
demo:
	$(PYTHON) -m examples.filehash.producer --spawn-worker --limit $(DEMO_LIMIT) $(if $(BROKER),--broker $(BROKER))

# The suite starts its own redis-server where it needs one.
test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check aqueue tests examples benchmarks
	$(PYTHON) -m mypy --strict aqueue

# Starts a throwaway redis-server unless BROKER names one (an empty database).
bench:
	$(PYTHON) benchmarks/throughput.py $(if $(BROKER),--broker $(BROKER))
