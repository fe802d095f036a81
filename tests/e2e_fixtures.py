"""The end-to-end fixtures (a pytest plugin loaded by ``tests/conftest.py``): the test tasks of
:mod:`tests.apps.tasks` on a fresh queue of the transport under test, and a worker running them.
A test module that needs other tasks or worker settings defines its own ``t`` / ``worker``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue import Worker
from tests.apps import tasks as e2e
from tests.apps.tasks import Tasks


@pytest.fixture
async def t(transport_url: str) -> AsyncIterator[Tasks]:
    """The test tasks on a fresh queue of the transport under test."""
    tasks = e2e.build(transport_url, queue=f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()


@pytest.fixture
async def worker(t: Tasks) -> AsyncIterator[Worker]:
    """A worker (concurrency 10) running ``t``'s tasks for the test."""
    async with Worker(t.app, concurrency=10, shutdown_timeout=5) as w:
        yield w
