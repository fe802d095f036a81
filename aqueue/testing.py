"""The pytest plugin (entry point ``pytest11``): run a real worker inside your tests.

Name your app by overriding the ``aqueue_app`` fixture, or with the ini option
``aqueue_app = module:attribute``. Then ask for ``aqueue_worker``: for the duration of the test,
the app uses a fresh in-process ``memory://`` broker and result backend, and a real
:class:`~aqueue.Worker` consumes it on the test's event loop::

    async def test_add(aqueue_worker):
        r = await add.delay(1, 2)
        assert await r == 3

The worker consumes the default queue and every queue named by a task's ``queue`` option or by
``task_routes`` dicts. The app's own URLs are restored after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue.app import Aqueue
from aqueue.worker import Worker

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the worker fixture needs pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``aqueue_app`` ini option."""
    parser.addini("aqueue_app", "the app for the aqueue fixtures, as module:attribute", default="")


@pytest.fixture
def aqueue_app(request: pytest.FixtureRequest) -> Aqueue:
    """The app under test: override this fixture, or set the ``aqueue_app`` ini option."""
    spec = str(request.config.getini("aqueue_app"))
    if not spec:
        raise pytest.UsageError(
            "aqueue: name your app by overriding the aqueue_app fixture in conftest.py, "
            "or with 'aqueue_app = module:attribute' in your pytest ini options"
        )
    from aqueue.cli import load_app

    return load_app(spec)


def worker_queues(app: Aqueue) -> list[str]:
    """The default queue plus every queue named by a task option or a ``task_routes`` dict."""
    queues = [app.conf.task_default_queue]
    named: list[str | None] = [t.queue for t in app.tasks.values() if t.queue]
    routes = app.conf.task_routes
    for table in routes if isinstance(routes, list | tuple) else [routes]:
        if isinstance(table, dict):
            for value in table.values():
                named.append(value if isinstance(value, str) else dict(value).get("queue"))
    for name in named:
        if name and name not in queues:
            queues.append(name)
    return queues


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def aqueue_worker(aqueue_app: Aqueue) -> AsyncIterator[Worker]:
        """A real worker for ``aqueue_app`` on a fresh memory broker, in the test's loop."""
        conf = aqueue_app.conf
        saved: dict[str, Any] = {"broker_url": conf.broker_url,
                                 "result_backend": conf.result_backend}  # fmt: skip
        url = f"memory://{uuid.uuid4().hex}"
        await aqueue_app.close()
        conf.update(broker_url=url, result_backend=url)
        worker = Worker(aqueue_app, worker_queues(aqueue_app), shutdown_timeout=5.0)
        try:
            async with worker:
                yield worker
        finally:
            await aqueue_app.close()
            conf.update(saved)
