"""Celery's include= and autodiscover_tasks(), and ``async with app:``."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import ConfigurationError
from tests.workerproc import WorkerProcess

PACKAGE = "tests.apps.discover"


def _forget_package() -> None:
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


@pytest.fixture
def fresh() -> Iterator[Aqueue]:
    """``tests.apps.discover.app`` imported anew (its task modules not imported yet)."""
    _forget_package()
    module = importlib.import_module(f"{PACKAGE}.app")
    yield module.app
    _forget_package()


def test_include_and_autodiscover_import_at_the_first_read_of_tasks(fresh: Aqueue) -> None:
    assert f"{PACKAGE}.extra" not in sys.modules  # the app module alone imports no task module
    assert f"{PACKAGE}.shop.tasks" not in sys.modules
    names = set(fresh.tasks)
    assert {"discover.extra", "discover.shop.total"} <= names
    assert f"{PACKAGE}.notasks" in sys.modules  # looked at, and skipped: it has no tasks module


def test_a_tasks_module_whose_import_fails_is_reported_as_such(fresh: Aqueue) -> None:
    fresh.autodiscover_tasks([f"{PACKAGE}.broken"])
    with pytest.raises(ConfigurationError, match=r"broken.tasks' was found but its import failed"):
        _ = fresh.tasks
    with pytest.raises(ConfigurationError, match="import failed"):  # still pending: retried
        _ = fresh.tasks


def test_not_found_is_told_apart(fresh: Aqueue) -> None:
    with pytest.raises(ConfigurationError, match=r"package 'tests\.apps\.nowhere' not found"):
        fresh.autodiscover_tasks(["tests.apps.nowhere"], force=True)
    app = Aqueue("x", broker="memory://", include=["tests.apps.nowhere_either"])
    with pytest.raises(ConfigurationError, match=r"module 'tests\.apps\.nowhere_either' not found"):
        _ = app.tasks


def test_force_imports_at_once() -> None:
    _forget_package()
    try:
        app = Aqueue("forced", broker="memory://")
        app.autodiscover_tasks([PACKAGE], related_name="extra", force=True)
        assert f"{PACKAGE}.extra" in sys.modules
    finally:
        _forget_package()


def test_autodiscover_without_packages_needs_django_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    django_conf = pytest.importorskip("django.conf")
    if django_conf.settings.configured:
        pytest.skip("Django is configured in this process by another test")
    app = Aqueue("x", broker="memory://")
    app.autodiscover_tasks()
    with pytest.raises(ConfigurationError, match="DJANGO_SETTINGS_MODULE"):
        _ = app.tasks


async def test_tasks_found_by_discovery_run_in_a_worker(fresh: Aqueue) -> None:
    from tests.apps.discover.shop.tasks import total

    fresh.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"
    async with fresh, Worker(fresh, shutdown_timeout=5):
        assert await (await total.delay([1.5, 2.5])).get(timeout=10) == 4.0
        r = await fresh.send_task("discover.extra")
        assert await r.get(timeout=10) == "extra"


@pytest.mark.slow
async def test_a_worker_process_finds_included_tasks(tmp_path: Path) -> None:
    """``-A`` names the app's module only; the worker finds the tasks of include= and
    autodiscover_tasks() through it."""
    url = f"sqlite:///{tmp_path}/discover.db"
    _forget_package()
    try:
        app = Aqueue("client", broker=url)
        async with app, WorkerProcess(f"{PACKAGE}.app", env={"AQUEUE_BROKER_URL": url}):
            r = await app.send_task("discover.shop.total", ([1, 2],))
            assert await r.get(timeout=20) == 3
    finally:
        _forget_package()


async def test_async_with_closes_the_loops_connections() -> None:
    app = Aqueue("ctx", broker="memory://")
    async with app as entered:
        assert entered is app
        await app.broker()
        assert app._connections  # connected in this loop
    assert not app._connections
