# Developer commands. `make demo BROKER=redis://127.0.0.1:6379/0` runs the demo on Redis.
PYTHON ?= python
BROKER ?=
DEMO_LIMIT ?= 2000

.PHONY: install demo demo-wordcount test lint bench bench-peers bench-memory

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Hash DEMO_LIMIT stdlib files through a worker process it starts and stops; no server needed.
demo:
	$(PYTHON) -m examples.filehash.producer --spawn-worker --limit $(DEMO_LIMIT) $(if $(BROKER),--broker $(BROKER))

# Top 20 words of the stdlib's *.py files: a map-reduce chord through a worker process it
# starts and stops; no server needed (BROKER=redis://... to run it on Redis).
demo-wordcount:
	$(PYTHON) -m examples.wordcount.producer $(if $(BROKER),--broker $(BROKER))

# The suite starts its own redis-server where it needs one.
test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check aqueue tests examples benchmarks
	$(PYTHON) -m mypy --strict aqueue

# Starts a throwaway redis-server unless BROKER names one (an empty database).
bench:
	$(PYTHON) benchmarks/throughput.py $(if $(BROKER),--broker $(BROKER))

# aqueue vs taskiq, arq, saq, streaq, dramatiq, Celery: one table (~40 min; venvs made on first
# run). BENCH_ARGS passes options, e.g. make bench-peers BENCH_ARGS="--quick --only aqueue,saq".
bench-peers:
	$(PYTHON) benchmarks/peers/bench.py $(BENCH_ARGS)

# Worker RSS with 100,000 tasks waiting (a throwaway redis-server; about a minute).
bench-memory:
	$(PYTHON) benchmarks/memory.py $(BENCH_ARGS)
